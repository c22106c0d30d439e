"""WatchConnections over a real server: order, filters, resume tokens, heartbeats, limits,
isolation and shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from credbroker.app import start_server
from credbroker.domain.models import Scope
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import connection_service_pb2_grpc as cgrpc
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

READ_TIMEOUT = 10.0


class Watcher:
    """One WatchConnections call, read message by message with a timeout."""

    def __init__(self, stub: Any, metadata: Any, request: cpb.WatchConnectionsRequest) -> None:
        self.call = stub.WatchConnections(request, metadata=metadata)

    async def next(self) -> cpb.WatchConnectionsResponse:
        message = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
        assert message is not grpc.aio.EOF, "the stream ended"
        return message  # type: ignore[no-any-return]

    async def next_event(self) -> cpb.WatchConnectionsResponse:
        while True:
            message = await self.next()
            if message.HasField("event"):
                return message

    async def error(self) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                await self.next()
        return caught.value

    def cancel(self) -> None:
        self.call.cancel()


async def _integration(tenant: Any, integration_id: str) -> None:
    await tenant.integrations.CreateIntegration(
        ipb.CreateIntegrationRequest(
            integration=rpb.Integration(integration_id=integration_id, provider="openai")
        ),
        metadata=tenant.metadata,
    )


async def _create(tenant: Any, integration_id: str, connection_id: str) -> Any:
    return await tenant.connections.CreateConnection(
        cpb.CreateConnectionRequest(
            connection=rpb.Connection(
                integration_id=integration_id,
                connection_id=connection_id,
                credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-watch")),
                tags={"end_user_id": connection_id},
            ),
            skip_verification=True,
        ),
        metadata=tenant.metadata,
    )


async def _replace(tenant: Any, integration_id: str, connection_id: str) -> None:
    await tenant.connections.UpdateConnection(
        cpb.UpdateConnectionRequest(
            connection=rpb.Connection(
                integration_id=integration_id,
                connection_id=connection_id,
                credentials=rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key="sk-new")),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["credentials"]),
            skip_verification=True,
        ),
        metadata=tenant.metadata,
    )


async def _delete(tenant: Any, integration_id: str, connection_id: str) -> None:
    await tenant.connections.DeleteConnection(
        cpb.DeleteConnectionRequest(integration_id=integration_id, connection_id=connection_id),
        metadata=tenant.metadata,
    )


@asynccontextmanager
async def watching(tenant: Any, **request: Any) -> AsyncIterator[Watcher]:
    watcher = Watcher(tenant.connections, tenant.metadata, cpb.WatchConnectionsRequest(**request))
    try:
        yield watcher
    finally:
        watcher.cancel()


async def test_events_arrive_in_order_with_their_fields(tenant: Any) -> None:
    await _integration(tenant, "openai-prod")
    async with watching(tenant) as watcher:
        first = await watcher.next()
        assert not first.HasField("event") and first.resume_token.isdigit()
        await _create(tenant, "openai-prod", "user-1")
        await _replace(tenant, "openai-prod", "user-1")
        await _delete(tenant, "openai-prod", "user-1")
        events = [await watcher.next_event() for _ in range(3)]
    assert [e.event.event_type for e in events] == [
        "connection.created",
        "connection.credentials_replaced",
        "connection.deleted",
    ]
    assert [e.event.operation for e in events] == ["creation", "override", "deletion"]
    tokens = [int(e.resume_token) for e in events]
    assert tokens == sorted(tokens) and int(first.resume_token) < tokens[0]
    event = events[0].event
    assert event.environment == tenant.environment
    assert (event.integration_id, event.connection_id) == ("openai-prod", "user-1")
    assert event.provider == "openai"
    assert event.auth_mode == rpb.AUTH_MODE_API_KEY
    assert dict(event.tags) == {"end_user_id": "user-1"}
    assert event.success and not event.HasField("error")
    assert len({e.event.event_id for e in events}) == 3
    assert "sk-watch" not in str(events) and "sk-new" not in str(events)


async def test_filters_by_integration_and_event_type(tenant: Any) -> None:
    await _integration(tenant, "a")
    await _integration(tenant, "b")
    async with (
        watching(tenant, integration_id="b") as by_integration,
        watching(tenant, event_types=["connection.deleted"]) as by_type,
    ):
        await by_integration.next()
        await by_type.next()
        await _create(tenant, "a", "x")
        await _create(tenant, "b", "y")
        await _delete(tenant, "a", "x")
        got = await by_integration.next_event()
        assert (got.event.integration_id, got.event.event_type) == ("b", "connection.created")
        got = await by_type.next_event()
        assert (got.event.integration_id, got.event.event_type) == ("a", "connection.deleted")


async def test_resume_after_a_token_misses_nothing(tenant: Any) -> None:
    await _integration(tenant, "openai-prod")
    async with watching(tenant) as watcher:
        start = (await watcher.next()).resume_token
        await _create(tenant, "openai-prod", "one")
        first = await watcher.next_event()
    # Disconnected: changes made meanwhile are picked up from the last token.
    await _create(tenant, "openai-prod", "two")
    await _create(tenant, "openai-prod", "three")
    async with watching(tenant, start_after=first.resume_token) as watcher:
        await watcher.next()
        names = [(await watcher.next_event()).event.connection_id for _ in range(2)]
    assert names == ["two", "three"]
    async with watching(tenant, start_after=start) as watcher:
        await watcher.next()
        names = [(await watcher.next_event()).event.connection_id for _ in range(3)]
    assert names == ["one", "two", "three"]


async def test_other_environments_are_invisible(make_tenant: Any) -> None:
    mine, theirs = await make_tenant(), await make_tenant()
    await _integration(mine, "openai-prod")
    await _integration(theirs, "openai-prod")
    async with watching(mine) as watcher:
        await watcher.next()
        await _create(theirs, "openai-prod", "theirs")
        await _create(mine, "openai-prod", "mine")
        got = await watcher.next_event()
    assert got.event.connection_id == "mine" and got.event.environment == mine.environment


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"start_after": "abc"}, "start_after"),
        ({"start_after": "9" * 19}, "start_after"),
        ({"start_after": "²"}, "start_after"),
        ({"event_types": ["connection.created", "connection.exploded"]}, "event_types[1]"),
        ({"integration_id": "bad id"}, "integration_id"),
    ],
)
async def test_invalid_requests_name_the_field(
    tenant: Any, request_fields: dict[str, Any], field: str
) -> None:
    async with watching(tenant, **request_fields) as watcher:
        error = await watcher.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")


async def test_a_token_before_purged_events_is_refused(tenant: Any, backend: Any) -> None:
    await _integration(tenant, "openai-prod")
    await _create(tenant, "openai-prod", "old")
    environment_id = (await tenant.keys.environment(tenant.environment)).id
    await backend.db.execute(
        "INSERT INTO connection_event_purges VALUES ($1, 1000000000000)", environment_id
    )
    async with watching(tenant, start_after="5") as watcher:
        error = await watcher.error()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "RESUME_TOKEN_EXPIRED" in str(error.trailing_metadata())


async def test_streams_per_key_are_bounded_and_released(tenant: Any, settings: Any) -> None:
    limit = settings.watch_streams_per_key
    metadata = await tenant.key_with(Scope.CONNECTIONS_READ)
    open_watchers = [
        Watcher(tenant.connections, metadata, cpb.WatchConnectionsRequest()) for _ in range(limit)
    ]
    try:
        for watcher in open_watchers:
            await watcher.next()
        extra = Watcher(tenant.connections, metadata, cpb.WatchConnectionsRequest())
        error = await extra.error()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "TOO_MANY_WATCH_STREAMS" in str(error.trailing_metadata())
        # Another key of the same environment is not affected.
        other = Watcher(tenant.connections, tenant.metadata, cpb.WatchConnectionsRequest())
        await other.next()
        other.cancel()
        open_watchers[0].cancel()
        deadline = time.monotonic() + 5
        while True:  # the server notices the cancellation asynchronously
            again = Watcher(tenant.connections, metadata, cpb.WatchConnectionsRequest())
            try:
                await again.next()
                open_watchers.append(again)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        for watcher in open_watchers:
            watcher.cancel()


async def test_unauthenticated_watch_holds_no_slot(
    channel: grpc.aio.Channel, settings: Any
) -> None:
    stub = cgrpc.ConnectionServiceStub(channel)
    for _ in range(settings.watch_max_streams + 5):
        watcher = Watcher(stub, (("authorization", "Bearer nope"),), cpb.WatchConnectionsRequest())
        assert (await watcher.error()).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_heartbeats_advance_past_filtered_events_and_shutdown_ends_streams(
    settings_factory: Any, backend: Any, keyring: Any, tenant: Any
) -> None:
    running = await start_server(settings_factory(watch_heartbeat=0.2), backend, keyring)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = cgrpc.ConnectionServiceStub(channel)
            await _integration(tenant, "openai-prod")
            request = cpb.WatchConnectionsRequest(event_types=["connection.deleted"])
            watcher = Watcher(stub, tenant.metadata, request)
            first = await watcher.next()
            started = time.monotonic()
            beat = await watcher.next()
            assert not beat.HasField("event") and beat.resume_token == first.resume_token
            assert 0.1 < time.monotonic() - started < 2.0
            await _create(tenant, "openai-prod", "quiet")  # filtered out
            while beat.resume_token == first.resume_token:
                beat = await watcher.next()
                assert not beat.HasField("event")
            # Resuming from the heartbeat's token skips the filtered event, without a filter too.
            resumed = Watcher(
                stub, tenant.metadata, cpb.WatchConnectionsRequest(start_after=beat.resume_token)
            )
            await resumed.next()
            await _delete(tenant, "openai-prod", "quiet")
            assert (await resumed.next_event()).event.event_type == "connection.deleted"
            assert (await watcher.next_event()).event.event_type == "connection.deleted"
            stopping = asyncio.create_task(running.stop(5))
            for stream in (watcher, resumed):
                error = await stream.error()
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert "SHUTTING_DOWN" in str(error.trailing_metadata())
            await stopping
    finally:
        await running.stop(0)


async def test_watch_streams_are_capped_per_address_and_aged(
    settings_factory: Any, backend: Any, keyring: Any, tenant: Any
) -> None:
    """Issue 9 (review of finding 3): WatchConnections, not only Health/Watch, has a per-address
    cap (whatever the key) and an age; streams that age out end with OK and give their slots
    back, so no key holds streams for long or without bound."""
    settings = settings_factory(watch_streams_per_peer=3, watch_max_age=1.5, watch_heartbeat=0.3)
    running = await start_server(settings, backend, keyring)
    watchers: list[Watcher] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = cgrpc.ConnectionServiceStub(channel)
            first_key = await tenant.key_with(Scope.CONNECTIONS_READ)
            second_key = await tenant.key_with(Scope.CONNECTIONS_READ)
            started = time.monotonic()
            for metadata in (first_key, first_key, second_key):
                watchers.append(Watcher(stub, metadata, cpb.WatchConnectionsRequest()))
                await watchers[-1].next()
            for metadata in (first_key, second_key):  # per address, not per key
                refused = Watcher(stub, metadata, cpb.WatchConnectionsRequest())
                error = await asyncio.wait_for(refused.error(), 5)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "TOO_MANY_WATCH_STREAMS" in str(error.trailing_metadata())
            for watcher in watchers:  # heartbeats until the age limit, then a clean end
                while (message := await asyncio.wait_for(watcher.call.read(), 5)) is not (
                    grpc.aio.EOF
                ):
                    assert not message.HasField("event")
                assert await watcher.call.code() == grpc.StatusCode.OK
            assert 1.4 < time.monotonic() - started < 4.0
            limits = running.server_limits
            assert limits is not None and limits.authenticated_streams == 0
            again = Watcher(stub, first_key, cpb.WatchConnectionsRequest())
            await again.next()
            again.cancel()
    finally:
        for watcher in watchers:
            watcher.cancel()
        await running.stop(0)


async def test_a_revoked_key_loses_its_open_watch_stream(
    settings_factory: Any, backend: Any, keyring: Any, tenant: Any
) -> None:
    """An open stream re-checks its key at its next message (a heartbeat at the latest)."""
    running = await start_server(settings_factory(watch_heartbeat=0.3), backend, keyring)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = cgrpc.ConnectionServiceStub(channel)
            token, record = await tenant.keys.create_key(
                tenant.environment, frozenset({Scope.CONNECTIONS_READ})
            )
            watcher = Watcher(
                stub, (("authorization", f"Bearer {token}"),), cpb.WatchConnectionsRequest()
            )
            await watcher.next()
            await watcher.next()  # a heartbeat: the stream is up
            await tenant.keys.revoke_key(record.key_id)
            revoked = time.monotonic()
            error = await asyncio.wait_for(watcher.error(), 5)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() - revoked < 3.0
            limits = running.server_limits
            assert limits is not None
            for _ in range(100):  # the slot is given back as the stream ends
                if limits.authenticated_streams == 0:
                    break
                await asyncio.sleep(0.02)
            assert limits.authenticated_streams == 0
    finally:
        await running.stop(0)
