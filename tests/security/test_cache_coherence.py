"""Caches stay coherent across servers: a change made through one server is seen by another
within the announcement delay, revocation included, and a lost announcement channel makes
servers bypass their caches instead of serving stale data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from credbroker.app import RunningServer, start_server
from credbroker.bootstrap import open_backend
from credbroker.domain import secret_keys
from credbroker.domain.models import ALL_SCOPES
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cgrpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc
from credbroker.v1 import resources_pb2 as rpb

RECONNECT_SECONDS = 15.0  # the listener retries after 1 s, then backs off


@pytest_asyncio.fixture
async def second_server(settings_factory: Any, keyring: Any) -> AsyncIterator[RunningServer]:
    """Another server process-equivalent: its own pool, caches and change listener."""
    settings = settings_factory()
    backend = await open_backend(settings)
    running = await start_server(settings, backend, keyring)
    try:
        yield running
    finally:
        await running.stop(0)
        await backend.close()


async def _seed(tenant: Any, api_key: str) -> None:
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id="openai", provider="openai")
        ),
        metadata=tenant.metadata,
    )
    await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id="openai",
                connection_id="c1",
                credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=api_key)),
            )
        ),
        metadata=tenant.metadata,
    )


ACCESS = cpb.AccessCredentialsRequest(integration_id="openai", connection_id="c1")


async def test_credential_update_reaches_the_other_server(
    tenant: Any, second_server: RunningServer, change_takes_effect: Any
) -> None:
    await _seed(tenant, "sk-old")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second_server.port}") as channel:
        other: Any = cgrpc.ConnectionServiceStub(channel)
        first = await other.AccessCredentials(ACCESS, metadata=tenant.metadata)
        assert first.credentials.api_key.api_key == "sk-old"  # now cached there
        await tenant.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="c1",
                    credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-new")),
                )
            ),
            metadata=tenant.metadata,
        )
        changed = time.monotonic()

        async def sees_new() -> bool:
            reply = await other.AccessCredentials(ACCESS, metadata=tenant.metadata)
            value = reply.credentials.api_key.api_key
            assert value in {"sk-old", "sk-new"}, value
            return bool(value == "sk-new")

        await change_takes_effect(sees_new, changed, "credential update")


async def test_revocation_reaches_the_other_server(
    tenant: Any, keys: Any, second_server: RunningServer, change_takes_effect: Any
) -> None:
    await _seed(tenant, "sk-1")
    token, record = await keys.create_key(tenant.environment, ALL_SCOPES)
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second_server.port}") as channel:
        other: Any = cgrpc.ConnectionServiceStub(channel)
        await other.AccessCredentials(ACCESS, metadata=metadata)  # key now cached there
        await keys.revoke_key(record.key_id)  # through another process
        changed = time.monotonic()

        async def refused() -> bool:
            try:
                await other.AccessCredentials(ACCESS, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
                return True
            return False

        await change_takes_effect(refused, changed, "revocation")


async def test_a_key_created_elsewhere_is_accepted_at_once_after_being_refused(
    tenant: Any,
    keys: Any,
    second_server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    change_takes_effect: Any,
) -> None:
    """A key id presented before its key existed is cached as unknown on that server; creating
    the key in another process (here: without that server's cache, as the CLI does) must drop
    that entry through the database's announcement, not leave the key refused for the negative
    cache's lifetime (10 s)."""
    await _seed(tenant, "sk-1")
    token, parsed = secret_keys.generate_key()
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second_server.port}") as channel:
        other: Any = cgrpc.ConnectionServiceStub(channel)

        async def accepted() -> bool:
            try:
                await other.AccessCredentials(ACCESS, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                return False
            return True

        assert not await accepted()  # unknown: now cached negatively on the second server
        monkeypatch.setattr(secret_keys, "generate_key", lambda: (token, parsed))
        await keys.create_key(tenant.environment, ALL_SCOPES)
        took = await change_takes_effect(accepted, time.monotonic(), "key creation")
        print(f"new key accepted by a call started {took * 1e3:.0f} ms after its creation")


async def test_deleted_connection_is_gone_on_the_other_server(
    tenant: Any, second_server: RunningServer, change_takes_effect: Any
) -> None:
    await _seed(tenant, "sk-1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second_server.port}") as channel:
        other: Any = cgrpc.ConnectionServiceStub(channel)
        await other.AccessCredentials(ACCESS, metadata=tenant.metadata)
        await tenant.connections.DeleteConnection(
            cpb.DeleteConnectionRequest(integration_id="openai", connection_id="c1"),
            metadata=tenant.metadata,
        )
        changed = time.monotonic()

        async def gone() -> bool:
            try:
                await other.AccessCredentials(ACCESS, metadata=tenant.metadata)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error
                return True
            return False

        await change_takes_effect(gone, changed, "deletion")


async def test_lost_listener_bypasses_the_cache(
    tenant: Any, backend: Any, second_server: RunningServer, change_takes_effect: Any
) -> None:
    """Kill the other server's announcement connection, change the row behind its back (with
    announcements unheard), and the other server must still answer with fresh data."""
    await _seed(tenant, "sk-before")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second_server.port}") as channel:
        other: Any = cgrpc.ConnectionServiceStub(channel)
        await other.AccessCredentials(ACCESS, metadata=tenant.metadata)
        listener = second_server.listener
        assert listener is not None and listener.healthy
        await backend.db.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE application_name = 'credbroker-listener' AND pid <> pg_backend_pid()"""
        )
        await tenant.connections.UpdateConnection(
            cpb.UpdateConnectionRequest(
                connection=rpb.Connection(
                    integration_id="openai",
                    connection_id="c1",
                    credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-after")),
                )
            ),
            metadata=tenant.metadata,
        )
        changed = time.monotonic()

        async def fresh() -> bool:
            reply = await other.AccessCredentials(ACCESS, metadata=tenant.metadata)
            value = reply.credentials.api_key.api_key
            assert value in {"sk-before", "sk-after"}, value
            return bool(value == "sk-after")

        await change_takes_effect(fresh, changed, "update with the listener lost")

        deadline = time.monotonic() + RECONNECT_SECONDS  # the listener reconnects by itself
        while time.monotonic() < deadline:
            if listener.healthy:
                break
            await asyncio.sleep(0.05)
        assert listener.healthy, f"the listener did not reconnect within {RECONNECT_SECONDS} s"


async def test_caches_can_be_turned_off(settings_factory: Any, keyring: Any) -> None:
    settings = settings_factory(cache_ttl=0.0)
    backend = await open_backend(settings)
    running = await start_server(settings, backend, keyring)
    try:
        # The change listener still runs (it wakes Watch streams and webhook delivery).
        assert running.listener is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub: Any = igrpc.IntegrationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.ListIntegrations(ipb.ListIntegrationsRequest())
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await running.stop(0)
        await backend.close()


async def test_integration_writes_of_the_serving_process_take_effect_on_the_next_call(
    stalled_listener_server: Any, tenant: Any
) -> None:
    """Deleting an integration (with its connections) through the server that serves the next
    call drops its cached connections in the write path: the next AccessCredentials is
    NOT_FOUND without waiting for the announcement, which cannot arrive here."""
    channel = stalled_listener_server.channel
    integrations: Any = igrpc.IntegrationServiceStub(channel)
    connections: Any = cgrpc.ConnectionServiceStub(channel)
    await _seed(tenant, "sk-1")
    reply = await connections.AccessCredentials(ACCESS, metadata=tenant.metadata)
    assert reply.credentials.api_key.api_key == "sk-1"  # cached now
    async with stalled_listener_server.announcements_stalled():
        await integrations.DeleteIntegration(
            ipb.DeleteIntegrationRequest(integration_id="openai", force=True),
            metadata=tenant.metadata,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await connections.AccessCredentials(ACCESS, metadata=tenant.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
