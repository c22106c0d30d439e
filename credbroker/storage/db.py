"""The connection pool and the one place that turns connectivity failures into UnavailableError."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from credbroker.domain.errors import UnavailableError

# Failures that mean "the database cannot be reached or is overloaded right now": retryable.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08: the connection failed
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.InterfaceError,
)


@dataclass(frozen=True)
class PoolSettings:
    min_size: int = 2
    max_size: int = 10
    acquire_timeout: float = 2.0
    command_timeout: float = 5.0


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool ``reset`` hook: nothing to undo. credbroker sets no session state on pooled
    connections (no SET, LISTEN or session advisory lock outlives a checkout), so asyncpg's
    default reset, a round trip on every release, is skipped."""


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def create_pool(dsn: str, settings: PoolSettings) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.min_size,
            max_size=settings.max_size,
            command_timeout=settings.command_timeout,
            init=_init_connection,
            reset=_keep_session,
            server_settings={
                "application_name": "credbroker",
                "statement_timeout": str(int(settings.command_timeout * 1000)),
                "idle_in_transaction_session_timeout": "10000",
            },
        )
    except _UNAVAILABLE as exc:
        raise UnavailableError(f"database unreachable ({type(exc).__name__})") from exc
    assert pool is not None
    return pool


class Database:
    """Wraps the pool: bounded acquire, and connectivity errors become UnavailableError."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float) -> None:
        self.pool = pool
        self._acquire_timeout = acquire_timeout

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            connection = await self._acquire()
            try:
                yield cast(asyncpg.Connection, connection)
            except asyncpg.exceptions.InternalClientError as exc:
                # The connection's protocol state is broken (seen after a database restart,
                # with an operation left half done): drop it from the pool.
                connection.terminate()
                raise UnavailableError("database connection in a bad state") from exc
            finally:
                await self.pool.release(connection)
        except _UNAVAILABLE as exc:
            raise UnavailableError("database unavailable") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.connection() as connection, connection.transaction():
            yield connection

    async def _acquire(self) -> asyncpg.pool.PoolConnectionProxy[asyncpg.Record]:
        """A pool connection. With one idle, asyncpg's acquire returns at once and its timeout
        would only cost a task per query (``wait_for``), so it is skipped; otherwise bounded.
        The server refusing a new connection, whatever it says (not accepting connections,
        shutting down, too many clients, ...), means unavailable."""
        pool = self.pool
        try:
            if pool.get_idle_size():
                return await pool.acquire()
            return await pool.acquire(timeout=self._acquire_timeout)
        except asyncpg.PostgresError as exc:
            raise UnavailableError("database unavailable") from exc

    # One statement on a pooled connection, without the context managers' per-call cost, and
    # with the same failure handling as connection().

    async def _statement(self, kind: str, query: str, args: tuple[Any, ...]) -> Any:
        try:
            connection = await self._acquire()
            try:
                return await getattr(connection, kind)(query, *args)
            except asyncpg.exceptions.InternalClientError as exc:
                connection.terminate()  # broken protocol state: drop it from the pool
                raise UnavailableError("database connection in a bad state") from exc
            finally:
                await self.pool.release(connection)
        except _UNAVAILABLE as exc:
            raise UnavailableError("database unavailable") from exc

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return cast(list[asyncpg.Record], await self._statement("fetch", query, args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return cast(asyncpg.Record | None, await self._statement("fetchrow", query, args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._statement("fetchval", query, args)

    async def execute(self, query: str, *args: Any) -> str:
        return cast(str, await self._statement("execute", query, args))
