"""Listens for the change announcements of migration 0005 on a dedicated connection.

While the listener is not connected (start-up, or after the database dropped it) caches must
not be trusted: :attr:`ChangeListener.healthy` is False and every subscriber was told to clear.
The listener reconnects by itself with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger("credbroker.changes")

CHANNEL = "credbroker_changes"


class ChangeListener:
    def __init__(self, dsn: str, *, retry_seconds: float = 1.0) -> None:
        self._dsn = dsn
        self._retry_seconds = retry_seconds
        self._subscribers: list[tuple[Callable[[list[str]], None], Callable[[], None]]] = []
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    @property
    def healthy(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed()

    def subscribe(
        self, on_change: Callable[[list[str]], None], on_reset: Callable[[], None]
    ) -> None:
        """``on_change`` gets a payload split on '|'; ``on_reset`` means "forget everything"."""
        self._subscribers.append((on_change, on_reset))

    async def start(self) -> None:
        """Connects once (raising if the database is unreachable), then keeps reconnecting."""
        await self._connect()
        self._task = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=2)
        self._connection = None

    def _reset_all(self) -> None:
        for _, on_reset in self._subscribers:
            on_reset()

    def _dispatch(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        parts = str(payload).split("|")
        for on_change, _ in self._subscribers:
            on_change(parts)

    def _terminated(self, _connection: Any) -> None:
        self._connection = None
        self._reset_all()
        self._lost.set()

    async def _ping(self) -> None:
        """Detects a silently dead connection (announcements would be missed)."""
        connection = self._connection
        if connection is None:
            return
        try:
            await connection.fetchval("SELECT 1", timeout=self._retry_seconds * 2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            connection.terminate()
            self._terminated(connection)

    async def _connect(self) -> None:
        connection = await asyncpg.connect(
            self._dsn, timeout=5, server_settings={"application_name": "credbroker-listener"}
        )
        await connection.add_listener(CHANNEL, self._dispatch)
        connection.add_termination_listener(self._terminated)
        # Anything cached before this point may have missed announcements.
        self._reset_all()
        self._connection = connection
        self._lost.clear()

    async def _supervise(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=self._retry_seconds * 5)
            except TimeoutError:
                await self._ping()
                continue
            log.warning("change listener lost its connection; caches bypassed until it is back")
            while not self.healthy:
                await asyncio.sleep(self._retry_seconds)
                try:
                    await self._connect()
                    log.info("change listener reconnected")
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    continue
