"""The README's "Rotating the master key" runbook, run for real: the ``credbroker keyring`` CLI
in subprocesses edits keyring files and rewraps, while in-process servers are rolled from one
keyring to the next under a bounded concurrent load of reads and writes.

Nothing may fail, no read may go back in time, every acknowledged write must survive, and at the
end no blob is under the retired key, a server with the retired-key keyring serves everything,
and a server whose keyring lacks the new key refuses to start."""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from credbroker.app import RunningServer, key_service, start_server
from credbroker.bootstrap import Backend, StartupError, open_backend
from credbroker.config import Settings
from credbroker.crypto import Keyring
from credbroker.domain.models import ALL_SCOPES
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cpb_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as ipb_grpc
from credbroker.v1 import resources_pb2 as rpb

CONNECTIONS = 100
WRITABLE = 60  # the other 40 are only read, so the rewrap surely has rows under key 1 left
WORKERS = 20
LOAD_SECONDS = 15.0
MAX_OPS_PER_WORKER = 3000
RPC_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0
INTEGRATION = "openai-prod"
# No outbound calls: credential verification off (the generic providers used here have no
# verification request anyway) and no background re-checks. Unknown settings are ignored.
NO_OUTBOUND: dict[str, object] = {"verify_credentials": False, "recheck_interval": 0}
NO_OUTBOUND_ENV = {"CREDBROKER_VERIFY_CREDENTIALS": "false", "CREDBROKER_RECHECK_INTERVAL": "0"}

_CANDIDATES = (
    Path(sys.executable).parent / "credbroker",
    Path(__file__).resolve().parents[2] / ".venv" / "bin" / "credbroker",
)

# ---------------------------------------------------------------------------------------------
# helpers


def _executable() -> Path:
    for candidate in _CANDIDATES:
        if candidate.exists():
            return candidate
    raise AssertionError(f"credbroker console script not found in {_CANDIDATES}")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _settings(database_url: str, keyring: Keyring, **overrides: object) -> Settings:
    """What ``settings_factory`` builds; local because that fixture cannot take
    ``database_url`` (its lambda passes it positionally as well)."""
    values: dict[str, object] = {
        "database_url": database_url,
        "keyring": keyring.to_json(),
        "listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "db_pool_min": 1,
        "db_pool_max": 20,
        **NO_OUTBOUND,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@asynccontextmanager
async def _own_database(admin_url: str) -> AsyncIterator[str]:
    name = f"credbroker_rot_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(admin_url, name)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def _cli(*args: str, database_url: str, keyring_file: Path | None, cwd: Path) -> CliResult:
    """Runs the console script without blocking the event loop (the servers share it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
    env["CREDBROKER_LOG_FORMAT"] = "json"
    env.update(NO_OUTBOUND_ENV)
    env["CREDBROKER_DATABASE_URL"] = database_url
    if keyring_file is not None:
        env["CREDBROKER_KEYRING_FILE"] = str(keyring_file)
    process = await asyncio.create_subprocess_exec(
        str(_executable()),
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"credbroker {' '.join(args)} did not finish in {CLI_TIMEOUT}s"
        ) from None
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


async def _edit_keyring(cwd: Path, database_url: str, out: str, *args: str) -> Path:
    """``credbroker keyring <args> > out`` as in the README."""
    result = await _cli("keyring", *args, database_url=database_url, keyring_file=None, cwd=cwd)
    assert result.returncode == 0, f"keyring {args}: {result.stderr}"
    path = cwd / out
    path.write_text(result.stdout)
    return path


@dataclass
class Server:
    """An in-process server with its own backend, and a channel to it."""

    running: RunningServer
    backend: Backend
    channel: grpc.aio.Channel
    connections: cpb_grpc.ConnectionServiceAsyncStub
    integrations: ipb_grpc.IntegrationServiceAsyncStub

    async def stop(self, grace: float) -> None:
        try:
            await self.running.stop(grace)
        finally:
            await self.channel.close()
            await self.backend.close()


async def _start(database_url: str, keyring_file: Path) -> Server:
    keyring = Keyring.from_json(await asyncio.to_thread(keyring_file.read_text))
    settings = _settings(database_url, keyring)
    backend = await open_backend(settings)
    try:
        running = await start_server(settings, backend, keyring)
    except BaseException:
        await backend.close()
        raise
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return Server(
        running,
        backend,
        channel,
        cpb_grpc.ConnectionServiceStub(channel),
        ipb_grpc.IntegrationServiceStub(channel),
    )


async def _tenant(server: Server) -> tuple[tuple[str, str], ...]:
    keys = key_service(server.backend)
    await keys.create_environment("prod")
    token, _ = await keys.create_key("prod", ALL_SCOPES)
    return (("authorization", f"Bearer {token}"),)


def _api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


# ---------------------------------------------------------------------------------------------
# the load


@dataclass
class Load:
    """Bounded concurrent load. Worker ``w`` is the only writer of the connections it owns, so
    "last acknowledged value" is well defined; every worker reads every connection."""

    metadata: tuple[tuple[str, str], ...]
    target: Server
    connection_ids: list[str]
    seq: dict[str, int] = field(default_factory=dict)
    written: dict[str, dict[str, int]] = field(default_factory=dict)  # value -> seq
    acked: dict[str, int] = field(default_factory=dict)
    acked_value: dict[str, str] = field(default_factory=dict)
    configs_written: dict[str, set[str]] = field(default_factory=dict)
    acked_config: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    write_times: list[float] = field(default_factory=list)
    reads: int = 0
    writes: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def value(self, connection_id: str) -> tuple[int, str]:
        seq = self.seq.get(connection_id, 0) + 1
        self.seq[connection_id] = seq
        value = f"sk-{connection_id}-{seq:06d}-{uuid.uuid4().hex[:8]}"
        self.written.setdefault(connection_id, {})[value] = seq
        return seq, value

    async def write(self, connection_id: str, rng: random.Random) -> None:
        seq, value = self.value(connection_id)
        paths = ["credentials"]
        connection = rpb.Connection(
            integration_id=INTEGRATION, connection_id=connection_id, credentials=_api_key(value)
        )
        config = None
        if rng.random() < 0.3:
            config = f"cfg-{seq}"
            self.configs_written[connection_id].add(config)
            connection.connection_config["region"] = config
            paths.append("connection_config")
        try:
            await self.target.connections.UpdateConnection(
                cpb.UpdateConnectionRequest(
                    connection=connection, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=self.metadata,
                timeout=RPC_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            self.failures.append(
                f"write {connection_id}#{seq}: {error.code().name} {error.details()}"
            )
            return
        self.writes += 1
        self.write_times.append(time.monotonic())
        self.acked[connection_id] = seq
        self.acked_value[connection_id] = value
        if config is not None:
            self.acked_config[connection_id] = config

    async def read(self, connection_id: str) -> None:
        floor = self.acked.get(connection_id, 0)
        try:
            reply = await self.target.connections.AccessCredentials(
                cpb.AccessCredentialsRequest(
                    integration_id=INTEGRATION, connection_id=connection_id
                ),
                metadata=self.metadata,
                timeout=RPC_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            self.failures.append(f"read {connection_id}: {error.code().name} {error.details()}")
            return
        self.reads += 1
        value = reply.credentials.api_key.api_key
        seq = self.written.get(connection_id, {}).get(value)
        if seq is None:
            self.failures.append(f"read {connection_id}: a value never written for it")
        elif seq < floor:
            self.failures.append(f"read {connection_id}: stale #{seq} after #{floor} was acked")
        config = reply.connection_config.get("region")
        if config not in self.configs_written.get(connection_id, set()):
            self.failures.append(f"read {connection_id}: a connection_config never written")

    async def worker(self, index: int) -> None:
        rng = random.Random(index)
        owned = self.connection_ids[:WRITABLE][index::WORKERS]
        for _ in range(MAX_OPS_PER_WORKER):
            if self.stop.is_set():
                return
            if rng.random() < 0.5:
                await self.write(rng.choice(owned), rng)
            else:
                await self.read(rng.choice(self.connection_ids))
            await asyncio.sleep(rng.uniform(0, 0.01))


async def _blob_key_ids(database_url: str) -> dict[int, int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            """SELECT key_id, count(*) AS n FROM (
                   SELECT credentials_key_id AS key_id FROM connections
                   UNION ALL SELECT config_key_id FROM connections) blobs GROUP BY key_id"""
        )
    finally:
        await connection.close()
    return {int(row["key_id"]): int(row["n"]) for row in rows}


async def _count_under_key_1(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM connections WHERE credentials_key_id = 1 OR config_key_id = 1"
        )
    finally:
        await connection.close()
    return int(count)


# ---------------------------------------------------------------------------------------------
# tests


@pytest.mark.slow
async def test_rotation_runbook_under_load(admin_database_url: str, tmp_path: Path) -> None:
    """add-key -> roll servers -> promote -> roll servers -> rewrap (under load) -> status ->
    retire -> a server with the retired keyring serves everything."""
    async with _own_database(admin_database_url) as url:
        k1 = await _edit_keyring(tmp_path, url, "keyring.json", "generate")
        server_a = await _start(url, k1)
        servers = [server_a]
        try:
            metadata = await _tenant(server_a)
            await server_a.integrations.CreateIntegration(
                ipb.CreateIntegrationRequest(
                    integration=rpb.Integration(integration_id=INTEGRATION, provider="api-key")
                ),
                metadata=metadata,
                timeout=RPC_TIMEOUT,
            )
            ids = [f"user-{i:03d}" for i in range(CONNECTIONS)]
            load = Load(metadata, server_a, ids)
            for connection_id in ids:
                seq, value = load.value(connection_id)
                load.configs_written[connection_id] = {"cfg-0"}
                await server_a.connections.CreateConnection(
                    cpb.CreateConnectionRequest(
                        connection=rpb.Connection(
                            integration_id=INTEGRATION,
                            connection_id=connection_id,
                            credentials=_api_key(value),
                            connection_config={"region": "cfg-0"},
                        )
                    ),
                    metadata=metadata,
                    timeout=RPC_TIMEOUT,
                )
                load.acked[connection_id] = seq
                load.acked_value[connection_id] = value
                load.acked_config[connection_id] = "cfg-0"
            assert await _blob_key_ids(url) == {1: 2 * CONNECTIONS}

            started = time.monotonic()
            workers = [asyncio.create_task(load.worker(i)) for i in range(WORKERS)]
            timeline: dict[str, float] = {}
            try:
                await asyncio.sleep(3)
                # Step 1: a decrypt-only key 2, rolled out (B up, traffic moved, A drained).
                k2 = await _edit_keyring(
                    tmp_path, url, "keyring.step1.json", "add-key", "--file", str(k1)
                )
                server_b = await _start(url, k2)
                servers.append(server_b)
                load.target = server_b
                await asyncio.sleep(0.5)
                await server_a.stop(5)
                servers.remove(server_a)
                timeline["A stopped"] = time.monotonic() - started

                await asyncio.sleep(2)
                # Step 2: key 2 primary, rolled out (C up, traffic moved, B drained).
                k3 = await _edit_keyring(
                    tmp_path, url, "keyring.step2.json", "promote", "2", "--file", str(k2)
                )
                server_c = await _start(url, k3)
                servers.append(server_c)
                load.target = server_c
                await asyncio.sleep(0.5)
                await server_b.stop(5)
                servers.remove(server_b)
                timeline["B stopped"] = time.monotonic() - started

                await asyncio.sleep(1)
                # Step 3: rewrap while the load goes on against C.
                writes_before = load.writes
                rewrap_start = time.monotonic()
                rewrap = await _cli(
                    "keyring", "rewrap", "--batch-size", "10",
                    database_url=url, keyring_file=k3, cwd=tmp_path,
                )  # fmt: skip
                rewrap_end = time.monotonic()
                timeline["rewrap"] = rewrap_end - started
                writes_during_rewrap = load.writes - writes_before
                await asyncio.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
            finally:
                load.stop.set()
                await asyncio.gather(*workers)
            elapsed = time.monotonic() - started

            summary = (
                f"{load.reads} reads, {load.writes} writes in {elapsed:.1f}s, "
                f"{len(load.failures)} failures, timeline {timeline}"
            )
            assert rewrap.returncode == 0, f"rewrap failed: {rewrap.stderr}"
            rewrapped = re.search(
                r"rewrap complete: (\d+) rows now under master key 2", rewrap.stdout
            )
            assert rewrapped, rewrap.stdout
            assert int(rewrapped.group(1)) >= CONNECTIONS - WRITABLE, rewrap.stdout
            assert load.failures == [], f"{summary}: {load.failures[:20]}"
            assert load.reads > 200 and load.writes > 200, summary
            assert writes_during_rewrap > 0 or rewrap_end - rewrap_start < 0.1, summary

            # Every acknowledged write survived, through the server that did the rewrap.
            for connection_id in ids:
                reply = await server_c.connections.AccessCredentials(
                    cpb.AccessCredentialsRequest(
                        integration_id=INTEGRATION, connection_id=connection_id
                    ),
                    metadata=metadata,
                    timeout=RPC_TIMEOUT,
                )
                assert reply.credentials.api_key.api_key == load.acked_value[connection_id], (
                    f"{connection_id}: the last acknowledged write was lost"
                )
                assert reply.connection_config["region"] == load.acked_config[connection_id]

            status = await _cli(
                "keyring", "status", database_url=url, keyring_file=k3, cwd=tmp_path
            )
            assert status.returncode == 0, status.stderr
            assert re.search(r"^primary key id: 2$", status.stdout, re.M), status.stdout
            assert re.search(r"^\s*1\t0\s*$", status.stdout, re.M), status.stdout
            assert re.search(rf"^\s*2\t{2 * CONNECTIONS}\s*$", status.stdout, re.M), status.stdout
            assert await _count_under_key_1(url) == 0

            # Step 4: retire key 1; a server with that keyring serves every credential.
            k4 = await _edit_keyring(
                tmp_path, url, "keyring.step3.json", "retire", "1", "--file", str(k3)
            )
            retired = Keyring.from_json(k4.read_text())
            assert sorted(retired.keys) == [2] and retired.primary_key_id == 2
            await server_c.stop(5)
            servers.remove(server_c)
            server_d = await _start(url, k4)
            servers.append(server_d)
            for connection_id in ids:
                reply = await server_d.connections.AccessCredentials(
                    cpb.AccessCredentialsRequest(
                        integration_id=INTEGRATION, connection_id=connection_id
                    ),
                    metadata=metadata,
                    timeout=RPC_TIMEOUT,
                )
                assert reply.credentials.api_key.api_key == load.acked_value[connection_id]
                assert reply.connection_config["region"] == load.acked_config[connection_id]

            # A keyring that lacks key 2 (the original one) no longer starts.
            old = Keyring.from_json(k1.read_text())
            with pytest.raises(StartupError, match=r"\b2\b") as refused:
                running = await start_server(_settings(url, old), server_d.backend, old)
                await running.stop(0)
            for key in old.keys.values():
                assert key.hex() not in str(refused.value)
        finally:
            for server in servers:
                await server.stop(0)


async def test_rewrap_changes_only_the_wrapped_data_key(
    admin_database_url: str, tmp_path: Path
) -> None:
    """Rewrap rewrites bytes 2..65 (key id, wrap nonce, wrapped DEK) and nothing else: bytes 0-1
    and the payload from offset 66 are byte-identical, and a second run changes nothing."""
    async with _own_database(admin_database_url) as url:
        k1 = await _edit_keyring(tmp_path, url, "keyring.json", "generate")
        server = await _start(url, k1)
        expected: dict[str, tuple[str, str]] = {}
        try:
            metadata = await _tenant(server)
            for integration_id, provider in (("openai", "api-key"), ("jira", "basic")):
                await server.integrations.CreateIntegration(
                    ipb.CreateIntegrationRequest(
                        integration=rpb.Integration(
                            integration_id=integration_id, provider=provider
                        )
                    ),
                    metadata=metadata,
                    timeout=RPC_TIMEOUT,
                )
            for i in range(10):
                secret = f"secret-{i}-{uuid.uuid4().hex}"
                basic = i % 2 == 1
                credentials = (
                    rpb.Credentials(basic=rpb.BasicCredentials(username=f"u{i}", password=secret))
                    if basic
                    else _api_key(secret)
                )
                await server.connections.CreateConnection(
                    cpb.CreateConnectionRequest(
                        connection=rpb.Connection(
                            integration_id="jira" if basic else "openai",
                            connection_id=f"c{i}",
                            credentials=credentials,
                            connection_config={"subdomain": f"sub-{i}"},
                        )
                    ),
                    metadata=metadata,
                    timeout=RPC_TIMEOUT,
                )
                expected[f"c{i}"] = (secret, f"sub-{i}")
        finally:
            await server.stop(0)

        async def blobs() -> dict[tuple[str, str], bytes]:
            connection = await asyncpg.connect(url)
            try:
                rows = await connection.fetch(
                    "SELECT connection_id, credentials_blob, config_blob FROM connections"
                )
            finally:
                await connection.close()
            found: dict[tuple[str, str], bytes] = {}
            for row in rows:
                found[(row["connection_id"], "credentials")] = bytes(row["credentials_blob"])
                found[(row["connection_id"], "config")] = bytes(row["config_blob"])
            return found

        before = await blobs()
        assert len(before) == 20
        k2 = await _edit_keyring(tmp_path, url, "keyring.step1.json", "add-key", "--file", str(k1))
        k3 = await _edit_keyring(
            tmp_path, url, "keyring.step2.json", "promote", "2", "--file", str(k2)
        )
        rewrap = await _cli("keyring", "rewrap", database_url=url, keyring_file=k3, cwd=tmp_path)
        assert rewrap.returncode == 0, rewrap.stderr
        after = await blobs()
        assert after.keys() == before.keys()
        for where, old in before.items():
            new = after[where]
            assert len(new) == len(old), where
            assert new[:2] == old[:2], where
            assert int.from_bytes(old[2:6], "big") == 1, where
            assert int.from_bytes(new[2:6], "big") == 2, where
            assert new[6:66] != old[6:66], f"{where}: wrap nonce and wrapped DEK unchanged"
            assert new[66:] == old[66:], f"{where}: payload bytes changed"

        again = await _cli("keyring", "rewrap", database_url=url, keyring_file=k3, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert await blobs() == after, "a second rewrap changed blobs already under key 2"

        server = await _start(url, k3)
        try:
            for connection_id, (secret, subdomain) in expected.items():
                basic = int(connection_id[1:]) % 2 == 1
                reply = await server.connections.AccessCredentials(
                    cpb.AccessCredentialsRequest(
                        integration_id="jira" if basic else "openai", connection_id=connection_id
                    ),
                    metadata=metadata,
                    timeout=RPC_TIMEOUT,
                )
                got = (
                    reply.credentials.basic.password if basic else reply.credentials.api_key.api_key
                )
                assert got == secret
                assert reply.connection_config["subdomain"] == subdomain
        finally:
            await server.stop(0)
