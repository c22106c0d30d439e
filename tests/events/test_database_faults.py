"""A server whose database connections are cut again and again (``pg_terminate_backend`` on every
backend of its database, every 0.1 s for a few seconds, under traffic, and then while the
database refuses new connections) keeps serving, answering UNAVAILABLE meanwhile, and every
background duty resumes by itself: the change listener (a revocation made elsewhere still
arrives by announcement), the audit writer, the webhook dispatcher (every event acknowledged
during the storm is delivered), the verification re-check runner, the last-use and read-time
flushers, the event clean-up and the connect-session purge. No duty's task ends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

import credbroker.app
from credbroker.app import RunningServer, key_service, start_server
from credbroker.bootstrap import Backend, open_backend
from credbroker.domain.models import ALL_SCOPES
from credbroker.v1 import connect_session_service_pb2 as spb
from credbroker.v1 import connect_session_service_pb2_grpc as sgrpc
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc
from credbroker.v1 import resources_pb2 as rpb

from .conftest import Account, create_endpoint

STORM_SECONDS = 3.0
REFUSE_SECONDS = 2.0
TERMINATE_EVERY = 0.1
DUTY_SECONDS = 0.3  # interval of every periodic duty in this test
RECOVERY_SECONDS = 15.0  # each duty shows it works again within this long of the storm
DELIVERY_SECONDS = 30.0  # a delivery whose result was lost is retried after its lease (7 s)
RPC_TIMEOUT = 10.0


@pytest_asyncio.fixture
async def faulty(
    events_database_url: str,
    settings_factory: Any,
    keyring: Any,
    pki: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[RunningServer, Backend]]:
    """An in-process server on the events database, every periodic duty every 0.3 s."""
    monkeypatch.setattr(credbroker.app, "LAST_USED_FLUSH_SECONDS", DUTY_SECONDS)
    monkeypatch.setattr(credbroker.app, "SESSION_PURGE_SECONDS", DUTY_SECONDS)
    settings = settings_factory(
        database_url=events_database_url,
        db_pool_min=1,
        cache_ttl=300.0,  # only an announcement can drop a cached key within the test
        webhook_dispatch=True,
        outbound_allow="127.0.0.0/8",
        outbound_ca_file=str(pki.ca_file),
        webhook_timeout=2,
        webhook_retry_base=0.2,
        webhook_retry_max=1,
        webhook_circuit_failures=1000,
        recheck_interval=DUTY_SECONDS,
        recheck_max_age=DUTY_SECONDS,
        event_retention=3600,
        webhook_retry_horizon=3600,
        event_cleanup_interval=DUTY_SECONDS,
    )
    backend = await open_backend(settings)
    running = await start_server(settings, backend, keyring)
    try:
        yield running, backend
    finally:
        await running.stop(0)
        await backend.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float) -> float:
    """Seconds until ``check()`` holds (polled); fails naming ``what`` after ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"{what}: not within {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def storm(admin_database_url: str, database: str) -> int:
    """Terminates every backend of ``database`` every TERMINATE_EVERY seconds for STORM_SECONDS,
    then for REFUSE_SECONDS more while the database refuses new connections (``ALLOW_CONNECTIONS
    false``: every reconnect fails too); returns how many backends it terminated."""
    admin = await asyncpg.connect(admin_database_url)
    terminated = 0

    async def terminate_for(seconds: float) -> None:
        nonlocal terminated
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            terminated += await admin.fetchval(
                """SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                   FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()""",
                database,
            )
            await asyncio.sleep(TERMINATE_EVERY)

    try:
        await terminate_for(STORM_SECONDS)
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        try:
            await terminate_for(REFUSE_SECONDS)
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
    return terminated


async def test_every_duty_resumes_after_its_connections_are_cut(
    faulty: tuple[RunningServer, Backend],
    events_backend: Backend,
    events_database_url: str,
    admin_database_url: str,
    account: Account,
    receiver: Any,
    change_takes_effect: Any,
) -> None:
    running, _ = faulty
    database = urlsplit(events_database_url).path.lstrip("/")
    account.channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    await account.integration()
    await create_endpoint(account, receiver.url(), "connection.created")
    await account.create("seed")
    seed = cpb.AccessCredentialsRequest(integration_id="openai-prod", connection_id="seed")
    tasks = [*running.background, *([running.dispatcher.task] if running.dispatcher else [])]

    # Traffic while every connection of the database is cut, again and again.
    acked: list[str] = []
    codes: list[grpc.StatusCode] = []

    async def traffic(until: float) -> None:
        index = 0
        while time.monotonic() < until:
            index += 1
            try:
                await account.create(f"storm-{index}")
                acked.append(f"storm-{index}")
                await account.connections.AccessCredentials(
                    seed, metadata=account.metadata, timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
            await asyncio.sleep(0.02)

    terminated, _ = await asyncio.gather(
        storm(admin_database_url, database),
        traffic(time.monotonic() + STORM_SECONDS + REFUSE_SECONDS),
    )
    assert terminated >= 10, f"only {terminated} backends terminated: no storm"
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}, (
        f"calls during the storm answered {sorted({c.name for c in codes})}, not UNAVAILABLE only"
    )
    storm_over = datetime.now(UTC)

    # The server serves, and health says so.
    async def serves() -> bool:
        try:
            await account.connections.AccessCredentials(
                seed, metadata=account.metadata, timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            return False
        return True

    async def serving() -> bool:
        reply = await health_pb2_grpc.HealthStub(account.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    await eventually(serves, "AccessCredentials works again", RECOVERY_SECONDS)
    await eventually(serving, "health SERVING again", RECOVERY_SECONDS)

    # The change listener is back, and a revocation made elsewhere arrives by announcement.
    listener = running.listener
    assert listener is not None

    async def listening() -> bool:
        return listener.healthy

    await eventually(listening, "the change listener reconnected", RECOVERY_SECONDS)
    await revocation_arrives_by_announcement(running, events_backend, account, change_takes_effect)

    # The audit writer: an audited call is recorded (the call fails closed otherwise).
    async def audit_rows() -> int:
        count = await events_backend.db.fetchval(
            "SELECT count(*) FROM audit_events WHERE environment = $1", account.environment
        )
        return int(count)

    before = await audit_rows()
    await account.connections.AccessCredentials(
        seed, metadata=account.metadata, timeout=RPC_TIMEOUT
    )
    assert await audit_rows() > before

    # The dispatcher: every creation acknowledged during the storm, and one after, is delivered.
    await account.create("after-storm")
    wanted = {*acked, "seed", "after-storm"}

    async def all_delivered() -> bool:
        return wanted <= {r.json["connectionId"] for r in receiver.received}

    await eventually(all_delivered, f"webhooks for {len(wanted)} creations", DELIVERY_SECONDS)

    # The re-check runner stamps the seed connection again, and the flushers write read times.
    async def rechecked() -> bool:
        stamped = await events_backend.db.fetchval(
            """SELECT c.verify_time FROM connections c JOIN environments e
               ON e.id = c.environment_id WHERE e.name = $1 AND c.connection_id = 'seed'""",
            account.environment,
        )
        return stamped is not None and stamped > storm_over

    async def read_time_flushed() -> bool:
        fetched = await events_backend.db.fetchval(
            """SELECT f.last_fetch_time FROM connection_fetches f JOIN connections c USING (id)
               JOIN environments e ON e.id = c.environment_id
               WHERE e.name = $1 AND c.connection_id = 'seed'""",
            account.environment,
        )
        return fetched is not None and fetched > storm_over

    await eventually(rechecked, "the re-check runner", RECOVERY_SECONDS)
    await eventually(read_time_flushed, "the connection read-time flusher", RECOVERY_SECONDS)

    # Event clean-up and connect-session purge: rows made old behind the server's back go.
    await events_backend.db.execute(
        """UPDATE connection_events SET event_time = now() - interval '2 hours'
           WHERE environment = $1 AND connection_id = 'after-storm'""",
        account.environment,
    )
    session = await sgrpc.ConnectSessionServiceStub(account.channel).CreateConnectSession(
        spb.CreateConnectSessionRequest(end_user=rpb.EndUser(id="u-1")),
        metadata=account.metadata,
        timeout=RPC_TIMEOUT,
    )
    await events_backend.db.execute(
        "UPDATE connect_sessions SET expire_time = now() - interval '2 days' WHERE id = $1",
        uuid.UUID(session.session_id),
    )

    async def event_purged() -> bool:
        left = await events_backend.db.fetchval(
            """SELECT count(*) FROM connection_events
               WHERE environment = $1 AND connection_id = 'after-storm'""",
            account.environment,
        )
        return bool(left == 0)

    async def session_purged() -> bool:
        left = await events_backend.db.fetchval(
            "SELECT count(*) FROM connect_sessions WHERE id = $1", uuid.UUID(session.session_id)
        )
        return bool(left == 0)

    await eventually(event_purged, "the event clean-up", RECOVERY_SECONDS)
    await eventually(session_purged, "the connect-session purge", RECOVERY_SECONDS)

    # No duty ended on the way (each would have logged "background duty stopped").
    assert [task.get_name() for task in tasks if task.done()] == []


async def revocation_arrives_by_announcement(
    running: RunningServer, elsewhere: Backend, account: Account, change_takes_effect: Any
) -> None:
    """Revokes a key cached by ``running`` from another process's KeyService and checks it is
    refused within the bound while a second cached key stays cached: the caches stayed trusted
    (a lost or late listener clears them), so the announcement, not a bypass, did it. Repeated
    if the listener hiccuped meanwhile (a loaded machine), failing after three tries."""
    keys = key_service(elsewhere)
    assert account.channel is not None
    stub = igrpc.IntegrationServiceStub(account.channel)

    async def works(token: str) -> bool:
        try:
            await stub.ListIntegrations(
                ipb.ListIntegrationsRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=RPC_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
            return False
        return True

    for _ in range(3):
        revoked, record = await keys.create_key(account.environment, ALL_SCOPES)
        control, _ = await keys.create_key(account.environment, ALL_SCOPES)
        assert await works(revoked) and await works(control)
        cached = running.keys.authenticate_cached
        if cached(revoked) is None or cached(control) is None:
            continue  # not cached: the listener is late right now
        await keys.revoke_key(record.key_id)
        since = time.monotonic()

        async def refused(token: str = revoked) -> bool:
            return not await works(token)

        await change_takes_effect(refused, since, "revocation after the storm")
        if cached(control) is not None:
            return
    raise AssertionError("the change listener never stayed trusted for one revocation")
