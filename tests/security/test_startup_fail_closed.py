"""Fail-closed start-up: ``credbroker serve`` with a bad keyring exits non-zero within seconds,
never binds its port, names the offending key id, and never prints key material. A stored
ciphertext altered in the database is refused at read time (DATA_LOSS, logged), alone.

Every case runs the real console script in a subprocess against a database of its own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from credbroker.app import key_service, start_server
from credbroker.bootstrap import StartupError, open_backend
from credbroker.config import Settings
from credbroker.crypto import Keyring, generate_keyring
from credbroker.domain.models import ALL_SCOPES
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cpb_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as ipb_grpc
from credbroker.v1 import resources_pb2 as rpb

# Generous: a loaded 2-core machine took more than 15 s to start `credbroker serve` (imports,
# migrations). A start-up that fails still must fail by itself, never hang.
START_TIMEOUT = 60.0
# No outbound calls: credential verification off (the generic providers used here have no
# verification request anyway) and no background re-checks. Unknown settings are ignored.
NO_OUTBOUND: dict[str, object] = {"verify_credentials": False, "recheck_interval": 0}
NO_OUTBOUND_ENV = {"CREDBROKER_VERIFY_CREDENTIALS": "false", "CREDBROKER_RECHECK_INTERVAL": "0"}
_CANDIDATES = (
    Path(sys.executable).parent / "credbroker",
    Path(__file__).resolve().parents[2] / ".venv" / "bin" / "credbroker",
)


def _executable() -> Path:
    for candidate in _CANDIDATES:
        if candidate.exists():
            return candidate
    raise AssertionError(f"credbroker console script not found in {_CANDIDATES}")


def _settings(database_url: str, keyring: Keyring, **overrides: object) -> Settings:
    """What ``settings_factory`` builds; local because that fixture cannot take
    ``database_url`` (its lambda passes it positionally as well)."""
    values: dict[str, object] = {
        "database_url": database_url,
        "keyring": keyring.to_json(),
        "listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "db_pool_min": 1,
        "db_pool_max": 10,
        **NO_OUTBOUND,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
    env["CREDBROKER_LOG_FORMAT"] = "json"
    env["CREDBROKER_HTTP_LISTEN"] = f"127.0.0.1:{_free_port()}"
    env.update(NO_OUTBOUND_ENV)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _material_forms(key: bytes) -> list[str]:
    """Printable forms of a key: base64 (standard, url-safe, unpadded) and hex, plus every
    16-character window of them (a truncated echo leaks too)."""
    forms = {
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        key.hex(),
        key.hex().upper(),
    }
    windows: set[str] = set()
    for form in forms:
        stripped = form.rstrip("=")
        windows.update(stripped[i : i + 16] for i in range(max(1, len(stripped) - 15)))
    return sorted(forms | windows)


def _assert_no_material(text: str, keys: list[bytes], where: str) -> None:
    for key in keys:
        for form in _material_forms(key):
            assert form not in text, f"{where} contains key material ({form[:4]}...)"


@dataclass
class ServeResult:
    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float
    bound: bool
    timed_out: bool


async def _serve(env: dict[str, str], cwd: Path, *, limit: float = START_TIMEOUT) -> ServeResult:
    """Runs ``credbroker serve`` and watches its port until it exits (or ``limit`` seconds)."""
    port = _free_port()
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        str(_executable()),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(process.communicate())
    bound = False
    timed_out = False
    while not communicate.done():
        if await _port_open(port):
            bound = True
        if time.monotonic() - started > limit:
            timed_out = True
            process.kill()
            break
        await asyncio.wait({communicate}, timeout=0.05)
    stdout, stderr = await communicate
    elapsed = time.monotonic() - started
    bound = bound or await _port_open(port)
    return ServeResult(
        process.returncode, stdout.decode(), stderr.decode(), elapsed, bound, timed_out
    )


async def _create_database(admin_url: str) -> str:
    name = f"credbroker_sec_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def _drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass
class Seeded:
    url: str
    keyring: Keyring


@pytest_asyncio.fixture(scope="module")
async def seeded(admin_database_url: str) -> AsyncIterator[Seeded]:
    """A database where a server with a good keyring (key 1) started once and stored one
    connection, so key 1 has a check value and data under it."""
    name = await _create_database(admin_database_url)
    url = _with_database(admin_database_url, name)
    try:
        good = generate_keyring()
        settings = _settings(url, good)
        backend = await open_backend(settings)
        try:
            running = await start_server(settings, backend, good)
            try:
                keys = key_service(backend)
                await keys.create_environment("prod")
                token, _ = await keys.create_key("prod", ALL_SCOPES)
                metadata = (("authorization", f"Bearer {token}"),)
                async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                    await ipb_grpc.IntegrationServiceStub(channel).CreateIntegration(
                        ipb.CreateIntegrationRequest(
                            integration=rpb.Integration(integration_id="openai", provider="api-key")
                        ),
                        metadata=metadata,
                        timeout=10,
                    )
                    await cpb_grpc.ConnectionServiceStub(channel).CreateConnection(
                        cpb.CreateConnectionRequest(
                            connection=rpb.Connection(
                                integration_id="openai",
                                connection_id="user-1",
                                credentials=rpb.Credentials(
                                    api_key=rpb.ApiKeyCredentials(api_key="sk-seeded-secret")
                                ),
                            )
                        ),
                        metadata=metadata,
                        timeout=10,
                    )
            finally:
                await running.stop(0)
        finally:
            await backend.close()
        yield Seeded(url, good)
    finally:
        await _drop_database(admin_database_url, name)


@dataclass
class BadCase:
    """A bad start-up configuration: ``configure`` returns (env additions, keys it involves)."""

    name: str
    configure: Callable[[Seeded, Path], tuple[dict[str, str], list[bytes]]]
    expected: str  # regex the stderr must match (names the key id where one is involved)


def _doc(keys: dict[int, bytes], primary: int) -> str:
    return json.dumps(
        {
            "primary_key_id": primary,
            "keys": {str(k): base64.b64encode(v).decode() for k, v in keys.items()},
        }
    )


def _no_keyring(seeded: Seeded, tmp: Path) -> tuple[dict[str, str], list[bytes]]:
    return {}, [seeded.keyring.keys[1]]


def _malformed_json(seeded: Seeded, tmp: Path) -> tuple[dict[str, str], list[bytes]]:
    key = os.urandom(32)
    text = _doc({1: key}, 1)[:-3]  # cut off the closing quote and braces: the key is inside
    return {"CREDBROKER_KEYRING": text}, [key, seeded.keyring.keys[1]]


def _short_key(seeded: Seeded, tmp: Path) -> tuple[dict[str, str], list[bytes]]:
    key = os.urandom(16)
    return {"CREDBROKER_KEYRING": _doc({7: key}, 7)}, [key, seeded.keyring.keys[1]]


def _key_as_id(seeded: Seeded, tmp: Path) -> tuple[dict[str, str], list[bytes]]:
    """A key pasted where the id belongs: the error must not quote it."""
    key = os.urandom(32)
    b64 = base64.b64encode(key).decode()
    text = json.dumps({"primary_key_id": 1, "keys": {b64: b64}})
    return {"CREDBROKER_KEYRING": text}, [key, seeded.keyring.keys[1]]


def _wrong_bytes(seeded: Seeded, tmp: Path) -> tuple[dict[str, str], list[bytes]]:
    key = os.urandom(32)
    return {"CREDBROKER_KEYRING": _doc({1: key}, 1)}, [key, seeded.keyring.keys[1]]


def _missing_key(seeded: Seeded, tmp: Path) -> tuple[dict[str, str], list[bytes]]:
    key = os.urandom(32)
    return {"CREDBROKER_KEYRING": _doc({2: key}, 2)}, [key, seeded.keyring.keys[1]]


def _both_sources(seeded: Seeded, tmp: Path) -> tuple[dict[str, str], list[bytes]]:
    path = tmp / "keyring.json"
    path.write_text(seeded.keyring.to_json())
    other = generate_keyring()
    return (
        {"CREDBROKER_KEYRING": other.to_json(), "CREDBROKER_KEYRING_FILE": str(path)},
        [seeded.keyring.keys[1], other.keys[1]],
    )


BAD_CASES = [
    BadCase("no-keyring", _no_keyring, r"CREDBROKER_KEYRING"),
    BadCase("malformed-json", _malformed_json, r"(?i)json"),
    BadCase("16-byte-key", _short_key, r"\bkey 7\b"),
    BadCase("key-pasted-as-id", _key_as_id, r"(?i)key id"),
    BadCase("right-id-wrong-bytes", _wrong_bytes, r"\bmaster key 1\b.*(?i:match)"),
    BadCase("data-key-missing", _missing_key, r"(?i)(\[1\]|key 1\b|key\(s\) 1\b).*missing"),
    BadCase("keyring-and-file", _both_sources, r"(?i)not both"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.name for c in BAD_CASES])
async def test_serve_with_bad_keyring_fails_closed(
    case: BadCase, seeded: Seeded, tmp_path: Path
) -> None:
    additions, keys = case.configure(seeded, tmp_path)
    env = _base_env()
    env["CREDBROKER_DATABASE_URL"] = seeded.url
    env.update(additions)

    result = await _serve(env, tmp_path)

    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert not result.timed_out, f"serve still running after {START_TIMEOUT}s\n{output}"
    assert result.returncode not in (0, None), f"exit code {result.returncode}\n{output}"
    assert result.elapsed < START_TIMEOUT
    assert not result.bound, f"the port was bound although start-up failed\n{output}"
    assert re.search(case.expected, result.stderr), f"expected /{case.expected}/ in\n{output}"
    _assert_no_material(result.stderr, keys + list(seeded.keyring.keys.values()), "stderr")
    _assert_no_material(result.stdout, keys + list(seeded.keyring.keys.values()), "stdout")


async def test_serve_with_good_keyring_binds_and_drains(seeded: Seeded, tmp_path: Path) -> None:
    """Positive control for the cases above: the same command with the right keyring binds the
    port, answers health checks, and exits 0 on SIGTERM."""
    path = tmp_path / "keyring.json"
    path.write_text(seeded.keyring.to_json())
    env = _base_env()
    env["CREDBROKER_DATABASE_URL"] = seeded.url
    env["CREDBROKER_KEYRING_FILE"] = str(path)
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        str(_executable()),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        env=env,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not await _port_open(port):
            assert process.returncode is None, "serve exited with the good keyring"
            assert time.monotonic() < deadline, f"serve did not bind within {START_TIMEOUT} s"
            await asyncio.sleep(0.1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    _assert_no_material(stderr.decode() + stdout.decode(), list(seeded.keyring.keys.values()), "")


# ---------------------------------------------------------------------------------------------
# read-time integrity


async def test_altered_ciphertext_is_data_loss_and_logged(
    tenant: Any,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="credbroker")
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="openai", provider="api-key")
        ),
        metadata=tenant.metadata,
    )
    secrets = {f"user-{i}": f"sk-integrity-{i}-{uuid.uuid4().hex}" for i in range(3)}
    for connection_id, secret in secrets.items():
        await tenant.connections.CreateConnection(
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id=connection_id,
                    credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=secret)),
                )
            ),
            metadata=tenant.metadata,
        )

    connection = await asyncpg.connect(database_url)
    try:
        status = await connection.execute(
            """UPDATE connections
               SET credentials_blob = set_byte(credentials_blob, length(credentials_blob) - 20,
                   get_byte(credentials_blob, length(credentials_blob) - 20) # 1)
               WHERE integration_id = 'openai' AND connection_id = 'user-0'
                 AND environment_id = (SELECT id FROM environments WHERE name = $1)""",
            tenant.environment,
        )
    finally:
        await connection.close()
    assert status == "UPDATE 1"
    capsys.readouterr()  # only what follows

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenant.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(integration_id="openai", connection_id="user-0"),
            metadata=tenant.metadata,
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()
    rich = rpc_status.from_call(cast(grpc.Call, error))
    assert rich is not None
    infos = []
    for detail in rich.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert [i.reason for i in infos] == ["DATA_INTEGRITY"]
    exposed = (error.details() or "") + repr(error.trailing_metadata()) + str(rich)
    for secret in secrets.values():
        assert secret not in exposed
        assert secret.encode().hex() not in exposed

    captured = capsys.readouterr()
    logs = (
        captured.out
        + captured.err
        + "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    )
    assert "ciphertext failed authentication" in logs, logs
    for secret in secrets.values():
        assert secret not in logs

    for connection_id in ("user-1", "user-2"):
        reply = await tenant.connections.AccessCredentials(
            cpb.AccessCredentialsRequest(integration_id="openai", connection_id=connection_id),
            metadata=tenant.metadata,
        )
        assert reply.credentials.api_key.api_key == secrets[connection_id]


async def test_refused_start_registers_no_key(admin_database_url: str) -> None:
    """A start refused because stored data needs a key the keyring lacks must leave nothing
    behind: in particular no check value for the keyring's other (never used) key ids, or the
    real key with that id is refused later as "does not match"."""
    name = await _create_database(admin_database_url)
    url = _with_database(admin_database_url, name)
    try:
        good = generate_keyring()
        backend = await open_backend(_settings(url, good))
        try:
            keys = key_service(backend)
            running = await start_server(_settings(url, good), backend, good)
            try:
                await keys.create_environment("prod")
                token, _ = await keys.create_key("prod", ALL_SCOPES)
                metadata = (("authorization", f"Bearer {token}"),)
                async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                    await ipb_grpc.IntegrationServiceStub(channel).CreateIntegration(
                        ipb.CreateIntegrationRequest(
                            integration=rpb.Integration(integration_id="openai", provider="api-key")
                        ),
                        metadata=metadata,
                        timeout=10,
                    )
                    await cpb_grpc.ConnectionServiceStub(channel).CreateConnection(
                        cpb.CreateConnectionRequest(
                            connection=rpb.Connection(
                                integration_id="openai",
                                connection_id="user-1",
                                credentials=rpb.Credentials(
                                    api_key=rpb.ApiKeyCredentials(api_key="sk-x")
                                ),
                            )
                        ),
                        metadata=metadata,
                        timeout=10,
                    )
            finally:
                await running.stop(0)

            stray = Keyring(primary_key_id=2, keys={2: os.urandom(32)})  # lacks key 1
            with pytest.raises(StartupError, match=r"\[1\]"):
                await start_server(_settings(url, stray), backend, stray)

            # The operator fixes the mistake with a proper rotation keyring: key 1 plus a new 2.
            fixed = good.with_new_key(2)
            running = await start_server(_settings(url, fixed), backend, fixed)
            await running.stop(0)
        finally:
            await backend.close()
    finally:
        await _drop_database(admin_database_url, name)
