"""Seeds a dedicated benchmark database with N connections whose ciphertexts are real.

Each dataset lives in its own database (``credbroker_bench_1k``, ``credbroker_bench_1m``, ...)
with one environment ``bench``, one integration ``openai-bench`` (provider ``openai``) and N
connections ``c0000000``... Environment and schema come from the credbroker CLI and the project's
own code (migrations, ``IntegrationService``); every connection's credentials and
connection_config are encrypted by ``BoundCipher(EnvelopeCipher(keyring))`` with the purposes and
row binding ``ConnectionService`` uses, so the server decrypts them exactly as it would rows it
wrote itself. Rows are encrypted in worker processes and streamed in with COPY.

A marker table (``bench_seed``) records the row count and the keyring's fingerprint; a database
whose marker, keyring and row count match is reused as it is.
"""

# ruff: noqa: S603 - the benchmark starts its own servers and tools by design

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

ENVIRONMENT = "bench"
INTEGRATION_ID = "openai-bench"
PROVIDER = "openai"
SEED_VERSION = 2  # 2: blobs of binding v2 (format 2); a version 1 dataset is seeded again
CHUNK = 5000

COPY_COLUMNS = (
    "id",
    "environment_id",
    "integration_id",
    "connection_id",
    "auth_mode",
    "credentials_blob",
    "config_blob",
    "connection_config_keys",
    "metadata",
    "tags",
)


def connection_id(i: int) -> str:
    """Zero-padded so that key order (what ListConnections pages by) is numeric order."""
    return f"c{i:07d}"


def api_key(i: int) -> str:
    return f"sk-bench-{i:07d}-0123456789abcdef0123456789abcdef"


def label(rows: int) -> str:
    for unit, size in (("m", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % size == 0:
            return f"{rows // size}{unit}"
    return str(rows)


def database_name(rows: int) -> str:
    return f"credbroker_bench_{label(rows)}"


def dsn_for(base_dsn: str, database: str) -> str:
    head, _, tail = base_dsn.partition("?")
    scheme, _, rest = head.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{database}" + (f"?{tail}" if tail else "")


def keyring_fingerprint(keyring_json: str) -> str:
    return hashlib.sha256(keyring_json.encode("utf-8")).hexdigest()[:16]


# --- the encryption worker (runs in child processes) -------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(keyring_json: str, environment_id: bytes) -> None:
    from credbroker.bootstrap import BoundCipher
    from credbroker.crypto import EnvelopeCipher, Keyring

    _worker["cipher"] = BoundCipher(
        EnvelopeCipher(Keyring.from_json(keyring_json)), accept_binding_v1=False
    )
    _worker["environment_id"] = uuid.UUID(bytes=environment_id)


def _serializers() -> tuple[Any, Any]:
    """ConnectionService's own (private) serializers, or equivalent ones if they moved."""
    try:
        from credbroker.domain.connections import _serialize_config, _serialize_credentials
        from credbroker.domain.models import ApiKeyCredentials

        return (lambda key: _serialize_credentials(ApiKeyCredentials(key))), _serialize_config
    except ImportError:  # pragma: no cover - same bytes as the domain code
        return (
            lambda key: json.dumps({"api_key": key}, separators=(",", ":")).encode(),
            lambda config: json.dumps(config, separators=(",", ":"), sort_keys=True).encode(),
        )


def _encrypt_chunk(bounds: tuple[int, int]) -> list[tuple[Any, ...]]:
    from credbroker.domain.connections import CONFIG_PURPOSE, CREDENTIALS_PURPOSE, binding

    cipher = _worker["cipher"]
    environment_id = _worker["environment_id"]
    serialize_credentials, serialize_config = _serializers()
    config_plain = serialize_config({})
    records: list[tuple[Any, ...]] = []
    for i in range(*bounds):
        row_id = uuid.uuid4()
        bound = binding(environment_id, INTEGRATION_ID, connection_id(i), row_id)
        records.append(
            (
                row_id,
                environment_id,
                INTEGRATION_ID,
                connection_id(i),
                "api_key",
                cipher.encrypt(
                    serialize_credentials(api_key(i)), purpose=CREDENTIALS_PURPOSE, binding=bound
                ),
                cipher.encrypt(config_plain, purpose=CONFIG_PURPOSE, binding=bound),
                [],
                json.dumps({"plan": ("free", "pro", "team")[i % 3]}),
                json.dumps({"end_user_id": str(i), "region": ("eu", "us")[i % 2]}),
            )
        )
    return records


class _Chunk(list):  # type: ignore[type-arg]
    bounds: tuple[int, int]


def _encrypt_chunk_tagged(bounds: tuple[int, int]) -> tuple[tuple[int, int], list[Any]]:
    return bounds, _encrypt_chunk(bounds)


async def _encrypted(
    chunks: list[tuple[int, int]], keyring_json: str, environment_id: uuid.UUID
) -> AsyncIterator[_Chunk]:
    """Encrypted chunks from worker processes, a few ahead of the COPY; raises
    BrokenProcessPool if a worker dies (the caller resubmits what was not copied)."""
    workers = max(1, min(os.cpu_count() or 1, 4))
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(keyring_json, environment_id.bytes),
    ) as pool:
        todo = list(chunks)
        running: set[asyncio.Future[Any]] = set()
        while todo or running:
            while todo and len(running) < workers * 2:
                running.add(
                    asyncio.wrap_future(pool.submit(_encrypt_chunk_tagged, todo.pop(0)), loop=loop)
                )
            finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in finished:
                bounds, records = future.result()
                chunk = _Chunk(records)
                chunk.bounds = bounds
                yield chunk


# --- orchestration -----------------------------------------------------------------------------


@dataclass
class Dataset:
    rows: int
    database: str
    dsn: str
    environment_id: uuid.UUID
    seeded_now: bool
    seed_seconds: float

    @property
    def label(self) -> str:
        return label(self.rows)


def _cli_env(dsn: str, keyring_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
    env.update(
        CREDBROKER_DATABASE_URL=dsn,
        CREDBROKER_KEYRING_FILE=str(keyring_file),
        CREDBROKER_LOG_LEVEL="warning",
        CREDBROKER_LOG_FORMAT="json",
    )
    return env


def run_cli(credbroker: str, args: list[str], dsn: str, keyring_file: Path) -> str:
    done = subprocess.run(
        [credbroker, *args],
        env=_cli_env(dsn, keyring_file),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"credbroker {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


async def _existing(dsn: str, rows: int, fingerprint: str) -> uuid.UUID | None:
    """The environment id of a finished seed of exactly ``rows`` rows under this keyring."""
    try:
        connection = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        return None
    try:
        if not await connection.fetchval("SELECT to_regclass('bench_seed') IS NOT NULL"):
            return None
        marker = await connection.fetchrow(
            "SELECT rows, environment_id, keyring FROM bench_seed WHERE version = $1 AND complete",
            SEED_VERSION,
        )
        if marker is None or marker["rows"] != rows or marker["keyring"] != fingerprint:
            return None
        count = await connection.fetchval(
            "SELECT count(*) FROM connections WHERE environment_id = $1", marker["environment_id"]
        )
        return marker["environment_id"] if count == rows else None
    finally:
        await connection.close()


async def _recreate_database(admin_dsn: str, database: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()


def _chunks(rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, rows, CHUNK):
        yield (start, min(rows, start + CHUNK))


async def _create_integration(dsn: str, keyring_json: str, environment_id: uuid.UUID) -> None:
    from credbroker.bootstrap import open_backend, verify_master_keys
    from credbroker.config import Settings
    from credbroker.crypto import Keyring
    from credbroker.domain.integrations import IntegrationDraft, IntegrationService
    from credbroker.domain.models import ALL_SCOPES, Principal
    from credbroker.domain.providers import default_catalog
    from credbroker.storage.integrations import PostgresIntegrationRepository

    settings = Settings(database_url=dsn, keyring=keyring_json)
    backend = await open_backend(settings, pool_min=1)
    try:
        await verify_master_keys(
            backend.db, Keyring.from_json(keyring_json), accept_binding_v1=False
        )
        principal = Principal("bench-seed", environment_id, ENVIRONMENT, ALL_SCOPES)
        service = IntegrationService(PostgresIntegrationRepository(backend.db), default_catalog())
        await service.create(principal, IntegrationDraft(INTEGRATION_ID, PROVIDER, ""))
    finally:
        await backend.close()


async def _seed(
    admin_dsn: str, dsn: str, database: str, rows: int, keyring_file: Path, credbroker: str
) -> uuid.UUID:
    keyring_json = await asyncio.to_thread(keyring_file.read_text, "utf-8")
    await _recreate_database(admin_dsn, database)
    run_cli(credbroker, ["migrate"], dsn, keyring_file)
    run_cli(credbroker, ["environments", "create", ENVIRONMENT], dsn, keyring_file)
    connection = await asyncpg.connect(dsn)
    try:
        environment_id: uuid.UUID = await connection.fetchval(
            "SELECT id FROM environments WHERE name = $1", ENVIRONMENT
        )
        await _create_integration(dsn, keyring_json, environment_id)
        await connection.execute(
            """CREATE TABLE bench_seed (version int NOT NULL, rows bigint NOT NULL,
                   environment_id uuid NOT NULL, keyring text NOT NULL,
                   complete boolean NOT NULL DEFAULT false, seeded_at timestamptz DEFAULT now())"""
        )
        started = time.monotonic()
        done = 0
        last_report = 0
        pending = list(_chunks(rows))
        for _attempt in range(4):
            try:
                async for records in _encrypted(pending, keyring_json, environment_id):
                    await connection.copy_records_to_table(
                        "connections", records=records, columns=COPY_COLUMNS
                    )
                    pending.remove(records.bounds)
                    done += len(records)
                    if rows >= 50_000 and (done - last_report >= rows // 10 or done == rows):
                        last_report = done
                        rate = done / max(time.monotonic() - started, 1e-9)
                        print(
                            f"  seeded {done:>9,}/{rows:,} connections "
                            f"({rate:,.0f}/s, about {(rows - done) / rate:.0f}s left)",
                            file=sys.stderr,
                            flush=True,
                        )
                break
            except BrokenProcessPool:
                print(
                    f"  an encryption worker died; restarting ({len(pending)} chunks left)",
                    file=sys.stderr,
                )
        if pending:
            raise RuntimeError("seeding failed: encryption workers kept dying")
        await connection.execute("ANALYZE")
        await connection.execute(
            "INSERT INTO bench_seed (version, rows, environment_id, keyring, complete) "
            "VALUES ($1, $2, $3, $4, true)",
            SEED_VERSION,
            rows,
            environment_id,
            keyring_fingerprint(keyring_json),
        )
        return environment_id
    finally:
        await connection.close()


async def ensure_dataset(
    admin_dsn: str, rows: int, keyring_file: Path, credbroker: str, *, reseed: bool = False
) -> Dataset:
    database = database_name(rows)
    dsn = dsn_for(admin_dsn, database)
    fingerprint = keyring_fingerprint(await asyncio.to_thread(keyring_file.read_text, "utf-8"))
    environment_id = None if reseed else await _existing(dsn, rows, fingerprint)
    if environment_id is not None:
        print(f"dataset {label(rows)}: reusing {database} ({rows:,} connections)", file=sys.stderr)
        return Dataset(rows, database, dsn, environment_id, False, 0.0)
    print(f"dataset {label(rows)}: seeding {database} with {rows:,} connections", file=sys.stderr)
    started = time.monotonic()
    environment_id = await _seed(admin_dsn, dsn, database, rows, keyring_file, credbroker)
    elapsed = time.monotonic() - started
    print(f"dataset {label(rows)}: seeded in {elapsed:.1f}s", file=sys.stderr)
    return Dataset(rows, database, dsn, environment_id, True, elapsed)


def ensure_keyring(path: Path) -> Path:
    """bench/data/keyring.json: generated once (bench data only), reused afterwards."""
    if not path.exists():
        from credbroker.crypto import generate_keyring

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate_keyring().to_json(), "utf-8")
        path.chmod(0o600)
    return path
