"""Issue 9, finding 2: the canary scan with outbound verification ON, against the local fake
provider, for every way of presenting a credential (bearer, x-api-key, query parameter, Basic,
Datadog's two headers, the generic provider's header, template and query parameter), through
create, update, VerifyConnection and the background re-check; plus secret keys sent with bytes
no grpc client would send (a non-UTF-8 byte, a NUL, a control character, Latin-1) over raw
HTTP/2.

No log line (any library, any level: httpx and httpcore are turned up to DEBUG here, as an
operator or embedder might) may carry a canary, the secret key, or a URL query string."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest

from credbroker.app import RunningServer
from credbroker.domain.models import ALL_SCOPES
from credbroker.domain.secret_keys import parse_key
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import resources_pb2 as rpb

from .conftest import Client, FakeProvider, api_key, basic

GET_CONNECTION = "/credbroker.v1.ConnectionService/GetConnection"


def canary() -> str:
    return f"CANARY{uuid.uuid4().hex}"


def forms(secret: str) -> list[bytes]:
    """Raw, hex, percent-encoded, JSON-escaped and base64 (all alignments) forms."""
    raw = secret.encode()
    found = {
        raw,
        raw.hex().encode(),
        quote(secret, safe="").encode(),
        json.dumps(secret)[1:-1].encode(),
    }
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + raw)
        inner = encoded[4:-4] if shift else encoded[:-4]
        found |= {inner, inner.replace(b"+", b"-").replace(b"/", b"_")}
    return [f for f in found if len(f) >= 12]


def leaks(needles: dict[str, list[bytes]], places: dict[str, bytes]) -> list[str]:
    return [
        f"{label} in {place}"
        for place, data in places.items()
        for label, variants in needles.items()
        if any(v in data for v in variants)
    ]


def windows(secret: str, size: int = 12) -> list[bytes]:
    """Every ``size``-character piece of ``secret``: a key with one altered byte still leaks
    the rest of its secret, which recovers the key."""
    return [secret[i : i + size].encode() for i in range(len(secret) - size + 1)]


def malformed_keys(token: str) -> Iterator[bytes]:
    key = token.encode()
    yield b"Bearer " + key[:30] + b"\xff" + key[31:]  # the finding: one non-UTF-8 byte
    yield b"Bearer " + key[:2] + b"\xc3" + key[3:]  # a broken prefix (not key-shaped)
    yield b"Bearer " + key[:-1] + b"\x80"  # in the checksum
    yield b"Bearer " + key[:40] + b"\x01" + key[41:]  # a control character
    yield b"Bearer " + key[:40] + b"\x00" + key[41:]  # a NUL
    yield b"Bearer " + key.replace(b"_", "\u00e9".encode("latin-1"), 1)  # Latin-1
    yield b"Bearer\t" + key + b"\xfe"


@pytest.fixture
def loud_libraries() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore", "grpc", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


async def _verification_flow(client: Client, fake: FakeProvider) -> dict[str, str]:
    """Every injection style, accepted and refused, created, updated and verified."""
    canaries: dict[str, str] = {}

    def new(label: str, accept: bool = True) -> str:
        canaries[f"{label} #{len(canaries)}"] = value = canary()
        if accept:
            fake.accept(value)
        return value

    async def attempt(call: Any) -> None:
        try:
            await call
        except grpc.aio.AioRpcError as error:
            assert error.code() in {
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.NOT_FOUND,  # the fake refused its creation
            }, error

    generic = f"{fake.url}/generic"
    cases: list[tuple[str, dict[str, str], Any, dict[str, str]]] = [
        ("openai", {}, lambda ok: api_key(new("bearer", ok)), {}),
        ("anthropic", {}, lambda ok: api_key(new("x-api-key", ok)), {}),
        ("google-gemini", {}, lambda ok: api_key(new("query key", ok)), {}),
        ("twilio", {}, lambda ok: basic(new("basic user", ok), new("basic password", ok)), {}),
        (
            "datadog",
            {},
            lambda ok: api_key(new("dd-api-key", ok)),
            {"application_key": new("dd application key", False)},
        ),
        (
            "api-key",
            {"base_url": generic, "verification_path": "/v1/models"},
            lambda ok: api_key(new("generic bearer", ok)),
            {},
        ),
        (
            "api-key",
            {"base_url": generic, "verification_path": "/v1/models", "query_param": "key"},
            lambda ok: api_key(new("generic query", ok)),
            {},
        ),
        (
            "api-key",
            {
                "base_url": generic,
                "verification_path": "/v1/models?page=1",
                "header_name": "x-custom",
                "value_template": "Token ${credentials.api_key}",
            },
            lambda ok: api_key(new("generic template", ok)),
            {},
        ),
        (
            "basic",
            {"base_url": generic, "verification_path": "/v1/models"},
            lambda ok: basic(new("generic user", ok), new("generic password", ok)),
            {},
        ),
    ]
    for index, (provider, integration_config, credentials, config) in enumerate(cases):
        integration_id = await client.integration(provider, integration_config)
        for accepted in (True, False):
            connection_id = f"c{index}-{accepted}"
            await attempt(
                client.create(
                    integration_id,
                    credentials(accepted),
                    connection_id=connection_id,
                    config=config,
                )
            )
        stored = f"c{index}-True"
        await attempt(client.verify(integration_id, stored))
        await attempt(
            client.connections.UpdateConnection(
                cpb.UpdateConnectionRequest(
                    connection=rpb.Connection(
                        integration_id=integration_id,
                        connection_id=stored,
                        credentials=credentials(True),
                    )
                ),
                metadata=client.metadata,
                timeout=10,
            )
        )
        await attempt(client.verify(integration_id, stored))
    return canaries


async def _malformed_key_calls(raw_h2: Any, port: int, token: str) -> int:
    """One connection per value (a bad header may end the whole connection)."""
    calls = []
    for value in malformed_keys(token):
        connection = await raw_h2(port)
        calls.append(
            (
                connection,
                connection.open(GET_CONNECTION, extra=((b"authorization", value),), message=b""),
            )
        )
        await connection.flush()
    deadline = time.monotonic() + 10
    while not all(c.finished(s) for c, s in calls) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return len(calls)


async def test_canary_scan_with_verification_on(
    vserver: RunningServer,
    vclient: Client,
    fake: FakeProvider,
    raw_h2: Any,
    loud_libraries: None,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = await _verification_flow(vclient, fake)
    await vserver.connections.recheck_stale(timedelta(0), 1000)  # background re-check path
    token, _ = await vclient.keys.create_key(vclient.environment, ALL_SCOPES)
    sent = await _malformed_key_calls(raw_h2, vserver.port, token)

    # The flow reached the fake in every style (else the scan proves little).
    seen = " ".join(r.credential or "" for r in fake.requests)
    assert len([label for label, value in canaries.items() if value in seen]) >= 15, seen
    assert any(r.query for r in fake.requests)

    captured = capfd.readouterr()
    places = {"stdout": captured.out.encode(), "stderr": captured.err.encode()}
    for index, record in enumerate(caplog.records):
        places[f"record {index} {record.name}"] = (
            f"{record.getMessage()} {record.__dict__!r}".encode()
        )
    needles = {label: forms(value) for label, value in canaries.items()}
    parsed = parse_key(token)
    assert parsed is not None
    needles["the secret key"] = [*windows(parsed.secret), token[-12:].encode()]
    found = leaks(needles, places)
    assert found == [], found[:20]
    queries = [p for p, data in places.items() if b"?key=" in data or b"?api_key=" in data]
    assert queries == [], queries
    assert sent == 7
    assert any(r.name.startswith("httpx") for r in caplog.records), "httpx logs not captured"


async def test_production_logs_with_verification_on(
    verify_settings: Any,
    verification_database_url: str,
    vkeys: Any,
    fake: FakeProvider,
    raw_h2: Any,
    tmp_path: Path,
    keyring: Any,
) -> None:
    """``credbroker serve`` (JSON logs at DEBUG, verification on, the fake allow-listed): a key
    verified as a query parameter and a secret key with a bad byte leave no trace in its
    output."""
    from credbroker.v1 import connection_service_pb2_grpc, integration_service_pb2_grpc

    keyring_file = tmp_path / "keyring.json"
    keyring_file.write_text(keyring.to_json())
    with socket.socket() as sock, socket.socket() as http_sock:
        sock.bind(("127.0.0.1", 0))
        http_sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        http_port = int(http_sock.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDBROKER_")}
    env.update(
        CREDBROKER_DATABASE_URL=verification_database_url,
        CREDBROKER_KEYRING_FILE=str(keyring_file),
        CREDBROKER_LOG_FORMAT="json",
        CREDBROKER_LOG_LEVEL="debug",
        CREDBROKER_VERIFY_CREDENTIALS="true",
        CREDBROKER_OUTBOUND_ALLOW="127.0.0.0/8",
        CREDBROKER_RECHECK_INTERVAL="0",
        CREDBROKER_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        CREDBROKER_WORKERS="1",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "credbroker", "serve", "--listen", f"127.0.0.1:{port}",
        env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    secret = canary()
    fake.accept(secret)
    environment = f"p-{uuid.uuid4().hex[:10]}"
    await vkeys.create_environment(environment)
    token, _ = await vkeys.create_key(environment, ALL_SCOPES)
    try:
        deadline = time.monotonic() + 60  # a loaded machine took more than 15 s to start serve
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                assert process.returncode is None and time.monotonic() < deadline
                await asyncio.sleep(0.1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = Client(
                environment,
                token,
                vkeys,
                integration_service_pb2_grpc.IntegrationServiceStub(channel),
                connection_service_pb2_grpc.ConnectionServiceStub(channel),
            )
            integration_id = await client.integration(
                "api-key",
                {
                    "base_url": f"{fake.url}/google-gemini",
                    "verification_path": "/v1beta/models",
                    "query_param": "key",
                },
            )
            created = await client.create(integration_id, api_key(secret))
            assert created.verification.state == rpb.Verification.VERIFIED
            await client.verify(integration_id, created.connection_id)
        await _malformed_key_calls(raw_h2, port, token)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert len(fake.requests_with(secret)) == 2
    parsed = parse_key(token)
    assert parsed is not None
    needles = {
        "the canary": forms(secret),
        "the secret key": [*windows(parsed.secret), token[-12:].encode()],
    }
    found = leaks(needles, {"stdout": stdout, "stderr": stderr})
    assert found == [], found
    assert b"?key=" not in stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    assert any(e.get("event") == "rpc rejected" for e in events), "server logs not captured"
