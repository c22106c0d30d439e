"""The audit_events table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from uuid import UUID

import asyncpg

from credbroker.domain.audit import AuditEvent, AuditRecord
from credbroker.storage.db import Database


def _event(row: asyncpg.Record) -> AuditEvent:
    return AuditEvent(
        event_id=row["id"],
        event_time=row["event_time"],
        request_id=row["request_id"],
        environment=row["environment"],
        key_id=row["key_id"],
        method=row["method"],
        integration_id=row["integration_id"],
        connection_id=row["connection_id"],
        outcome=row["outcome"],
    )


_INSERT = """INSERT INTO audit_events (request_id, environment_id, environment, key_id, method,
                   integration_id, connection_id, outcome)
               SELECT request_id, environment_id, environment, key_id, method, integration_id,
                      connection_id, outcome
               FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                           $6::text[], $7::text[], $8::text[])
                    WITH ORDINALITY AS r(request_id, environment_id, environment, key_id, method,
                                         integration_id, connection_id, outcome, position)
               ORDER BY position"""
_COLUMNS = (
    "request_id",
    "environment_id",
    "environment",
    "key_id",
    "method",
    "integration_id",
    "connection_id",
    "outcome",
)


def _columns(records: Sequence[AuditRecord]) -> list[list[Any]]:
    return [
        [r.request_id for r in records],
        [r.principal.environment_id for r in records],
        [r.principal.environment_name for r in records],
        [r.principal.key_id for r in records],
        [r.method for r in records],
        [r.integration_id for r in records],
        [r.connection_id for r in records],
        [r.outcome for r in records],
    ]


class AuditBatchWriter:
    """Writes batches of records on one connection held for as long as batches keep coming
    (a pool checkout and release per batch costs more than the batch's own statement)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def append_many(self, records: Sequence[AuditRecord]) -> list[int]:
        """Inserts the records in one statement (one commit); ids in the order given."""
        rows = await self._connection.fetch(_INSERT + " RETURNING id", *_columns(records))
        # ids come from one sequence in insertion order, and rows were inserted in `position`
        # order, so the sorted ids line up with the records.
        return sorted(int(row["id"]) for row in rows)

    async def store_many(self, records: Sequence[AuditRecord]) -> None:
        """Inserts the records in one statement (one commit), returning nothing."""
        await self._connection.execute(_INSERT, *_columns(records))


class PostgresAuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def batch_writer(self) -> AsyncIterator[AuditBatchWriter]:
        """A writer on a pooled connection, released (or dropped, if broken) on exit;
        connectivity failures raise UnavailableError (``Database.connection``)."""
        async with self._db.connection() as connection:
            yield AuditBatchWriter(connection)

    async def append(self, record: AuditRecord) -> int:
        return (await self.append_many([record]))[0]

    async def store(self, record: AuditRecord) -> None:
        async with self.batch_writer() as writer:
            await writer.store_many([record])

    async def append_many(self, records: Sequence[AuditRecord]) -> list[int]:
        """Inserts the records in one statement (one commit); ids in the order given."""
        async with self.batch_writer() as writer:
            return await writer.append_many(records)

    async def set_outcome(self, event_id: int, outcome: str, connection_id: str) -> None:
        await self._db.execute(
            """UPDATE audit_events
               SET outcome = $2, connection_id = CASE WHEN $3 = '' THEN connection_id ELSE $3 END
               WHERE id = $1""",
            event_id,
            outcome,
            connection_id,
        )

    async def list_after(
        self, environment_id: UUID | None, after: int, *, limit: int
    ) -> list[AuditEvent]:
        """Events newer than ``after``, oldest first (for following the trail)."""
        rows = await self._db.fetch(
            """SELECT * FROM audit_events
               WHERE ($1::uuid IS NULL OR environment_id = $1) AND id > $2
               ORDER BY id LIMIT $3""",
            environment_id,
            after,
            limit,
        )
        return [_event(r) for r in rows]

    async def list(
        self,
        environment_id: UUID | None,
        *,
        integration_id: str,
        connection_id: str,
        before: int | None,
        limit: int,
    ) -> list[AuditEvent]:
        """Newest first; ``environment_id`` None lists every environment (operator CLI only)."""
        rows = await self._db.fetch(
            """SELECT * FROM audit_events
               WHERE ($1::uuid IS NULL OR environment_id = $1)
                 AND ($2 = '' OR integration_id = $2)
                 AND ($3 = '' OR connection_id = $3)
                 AND ($4::bigint IS NULL OR id < $4)
               ORDER BY id DESC LIMIT $5""",
            environment_id,
            integration_id,
            connection_id,
            before,
            limit,
        )
        return [_event(r) for r in rows]


class GroupCommitAuditLog:
    """Batches concurrent appends into few INSERTs (one statement and one commit each).

    Up to ``max_in_flight`` batches are written at once: a record that arrives while every
    writer is waiting for its commit starts another writer (if one is left) instead of waiting
    for that commit before its own batch can begin, and PostgreSQL flushes the WAL of commits
    that arrive together once. More than one only pays where commits are slow (a remote or
    fsync-bound database): on one machine, each batch costs a socket write and read that wake
    the other side, so smaller batches cost more CPU per record on both sides (bench/cpu.py:
    2 in flight took about 1.4x the server's and 2x PostgreSQL's CPU per reveal of 1), and the
    default is 1 (CREDBROKER_AUDIT_BATCHES_IN_FLIGHT). A writer keeps one pooled connection
    while batches keep coming and returns it when none is pending. A batch asks PostgreSQL for
    event ids only when one of its records needs its id (:meth:`append`; reveals use
    :meth:`store`). Each call returns only once its own record is committed, and raises if
    its batch failed, so callers keep the fail-closed rule."""

    def __init__(
        self,
        inner: PostgresAuditLog,
        *,
        max_batch: int = 512,
        max_in_flight: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._inner = inner
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._on_batch = on_batch
        # (record, its waiter, whether it needs its event id)
        self._pending: list[tuple[AuditRecord, asyncio.Future[int], bool]] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._writing = 0  # writers that hold a batch (connecting or waiting for its commit)

    async def append(self, record: AuditRecord) -> int:
        return await self._enqueue(record, True)

    async def store(self, record: AuditRecord) -> None:
        await self._enqueue(record, False)

    def _enqueue(self, record: AuditRecord, numbered: bool) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future, numbered))
        writers = self._writers
        # A writer that holds no batch will take this record; else start one.
        if len(writers) == self._writing and len(writers) < self._max_in_flight:
            writers.add(asyncio.create_task(self._write_pending()))
        return future

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                holding = True
                try:
                    async with self._inner.batch_writer() as writer:
                        while True:
                            await self._write(writer, batch)
                            self._writing -= 1
                            holding = False
                            if not self._pending:
                                break
                            batch = self._take()
                            holding = True
                except BaseException as exc:
                    # No connection (the batch fails here), or the batch failed (its waiters
                    # were told) and the connection is given back, or dropped if broken: the
                    # next batch, if any, takes another one.
                    _fail(batch, exc)
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    if holding:
                        self._writing -= 1
        finally:
            # Leaves the set in the same step as it sees nothing pending (no await between):
            # an append after this starts a new writer rather than count on this one.
            task = asyncio.current_task()
            if task is not None:
                self._writers.discard(task)

    def _take(self) -> list[tuple[AuditRecord, asyncio.Future[int], bool]]:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._writing += 1
        return batch

    async def _write(
        self, writer: AuditBatchWriter, batch: list[tuple[AuditRecord, asyncio.Future[int], bool]]
    ) -> None:
        """Commits ``batch`` and tells its waiters; raises (having told them) if it failed."""
        records = [record for record, _, _ in batch]
        try:
            if any(numbered for _, _, numbered in batch):
                ids = await writer.append_many(records)
            else:
                await writer.store_many(records)
                ids = [0] * len(batch)
        except BaseException as exc:  # every waiter of the batch learns it failed
            _fail(batch, exc)
            raise
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for (_, future, _), event_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(event_id)

    async def set_outcome(self, event_id: int, outcome: str, connection_id: str) -> None:
        await self._inner.set_outcome(event_id, outcome, connection_id)

    async def list(
        self,
        environment_id: UUID | None,
        *,
        integration_id: str,
        connection_id: str,
        before: int | None,
        limit: int,
    ) -> list[AuditEvent]:
        return await self._inner.list(
            environment_id,
            integration_id=integration_id,
            connection_id=connection_id,
            before=before,
            limit=limit,
        )


def _fail(batch: list[tuple[AuditRecord, asyncio.Future[int], bool]], error: BaseException) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(
                error if isinstance(error, Exception) else RuntimeError("cancelled")
            )
