"""Fixtures for the SDK tests: the session server's target, keys with fewer scopes, addresses
where nothing answers, and a recorder for the retry waits.

The server runs on the test's event loop, so the synchronous client must run in a worker thread
(``await asyncio.to_thread(...)``); a blocking call on the loop thread would deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio

from credbroker.client import AsyncCredBroker, CredBroker, _retry
from credbroker.domain.models import Scope


@pytest.fixture
def target(server: Any) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def limited_key(tenant: Any) -> Callable[..., Awaitable[str]]:
    """A secret key of the tenant's environment holding only the given scopes."""

    async def create(*scopes: Scope) -> str:
        metadata: tuple[tuple[str, str], ...] = await tenant.key_with(*scopes)
        return metadata[0][1].removeprefix("Bearer ")

    return create


@pytest.fixture
def dead_target() -> str:
    """A loopback port where nothing listens (connections are refused: UNAVAILABLE)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest_asyncio.fixture
async def silent_target() -> AsyncIterator[str]:
    """A port that accepts TCP connections and never answers: calls can only time out."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    listener = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        listener.close()
        for writer in held:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await listener.wait_closed()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replaces the retry waits (sync and async) by a recorder that returns at once."""
    recorded: list[float] = []

    def record(delay: float) -> None:
        recorded.append(delay)

    async def record_async(delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr(_retry, "sleep", record)
    monkeypatch.setattr(_retry, "async_sleep", record_async)
    return recorded


@pytest.fixture(params=["sync", "async"])
def invoke(request: pytest.FixtureRequest, target: str) -> Callable[..., Awaitable[Any]]:
    """Calls one client method with a fresh client of either flavour (the test runs once per
    flavour): ``await invoke(key, "get_connection", "i", "c", timeout=1)``. ``target=`` and
    ``options=`` (constructor keywords) configure the client; list results come back as lists.
    The sync client runs in a worker thread."""
    flavour: str = request.param

    async def call(
        key: str,
        method: str,
        *args: Any,
        target: str = target,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if flavour == "async":
            async with AsyncCredBroker(target, key, **(options or {})) as client:
                result = getattr(client, method)(*args, **kwargs)
                if inspect.isawaitable(result):
                    return await result
                return [item async for item in result]

        def blocking() -> Any:
            with CredBroker(target, key, **(options or {})) as client:
                result = getattr(client, method)(*args, **kwargs)
                return list(result) if isinstance(result, Iterator) else result

        return await asyncio.to_thread(blocking)

    return call
