"""Listens for the change announcements of migrations 0005 and 0011 on a dedicated connection.

While the listener is not connected (start-up, or after the database dropped it) caches must
not be trusted: :attr:`ChangeListener.healthy` is False and every subscriber was told to clear.
The listener reconnects by itself with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from credbroker import background
from credbroker.background import Outage

log = structlog.get_logger("credbroker.changes")

CHANNEL = "credbroker_changes"
# Caches are trusted only while the listening connection answered a ping sent within this many
# seconds, which bounds how late a revocation can take effect, even when that connection stalls.
LIVENESS_SECONDS = 1.0


class ChangeListener:
    def __init__(
        self, dsn: str, *, retry_seconds: float = 1.0, liveness_seconds: float = LIVENESS_SECONDS
    ) -> None:
        self._dsn = dsn
        self._retry_seconds = retry_seconds
        self._liveness = liveness_seconds
        # Monotonic time up to which delivery is proven: when the last answered ping was sent
        # (or the connection was made).
        self._alive_at = 0.0
        self._subscribers: list[tuple[Callable[[list[str]], None], Callable[[], None]]] = []
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """Connected, and a ping on the listening connection sent within the last
        ``liveness_seconds`` was answered (which delivered every announcement committed before
        it was sent): a change committed elsewhere reaches every call that starts more than
        ``liveness_seconds`` later, and a stalled connection makes the caches bypassed after
        that bound, not after a TCP or ping timeout."""
        connection = self._connection
        if connection is None or connection.is_closed():
            return False
        return time.monotonic() - self._alive_at <= self._liveness

    def subscribe(
        self, on_change: Callable[[list[str]], None], on_reset: Callable[[], None]
    ) -> None:
        """``on_change`` gets a payload split on '|'; ``on_reset`` means "forget everything"."""
        self._subscribers.append((on_change, on_reset))

    async def start(self) -> None:
        """Connects once (raising if the database is unreachable), then keeps reconnecting."""
        await self._connect()
        self._task = background.start("change listener", self._supervise())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
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

    def _terminated(self, connection: Any) -> None:
        if self._connection is not None and connection is not self._connection:
            return  # the late notice of a connection already replaced
        self._connection = None
        self._reset_all()
        self._lost.set()

    async def _ping(self) -> None:
        """Proves the connection still delivers (see :attr:`healthy`); a connection that stays
        silent past the retry bound is dropped and reconnected.

        PostgreSQL sends a listening session its pending announcements before it answers the
        session's next query, so an answer proves delivery of everything committed before the
        query was *sent*: that moment, not the answer's, is when the connection was last known
        to be live. (Counting from the answer would stretch the revocation bound by the length
        of a slow round trip.)"""
        connection = self._connection
        if connection is None:
            return
        sent = time.monotonic()
        try:
            await connection.fetchval("SELECT 1", timeout=max(self._retry_seconds * 2, 0.1))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            connection.terminate()
            self._terminated(connection)
            return
        if time.monotonic() - self._alive_at > self._liveness:
            self._reset_all()  # entries cached before the stall: start over
        self._alive_at = max(self._alive_at, sent)

    async def _connect(self) -> None:
        connection = await asyncpg.connect(
            self._dsn, timeout=5, server_settings={"application_name": "credbroker-listener"}
        )
        try:
            await connection.add_listener(CHANNEL, self._dispatch)
        except BaseException:
            connection.terminate()
            raise
        connection.add_termination_listener(self._terminated)
        # Anything cached before this point may have missed announcements.
        self._reset_all()
        self._connection = connection
        self._alive_at = time.monotonic()
        self._lost.clear()

    async def _supervise(self) -> None:
        """Pings three times per liveness period; reconnects (with back-off) when the connection
        is lost. No failure ends this loop: a round that fails is logged once per outage and
        retried."""
        outage = Outage(
            "change listener", first_delay=self._retry_seconds, max_delay=self._retry_seconds * 5
        )
        while True:
            try:
                if self._connection is None:
                    await self._connect()
                    outage.recovered()
                    log.info("change listener reconnected")
                    continue
                try:
                    await asyncio.wait_for(self._lost.wait(), timeout=self._liveness / 3)
                except TimeoutError:
                    await self._ping()
                    continue
                log.warning("change listener lost its connection; caches bypassed until it is back")
                self._connection = None
                await asyncio.sleep(self._retry_seconds)
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any failure
                await asyncio.sleep(outage.failed(exc))
