"""Canary scan: secrets submitted through a broad flow (both auth modes, connection config,
updates, upserts, reveals, and every kind of error) must come back only inside
``AccessCredentials`` responses.

Scanned: every other response message, the initial and trailing metadata and details of every
call, every error's rich status, all log output (stdlib records via caplog, and whatever structlog
prints), the ``audit_events`` table, and a ``pg_dump`` of the whole database. Each canary is
searched raw, in hex, base64 and base64url at every alignment, percent-encoded and JSON-escaped.
The secret key used for the flow is a canary too: only its key id may appear, never its secret.
The master keyring must not appear anywhere either."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2, text_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credbroker.app import key_service, start_server
from credbroker.bootstrap import open_backend
from credbroker.config import Settings
from credbroker.crypto import Keyring, generate_keyring
from credbroker.domain.keys import KeyService
from credbroker.domain.models import ALL_SCOPES, Scope
from credbroker.domain.secret_keys import parse_key
from credbroker.v1 import audit_service_pb2 as apb
from credbroker.v1 import audit_service_pb2_grpc as apb_grpc
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cpb_grpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as ipb_grpc
from credbroker.v1 import resources_pb2 as rpb

Code = grpc.StatusCode
# A loaded 2-core machine took more than 15 s to start `credbroker serve` (imports, migrations).
SERVE_START_SECONDS = 60.0
RPC_TIMEOUT = 10.0
# No outbound calls: credential verification off (the generic providers used here have no
# verification request anyway) and no background re-checks. Unknown settings are ignored.
NO_OUTBOUND: dict[str, object] = {"verify_credentials": False, "recheck_interval": 0}
NO_OUTBOUND_ENV = {"CREDBROKER_VERIFY_CREDENTIALS": "false", "CREDBROKER_RECHECK_INTERVAL": "0"}


def canary() -> str:
    return f"CANARY-{uuid.uuid4().hex}"


def encodings(secret: str) -> list[bytes]:
    """The forms a leaked secret may take. Base64 is taken at all three alignments (the secret
    may sit anywhere inside a longer encoded value) minus the edge characters that depend on
    neighbours."""
    raw = secret.encode("utf-8")
    forms = {
        raw,
        raw.hex().encode(),
        raw.hex().upper().encode(),
        quote(secret, safe="").encode(),
        "".join(f"%{b:02X}" for b in raw).encode(),
        "".join(f"%{b:02x}" for b in raw).encode(),
        json.dumps(secret)[1:-1].encode(),
        json.dumps(secret, ensure_ascii=False)[1:-1].encode(),
    }
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + raw)
        inner = encoded[4:-4] if shift else encoded[:-4]
        forms.add(inner)
        forms.add(inner.replace(b"+", b"-").replace(b"/", b"_"))
    return sorted(f for f in forms if len(f) >= 16)


@dataclass
class Needle:
    label: str
    forms: list[bytes]


@dataclass
class Scanner:
    """Places to scan (name -> bytes), filled during the flow and afterwards."""

    places: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, name: str, data: bytes | str) -> None:
        self.places.append((name, data.encode("utf-8") if isinstance(data, str) else data))

    @property
    def total_bytes(self) -> int:
        return sum(len(data) for _, data in self.places)

    def hits(self, needles: list[Needle]) -> list[str]:
        found = []
        for name, data in self.places:
            for needle in needles:
                for form in needle.forms:
                    if form in data:
                        found.append(f"{needle.label} ({form[:12]!r}...) in {name}")
                        break
        return found


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@asynccontextmanager
async def _own_database(admin_url: str) -> AsyncIterator[str]:
    name = f"credbroker_canary_{uuid.uuid4().hex[:12]}"
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


async def _run(*command: str) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout, stderr


async def _pg_dump(url: str) -> bytes:
    """``pg_dump`` of the database: the system one, else pgserver's bundled one; skips when
    none can dump this server (for example a client older than the server)."""
    candidates = []
    system = shutil.which("pg_dump")
    if system:
        candidates.append(system)
    bundled = Path(sys.prefix) / "lib"
    for found in bundled.glob("python3*/site-packages/pgserver/pginstall/bin/pg_dump"):
        candidates.append(str(found))
    errors = []
    for executable in candidates:
        code, stdout, stderr = await _run(executable, "--no-sync", f"--dbname={url}")
        if code == 0:
            return stdout
        errors.append(f"{executable}: {stderr.decode(errors='replace').strip()[:300]}")
    pytest.skip("no pg_dump could dump the test database: " + " | ".join(errors or ["none found"]))


def _metadata_bytes(metadata: Any) -> bytes:
    parts = []
    for key, value in metadata or ():
        parts.append(key.encode() if isinstance(key, str) else bytes(key))
        parts.append(value.encode() if isinstance(value, str) else bytes(value))
    return b"\n".join(parts)


@dataclass
class Flow:
    scanner: Scanner
    metadata: tuple[tuple[str, str], ...]
    revealed: list[cpb.AccessCredentialsResponse] = field(default_factory=list)
    errors: int = 0

    async def ok(
        self,
        name: str,
        method: Callable[..., Any],
        request: Message,
        *,
        metadata: tuple[tuple[str, str], ...] | None = None,
        reveal: bool = False,
    ) -> Any:
        call = method(request, metadata=metadata or self.metadata, timeout=RPC_TIMEOUT)
        response = await call
        self.scanner.add(
            f"{name}: initial metadata", _metadata_bytes(await call.initial_metadata())
        )
        self.scanner.add(
            f"{name}: trailing metadata", _metadata_bytes(await call.trailing_metadata())
        )
        self.scanner.add(f"{name}: details", (await call.details()) or "")
        if reveal:
            self.revealed.append(response)  # the one place canaries may appear
        else:
            self.scanner.add(f"{name}: response", response.SerializeToString())
            self.scanner.add(f"{name}: response text", text_format.MessageToString(response))
        return response

    async def fails(
        self,
        name: str,
        code: grpc.StatusCode,
        method: Callable[..., Any],
        request: Message,
        *,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(request, metadata=metadata or self.metadata, timeout=RPC_TIMEOUT)
        error = caught.value
        assert error.code() == code, f"{name}: {error.code().name} {error.details()}"
        self.errors += 1
        self.scanner.add(f"{name}: error details", error.details() or "")
        self.scanner.add(f"{name}: error debug string", error.debug_error_string() or "")
        self.scanner.add(
            f"{name}: error initial metadata", _metadata_bytes(error.initial_metadata())
        )
        self.scanner.add(
            f"{name}: error trailing metadata", _metadata_bytes(error.trailing_metadata())
        )
        rich = rpc_status.from_call(cast(grpc.Call, error))
        if rich is not None:
            self.scanner.add(f"{name}: rich status", text_format.MessageToString(rich))
            for detail in rich.details:
                for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
                    if detail.Is(kind.DESCRIPTOR):
                        unpacked = kind()
                        detail.Unpack(unpacked)
                        self.scanner.add(
                            f"{name}: {kind.DESCRIPTOR.name}", text_format.MessageToString(unpacked)
                        )
        return error


def _api_key(value: str) -> rpb.Credentials:
    return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=value))


def _basic(username: str, password: str) -> rpb.Credentials:
    return rpb.Credentials(basic=rpb.BasicCredentials(username=username, password=password))


@dataclass
class FlowResult:
    flow: Flow
    canaries: dict[str, str]
    secret_key: str
    secret: str
    tampered: str
    key_id: str


async def _broad_flow(
    port: int, keys: KeyService, scanner: Scanner, change_takes_effect: Any
) -> FlowResult:
    """Both auth modes, connection config, updates, an upsert, reveals, and every kind of error,
    each carrying fresh canaries; ends by revoking the secret key and presenting it again."""
    canaries: dict[str, str] = {}

    def new(label: str) -> str:
        canaries[label] = canary()
        return canaries[label]

    await keys.create_environment("canary")
    secret_key, secret_record = await keys.create_key("canary", ALL_SCOPES)
    parsed = parse_key(secret_key)
    assert parsed is not None
    reader, _ = await keys.create_key("canary", frozenset({Scope.CONNECTIONS_READ}))
    auth = (("authorization", f"Bearer {secret_key}"),)
    reader_auth = (("authorization", f"Bearer {reader}"),)
    tampered = secret_key[:-1] + ("A" if secret_key[-1] != "A" else "B")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        integrations = ipb_grpc.IntegrationServiceStub(channel)
        connections = cpb_grpc.ConnectionServiceStub(channel)
        audit = apb_grpc.AuditServiceStub(channel)
        flow = Flow(scanner, auth)

        for integration_id, provider in (("openai", "api-key"), ("jira", "basic")):
            await flow.ok(
                f"CreateIntegration {integration_id}",
                integrations.CreateIntegration,
                ipb.CreateIntegrationRequest(
                    integration=rpb.Integration(integration_id=integration_id, provider=provider)
                ),
            )

        # --- successful writes of both modes, with connection config ----------------------------
        metadata = struct_pb2.Struct()
        metadata.update({"plan": "pro"})
        await flow.ok(
            "CreateConnection api",
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="user-api",
                    credentials=_api_key(new("api key")),
                    connection_config={"org": new("api config")},
                    metadata=metadata,
                    tags={"end_user_id": "42"},
                )
            ),
        )
        created = await flow.ok(
            "CreateConnection basic",
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="jira",
                    connection_id="user-basic",
                    credentials=_basic(new("username"), new("password")),
                    connection_config={"subdomain": new("basic config")},
                )
            ),
        )
        await flow.ok(
            "GetConnection",
            connections.GetConnection,
            cpb.GetConnectionRequest(integration_id="openai", connection_id="user-api"),
        )
        await flow.ok(
            "ListConnections", connections.ListConnections, cpb.ListConnectionsRequest(page_size=10)
        )
        await flow.ok(
            "UpdateConnection api",
            connections.UpdateConnection,
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="user-api",
                    credentials=_api_key(new("api key v2")),
                    connection_config={"org": new("api config v2")},
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["credentials", "connection_config"]),
            ),
        )
        await flow.ok(
            "UpdateConnection basic with etag",
            connections.UpdateConnection,
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="jira",
                    connection_id="user-basic",
                    etag=created.etag,
                    credentials=_basic(new("username v2"), new("password v2")),
                ),
            ),
        )
        await flow.ok(
            "UpdateConnection upsert",
            connections.UpdateConnection,
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="user-upsert",
                    credentials=_api_key(new("upserted api key")),
                ),
                allow_missing=True,
            ),
        )
        for integration_id, connection_id in (
            ("openai", "user-api"),
            ("jira", "user-basic"),
            ("openai", "user-upsert"),
        ):
            await flow.ok(
                f"AccessCredentials {connection_id}",
                connections.AccessCredentials,
                cpb.AccessCredentialsRequest(
                    integration_id=integration_id, connection_id=connection_id
                ),
                reveal=True,
            )
        api, basic, upserted = flow.revealed
        assert api.credentials.api_key.api_key == canaries["api key v2"]
        assert api.connection_config["org"] == canaries["api config v2"]
        assert basic.credentials.basic.username == canaries["username v2"]
        assert basic.credentials.basic.password == canaries["password v2"]
        assert basic.connection_config["subdomain"] == canaries["basic config"]
        assert upserted.credentials.api_key.api_key == canaries["upserted api key"]

        # --- errors, each carrying a canary -------------------------------------------------------
        bad = Code.INVALID_ARGUMENT
        access_api = cpb.AccessCredentialsRequest(integration_id="openai", connection_id="user-api")
        await flow.fails(
            "basic credentials on an API-key integration",
            bad,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    credentials=_basic(new("wrong-mode user"), new("wrong-mode password")),
                )
            ),
        )
        await flow.fails(
            "API key on a Basic integration",
            bad,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="jira", credentials=_api_key(new("wrong-mode key"))
                )
            ),
        )
        await flow.fails(
            "update with the wrong mode",
            bad,
            connections.UpdateConnection,
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="user-api",
                    credentials=_basic("u", new("wrong-mode update password")),
                )
            ),
        )
        await flow.fails(
            "oversize API key",
            bad,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    credentials=_api_key(new("oversize key") + "x" * 5000),
                )
            ),
        )
        await flow.fails(
            "oversize password and username",
            bad,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="jira",
                    credentials=_basic(
                        new("oversize username") + "u" * 1100,
                        new("oversize password") + "p" * 5000,
                    ),
                )
            ),
        )
        await flow.fails(
            "oversize connection config value",
            bad,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    credentials=_api_key(new("key beside oversize config")),
                    connection_config={"org": new("oversize config") + "c" * 5000},
                )
            ),
        )
        await flow.fails(
            "bad connection id beside a canary",
            bad,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="not a valid id!",
                    credentials=_api_key(new("key beside a bad id")),
                )
            ),
        )
        await flow.fails(
            "message above the size limit",
            Code.RESOURCE_EXHAUSTED,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    credentials=_api_key(new("huge message key") + "h" * 300_000),
                )
            ),
        )
        await flow.fails(
            "create under a missing integration",
            Code.NOT_FOUND,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="missing",
                    credentials=_api_key(new("key for a missing integration")),
                )
            ),
        )
        await flow.fails(
            "update of a missing connection",
            Code.NOT_FOUND,
            connections.UpdateConnection,
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="missing",
                    credentials=_api_key(new("key for a missing connection")),
                )
            ),
        )
        await flow.fails(
            "access a missing connection",
            Code.NOT_FOUND,
            connections.AccessCredentials,
            cpb.AccessCredentialsRequest(integration_id="openai", connection_id="missing"),
        )
        await flow.fails(
            "duplicate connection id",
            Code.ALREADY_EXISTS,
            connections.CreateConnection,
            cpb.CreateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="user-api",
                    credentials=_api_key(new("duplicate key")),
                )
            ),
        )
        await flow.fails(
            "stale etag",
            Code.ABORTED,
            connections.UpdateConnection,
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="jira",
                    connection_id="user-basic",
                    etag=created.etag,
                    credentials=_basic("u", new("stale etag password")),
                )
            ),
        )
        await flow.fails(
            "reveal without credentials:read",
            Code.PERMISSION_DENIED,
            connections.AccessCredentials,
            access_api,
            metadata=reader_auth,
        )
        await flow.fails(
            "a canary as bearer token",
            Code.UNAUTHENTICATED,
            connections.AccessCredentials,
            access_api,
            metadata=(("authorization", f"Bearer {new('bearer canary')}"),),
        )
        await flow.fails(
            "the secret key with a typo",
            Code.UNAUTHENTICATED,
            connections.AccessCredentials,
            access_api,
            metadata=(("authorization", f"Bearer {tampered}"),),
        )
        await flow.ok(
            "ListAuditEvents", audit.ListAuditEvents, apb.ListAuditEventsRequest(page_size=1000)
        )
        await flow.ok(
            "DeleteConnection",
            connections.DeleteConnection,
            cpb.DeleteConnectionRequest(integration_id="openai", connection_id="user-upsert"),
        )
        await keys.revoke_key(secret_record.key_id)
        revoked = time.monotonic()

        async def refused() -> bool:
            try:
                await connections.AccessCredentials(access_api, metadata=auth, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                assert error.code() == Code.UNAUTHENTICATED, error
                return True
            return False

        # Revoked by another process: in effect within the documented bound (then scanned).
        await change_takes_effect(refused, revoked, "revoke")
        await flow.fails(
            "the revoked secret key",
            Code.UNAUTHENTICATED,
            connections.AccessCredentials,
            access_api,
        )
    return FlowResult(flow, canaries, secret_key, parsed.secret, tampered, secret_record.key_id)


async def _scan_database(url: str, scanner: Scanner, key_id: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT * FROM audit_events ORDER BY id")
    finally:
        await connection.close()
    audit_text = "\n".join(repr(dict(row)) for row in rows)
    assert key_id in audit_text, "the audit trail names the key id"
    assert len(rows) >= 10, audit_text
    scanner.add("audit_events table", audit_text)
    scanner.add("pg_dump", await _pg_dump(url))


def _assert_no_leaks(scanner: Scanner, result: FlowResult, keyring: Keyring, logs: int) -> None:
    needles = [
        Needle(f"canary {label!r}", encodings(value)) for label, value in result.canaries.items()
    ]
    needles += [
        Needle(f"canary {label!r} (uuid part)", encodings(value.removeprefix("CANARY-")))
        for label, value in result.canaries.items()
    ]
    needles.append(Needle("the secret key", encodings(result.secret_key)))
    needles.append(Needle("the secret key's secret", encodings(result.secret)))
    needles.append(Needle("the mistyped secret key", encodings(result.tampered)))
    for key_id, key in keyring.keys.items():
        needles.append(
            Needle(
                f"master key {key_id}",
                [base64.b64encode(key), base64.urlsafe_b64encode(key), key.hex().encode()],
            )
        )

    # The scanner finds canaries where they are allowed (else it would prove nothing).
    control = Scanner()
    for response in result.flow.revealed:
        control.add("AccessCredentials", response.SerializeToString())
    assert len(control.hits(needles)) >= 6

    assert result.flow.errors >= 15
    summary = (
        f"scanned {len(scanner.places)} places, {scanner.total_bytes} bytes, for "
        f"{len(result.canaries)} canaries, the secret key and {len(keyring.keys)} master key(s); "
        f"{result.flow.errors} errors, {logs} log lines/records"
    )
    leaks = scanner.hits(needles)
    assert leaks == [], f"{summary}; leaks:\n" + "\n".join(leaks[:30])
    assert scanner.total_bytes > 10_000, summary
    sys.stderr.write(summary + "\n")


async def test_canaries_appear_only_in_access_credentials(
    admin_database_url: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    change_takes_effect: Any,
) -> None:
    """In-process server: logs captured through caplog (stdlib records, root logger at DEBUG)
    and capfd (what structlog prints with the test session's configuration)."""
    caplog.set_level(logging.DEBUG)
    scanner = Scanner()
    async with _own_database(admin_database_url) as url:
        keyring = generate_keyring()
        settings = Settings.model_validate(
            {
                "database_url": url,
                "keyring": keyring.to_json(),
                "listen": "127.0.0.1:0",
                "http_listen": "127.0.0.1:0",
                "db_pool_min": 1,
                "db_pool_max": 5,
                "log_level": "debug",
                **NO_OUTBOUND,
            }
        )
        backend = await open_backend(settings)
        try:
            running = await start_server(settings, backend, keyring)
            try:
                result = await _broad_flow(
                    running.port, key_service(backend), scanner, change_takes_effect
                )
            finally:
                await running.stop(0)
        finally:
            await backend.close()
        await _scan_database(url, scanner, result.key_id)

    captured = capfd.readouterr()
    scanner.add("captured stdout", captured.out)
    scanner.add("captured stderr", captured.err)
    records = [f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records]
    for index, record in enumerate(caplog.records):
        scanner.add(f"log record {index} ({record.name})", records[index])
    everything = captured.out + captured.err + "\n".join(records)
    assert "rpc failed" in everything and "rpc rejected" in everything, "server logs not captured"
    _assert_no_leaks(scanner, result, keyring, len(records) + everything.count("\n"))


async def test_canaries_absent_from_production_logs(
    admin_database_url: str, tmp_path: Path, change_takes_effect: Any
) -> None:
    """The same flow against ``credbroker serve`` in a subprocess with the production logging
    set-up (JSON, redaction, level debug): its whole stdout and stderr are scanned."""
    scanner = Scanner()
    async with _own_database(admin_database_url) as url:
        keyring = generate_keyring()
        keyring_file = tmp_path / "keyring.json"
        keyring_file.write_text(keyring.to_json())
        settings = Settings.model_validate(
            {"database_url": url, "keyring": keyring.to_json(), "db_pool_min": 1, **NO_OUTBOUND}
        )
        backend = await open_backend(settings)  # migrations, and the CLI's view of keys
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                http_port = int(sock.getsockname()[1])
            env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
            env.update(
                CREDBROKER_DATABASE_URL=url,
                CREDBROKER_KEYRING_FILE=str(keyring_file),
                CREDBROKER_LOG_FORMAT="json",
                CREDBROKER_LOG_LEVEL="debug",
                CREDBROKER_HTTP_LISTEN=f"127.0.0.1:{http_port}",
            )
            env.update(NO_OUTBOUND_ENV)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "credbroker", "serve", "--listen", f"127.0.0.1:{port}",
                env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + SERVE_START_SECONDS
                while True:
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                    except OSError:
                        assert process.returncode is None, "serve exited"
                        assert time.monotonic() < deadline, (
                            f"serve did not bind within {SERVE_START_SECONDS} s"
                        )
                        await asyncio.sleep(0.1)
                        continue
                    writer.close()
                    break
                result = await _broad_flow(port, key_service(backend), scanner, change_takes_effect)
                process.send_signal(signal.SIGTERM)
                stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        finally:
            await backend.close()
        await _scan_database(url, scanner, result.key_id)

    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    scanner.add("serve stdout", stdout)
    scanner.add("serve stderr", stderr)
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    events = {line.get("event") for line in lines}
    assert {"rpc failed", "rpc rejected"} <= events, f"server logs not captured: {events}"
    _assert_no_leaks(scanner, result, keyring, len(lines))


@dataclass
class Collector:
    """A stand-in for a host an attacker controls (on 127.0.0.1): records raw requests."""

    received: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            head = b""
        self.received.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


async def test_credentials_do_not_leave_without_credentials_read(admin_database_url: str) -> None:
    """A key without ``credentials:read`` must not get a stored credential out by any route.

    Outbound verification sends credentials to the integration's ``base_url``, which
    ``UpdateIntegration`` (``integrations:write``) can point anywhere for a generic provider.
    Here the "attacker" host is a recorder on 127.0.0.1 (allow-listed for the test, as a public
    host would be in production); the key only holds integrations:* and connections:*. Neither
    ``VerifyConnection`` nor the background re-check may deliver the canary there."""
    if not hasattr(cpb, "VerifyConnectionRequest"):
        pytest.skip("this build has no outbound credential verification")
    collector = Collector()
    listener = await asyncio.start_server(collector.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    secret = canary()
    outcomes: list[str] = []
    try:
        async with _own_database(admin_database_url) as url:
            keyring = generate_keyring()
            settings = Settings.model_validate(
                {
                    "database_url": url,
                    "keyring": keyring.to_json(),
                    "listen": "127.0.0.1:0",
                    "http_listen": "127.0.0.1:0",
                    "db_pool_min": 1,
                    "verify_credentials": True,
                    "outbound_allow": "127.0.0.1/32",
                    "recheck_interval": 1,
                    "recheck_max_age": 1,
                }
            )
            backend = await open_backend(settings)
            try:
                running = await start_server(settings, backend, keyring)
                try:
                    keys = key_service(backend)
                    await keys.create_environment("victim")
                    admin, _ = await keys.create_key("victim", ALL_SCOPES)
                    writer_scopes = ALL_SCOPES - {Scope.CREDENTIALS_READ}
                    attacker, _ = await keys.create_key("victim", frozenset(writer_scopes))
                    as_admin = (("authorization", f"Bearer {admin}"),)
                    as_attacker = (("authorization", f"Bearer {attacker}"),)
                    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                        integrations = ipb_grpc.IntegrationServiceStub(channel)
                        connections = cpb_grpc.ConnectionServiceStub(channel)
                        # The app stores a key under a generic integration that only stores keys.
                        await integrations.CreateIntegration(
                            ipb.CreateIntegrationRequest(
                                integration=rpb.Integration(
                                    integration_id="generic", provider="api-key"
                                )
                            ),
                            metadata=as_admin,
                            timeout=RPC_TIMEOUT,
                        )
                        await connections.CreateConnection(
                            cpb.CreateConnectionRequest(
                                connection=rpb.Connection(
                                    integration_id="generic",
                                    connection_id="victim",
                                    credentials=_api_key(secret),
                                )
                            ),
                            metadata=as_admin,
                            timeout=RPC_TIMEOUT,
                        )
                        # The attacker re-points the integration and asks for a check.
                        try:
                            await integrations.UpdateIntegration(
                                ipb.UpdateIntegrationRequest(
                                    integration=rpb.Integration(
                                        integration_id="generic",
                                        integration_config={
                                            "base_url": f"http://127.0.0.1:{port}",
                                            "verification_path": "/collect",
                                        },
                                    ),
                                    update_mask=field_mask_pb2.FieldMask(
                                        paths=["integration_config"]
                                    ),
                                ),
                                metadata=as_attacker,
                                timeout=RPC_TIMEOUT,
                            )
                            outcomes.append("UpdateIntegration OK")
                        except grpc.aio.AioRpcError as error:
                            outcomes.append(f"UpdateIntegration {error.code().name}")
                        try:
                            await connections.VerifyConnection(
                                cpb.VerifyConnectionRequest(
                                    integration_id="generic", connection_id="victim"
                                ),
                                metadata=as_attacker,
                                timeout=RPC_TIMEOUT,
                            )
                            outcomes.append("VerifyConnection OK")
                        except grpc.aio.AioRpcError as error:
                            outcomes.append(f"VerifyConnection {error.code().name}")
                        after_verify = len(collector.received)
                        await asyncio.sleep(3)  # background re-checks run every second
                finally:
                    await running.stop(0)
            finally:
                await backend.close()
    finally:
        listener.close()
        await listener.wait_closed()

    needles = [Needle("the stored API key", encodings(secret))]
    leaked = [
        f"request {index} ({'VerifyConnection' if index < after_verify else 'background re-check'})"
        for index, data in enumerate(collector.received)
        if Scanner([("request", data)]).hits(needles)
    ]
    assert leaked == [], (
        f"the credential reached a host chosen by a key without credentials:read: {leaked}; "
        f"calls: {outcomes}; {len(collector.received)} requests received"
    )
