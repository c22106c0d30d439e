"""Watch resumes across a server restart (a killed process, a new one on another port): the
last resume token received picks up every event committed meanwhile, none twice."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from credbroker.v1 import connection_service_pb2 as cpb

from .conftest import READ_TIMEOUT, server_environment


async def _next_event(call: Any) -> cpb.WatchConnectionsResponse:
    while True:
        message = await asyncio.wait_for(call.read(), READ_TIMEOUT)
        assert message is not grpc.aio.EOF
        if message.HasField("event"):
            return message  # type: ignore[no-any-return]


async def test_watch_resumes_across_a_server_restart(
    servers: Any, account: Any, events_database_url: str, keyring: Any
) -> None:
    env = server_environment(events_database_url, keyring)
    first = servers.start(env)
    await account.use(first)
    await account.integration()
    call = account.connections.WatchConnections(
        cpb.WatchConnectionsRequest(), metadata=account.metadata
    )
    await asyncio.wait_for(call.read(), READ_TIMEOUT)  # the opening heartbeat
    await account.create("before-1")
    await account.create("before-2")
    received = [await _next_event(call), await _next_event(call)]
    token = received[-1].resume_token

    first.kill9()
    error = None
    try:
        await asyncio.wait_for(call.read(), READ_TIMEOUT)
    except grpc.aio.AioRpcError as caught:
        error = caught
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE

    second = servers.start(env)
    await account.use(second)
    await account.create("while-watcher-away")  # committed before the watcher is back
    call = account.connections.WatchConnections(
        cpb.WatchConnectionsRequest(start_after=token), metadata=account.metadata
    )
    await account.create("after-restart")
    resumed = [await _next_event(call), await _next_event(call)]
    call.cancel()
    assert [m.event.connection_id for m in received + resumed] == [
        "before-1",
        "before-2",
        "while-watcher-away",
        "after-restart",
    ]
    assert len({m.event.event_id for m in received + resumed}) == 4
