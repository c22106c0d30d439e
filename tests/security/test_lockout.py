"""Issue 9, finding 3: peers without a key cannot lock authenticated callers out, and hold
nothing for long. One worker, a raw HTTP/2 client (``h2``) opening streams no grpc client would:
headers and never a message, and hundreds of Health/Watch streams. Bounded: every wait has a
deadline, everything runs on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credbroker.app import RunningServer, start_server
from credbroker.config import Settings
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc

ATTACK_STREAMS = 256
FIRST_MESSAGE = 1.0  # CREDBROKER_FIRST_MESSAGE_TIMEOUT for these servers
WATCH_AGE = 2.0  # CREDBROKER_WATCH_MAX_AGE
GET = "/credbroker.v1.ConnectionService/GetConnection"
CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"


@pytest_asyncio.fixture
async def one_worker(
    settings_factory: Callable[..., Settings], backend: Any, keyring: Any
) -> AsyncIterator[RunningServer]:
    """Default limits (CREDBROKER_MAX_CONCURRENT_RPCS=256) with short time bounds."""
    settings = settings_factory(first_message_timeout=FIRST_MESSAGE, watch_max_age=WATCH_AGE)
    running = await start_server(settings, backend, keyring)
    yield running
    await running.stop(0)


async def _open(raw_h2: Any, port: int, count: int, path: str, **stream: Any) -> list[Any]:
    """``count`` streams over as many connections as the 100-streams-per-connection limit
    needs; returns (connection, stream id) pairs."""
    streams = []
    for start in range(0, count, 90):
        connection = await raw_h2(port)
        for _ in range(min(90, count - start)):
            streams.append((connection, connection.open(path, **stream)))
        await connection.flush()
    return streams


async def _authenticated_call_works(port: int, tenant: Any) -> float:
    """Seconds an authenticated ListIntegrations took on a fresh connection (fails if it did
    not succeed)."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        started = time.monotonic()
        await igrpc.IntegrationServiceStub(channel).ListIntegrations(
            ipb.ListIntegrationsRequest(), metadata=tenant.metadata, timeout=5
        )
        return time.monotonic() - started


async def _finished_within(streams: list[Any], seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if all(c.finished(s) for c, s in streams):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    open_streams = sum(not c.finished(s) for c, s in streams)
    raise AssertionError(f"{open_streams} streams still open after {seconds} s")


def _statuses(streams: list[Any]) -> dict[int | None, int]:
    counts: dict[int | None, int] = {}
    for connection, stream_id in streams:
        status = connection.streams[stream_id].grpc_status
        counts[status] = counts.get(status, 0) + 1
    return counts


async def test_header_only_streams_without_a_key_lock_nobody_out(
    one_worker: RunningServer, raw_h2: Any, tenant: Any
) -> None:
    streams = await _open(raw_h2, one_worker.port, ATTACK_STREAMS, GET, end=False)
    await asyncio.sleep(0.3)  # the server has seen them all
    assert await _authenticated_call_works(one_worker.port, tenant) < 2.0
    # Refused on the headers alone: nothing waits for their message.
    await _finished_within(streams, 2.0)
    assert _statuses(streams) == {grpc.StatusCode.UNAUTHENTICATED.value[0]: ATTACK_STREAMS}


async def test_header_only_streams_with_a_key_are_freed_after_the_first_message_bound(
    one_worker: RunningServer, raw_h2: Any, tenant: Any
) -> None:
    """A caller with a valid key that never sends its message holds no slot of
    max_concurrent_rpcs, and its calls end after CREDBROKER_FIRST_MESSAGE_TIMEOUT."""
    auth = ((b"authorization", f"Bearer {tenant.key}".encode()),)
    started = time.monotonic()
    streams = await _open(raw_h2, one_worker.port, ATTACK_STREAMS, GET, extra=auth, end=False)
    await asyncio.sleep(0.3)
    assert await _authenticated_call_works(one_worker.port, tenant) < 2.0
    await _finished_within(streams, FIRST_MESSAGE + 3.0)
    assert time.monotonic() - started >= FIRST_MESSAGE * 0.9
    assert _statuses(streams) == {grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: ATTACK_STREAMS}


async def test_header_only_health_checks_are_capped_per_peer_and_freed(
    one_worker: RunningServer, raw_h2: Any, tenant: Any
) -> None:
    streams = await _open(raw_h2, one_worker.port, ATTACK_STREAMS, CHECK, end=False)
    await asyncio.sleep(0.3)
    assert await _authenticated_call_works(one_worker.port, tenant) < 2.0
    await _finished_within(streams, FIRST_MESSAGE + 3.0)
    statuses = _statuses(streams)
    assert statuses.get(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], 0) >= ATTACK_STREAMS - 16
    assert set(statuses) <= {
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    }


async def test_watch_streams_are_capped_and_aged(
    one_worker: RunningServer, raw_h2: Any, tenant: Any
) -> None:
    request = health_pb2.HealthCheckRequest().SerializeToString()
    streams = await _open(raw_h2, one_worker.port, ATTACK_STREAMS, WATCH, message=request)
    header_only = await _open(raw_h2, one_worker.port, 32, WATCH, end=False)
    await asyncio.sleep(0.5)
    assert await _authenticated_call_works(one_worker.port, tenant) < 2.0
    # Health itself still answers another peer... and this one, by Check.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{one_worker.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    served = [(c, s) for c, s in streams if c.streams[s].data]
    assert 1 <= len(served) <= 16, len(served)  # the per-peer cap
    await _finished_within(streams + header_only, WATCH_AGE + 3.0)
    statuses = _statuses(streams)
    assert statuses[grpc.StatusCode.OK.value[0]] == len(served)  # aged out cleanly
    assert statuses[grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]] == ATTACK_STREAMS - len(served)
    # Everything was given back.
    limits = one_worker.server_limits
    assert limits is not None
    assert limits.watch_streams == 0 and limits.authenticated_in_flight == 0


# ---------------------------------------------------------------------------------------------
# the HTTP port (issue 9, finding 3, on the other transport)

HTTP_CONNECTIONS = 300  # above CREDBROKER_MAX_CONCURRENT_RPCS (256), which once capped them


async def _http_call_works(port: int, tenant: Any) -> float:
    """Seconds an authenticated GET /connections took on a fresh connection."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        started = time.monotonic()
        response = await http.get("/connections", headers={"authorization": f"Bearer {tenant.key}"})
        assert response.status_code == 200, response.text
        return time.monotonic() - started


async def _closed_within(
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], seconds: float
) -> list[bytes]:
    """What each connection received before the server closed it (fails past ``seconds``)."""

    async def drain(reader: asyncio.StreamReader) -> bytes:
        return await reader.read()  # until EOF

    return list(
        await asyncio.wait_for(
            asyncio.gather(*(drain(reader) for reader, _ in connections)), seconds
        )
    )


async def _connect(port: int, count: int, data: bytes) -> list[Any]:
    opened = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if data:
            writer.write(data)
        opened.append((reader, writer))
    for _, writer in opened:
        await writer.drain()
    return opened


async def test_idle_and_slow_http_connections_lock_nobody_out(
    one_worker: RunningServer, tenant: Any
) -> None:
    """Connections that never send a request, or send its headers byte by byte, hold nothing:
    authenticated calls (and health) keep working, and the server closes them once the
    first-message bound has passed."""
    port = one_worker.http_port
    idle = await _connect(port, HTTP_CONNECTIONS, b"")
    partial = await _connect(port, 50, b"GET /connections HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    try:
        await asyncio.sleep(0.3)
        assert await _http_call_works(port, tenant) < 2.0
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        for _, writer in partial:  # trickling more header bytes does not extend the bound
            writer.write(b"X-Slow: 1\r\n")
        received = await _closed_within(idle + partial, FIRST_MESSAGE + 3.0)
        assert time.monotonic() - started >= FIRST_MESSAGE * 0.9
        assert all(data == b"" for data in received)  # closed, nothing answered
    finally:
        for _, writer in idle + partial:
            writer.close()


async def test_http_requests_are_admitted_on_their_headers(
    one_worker: RunningServer, tenant: Any
) -> None:
    """A request whose body never comes: without a valid key it is refused at once (the body is
    never waited for); with one, it ends with 504 request_timeout after the first-message bound.
    Headers beyond 16 KiB close the connection."""
    port = one_worker.http_port
    head = "POST /connections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    forged = await _connect(
        port, 20, (head + "Authorization: Bearer nope\r\nContent-Length: 100\r\n\r\n").encode()
    )
    keyed = await _connect(
        port,
        20,
        (head + f"Authorization: Bearer {tenant.key}\r\nContent-Length: 100\r\n\r\n").encode(),
    )
    huge = await _connect(port, 1, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20_000)
    started = time.monotonic()
    try:
        for reader, _ in forged:
            status = await asyncio.wait_for(reader.readline(), 2.0)
            assert status.startswith(b"HTTP/1.1 401"), status
        assert time.monotonic() - started < 2.0
        assert await _http_call_works(port, tenant) < 2.0
        for reader, _ in keyed:
            status = await asyncio.wait_for(reader.readline(), FIRST_MESSAGE + 3.0)
            assert status.startswith(b"HTTP/1.1 504"), status
            rest = await asyncio.wait_for(reader.read(4096), 2.0)
            assert b'"code":"request_timeout"' in rest
        assert time.monotonic() - started >= FIRST_MESSAGE * 0.9
        assert await _closed_within(huge, 2.0) == [b""]
        limits = one_worker.server_limits
        assert limits is not None and limits.authenticated_in_flight == 0
    finally:
        for _, writer in forged + keyed + huge:
            writer.close()
