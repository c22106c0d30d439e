"""The audit_events table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
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


class PostgresAuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, record: AuditRecord) -> int:
        return (await self.append_many([record]))[0]

    async def append_many(self, records: Sequence[AuditRecord]) -> list[int]:
        """Inserts the records in one statement (one commit); ids in the order given."""
        rows = await self._db.fetch(
            """INSERT INTO audit_events (request_id, environment_id, environment, key_id, method,
                   integration_id, connection_id, outcome)
               SELECT request_id, environment_id, environment, key_id, method, integration_id,
                      connection_id, outcome
               FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                           $6::text[], $7::text[], $8::text[])
                    WITH ORDINALITY AS r(request_id, environment_id, environment, key_id, method,
                                         integration_id, connection_id, outcome, position)
               ORDER BY position
               RETURNING id""",
            [r.request_id for r in records],
            [r.principal.environment_id for r in records],
            [r.principal.environment_name for r in records],
            [r.principal.key_id for r in records],
            [r.method for r in records],
            [r.integration_id for r in records],
            [r.connection_id for r in records],
            [r.outcome for r in records],
        )
        # ids come from one sequence in insertion order, and rows were inserted in `position`
        # order, so the sorted ids line up with the records.
        return sorted(int(row["id"]) for row in rows)

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
    default is 1 (CREDBROKER_AUDIT_BATCHES_IN_FLIGHT). Each ``append`` returns only once its own
    record is committed, and raises if its batch failed, so callers keep the fail-closed rule."""

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
        self._pending: list[tuple[AuditRecord, asyncio.Future[int]]] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._writing = 0  # writers waiting for their batch's commit

    async def append(self, record: AuditRecord) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        writers = self._writers
        # A writer that is not waiting for a commit will take this record; else start one.
        if len(writers) == self._writing and len(writers) < self._max_in_flight:
            writers.add(asyncio.create_task(self._write_pending()))
        return await future

    async def _write_pending(self) -> None:
        try:
            await self._write_batches()
        finally:
            # Leaves the set in the same step as it sees nothing pending (no await between):
            # an append after this starts a new writer rather than count on this one.
            self._writers.discard(asyncio.current_task())

    async def _write_batches(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._writing += 1
            try:
                ids = await self._inner.append_many([record for record, _ in batch])
            except BaseException as exc:  # every waiter of the batch learns it failed
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError("cancelled")
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            finally:
                self._writing -= 1
            if self._on_batch is not None:
                self._on_batch(len(batch))
            for (_, future), event_id in zip(batch, ids, strict=True):
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
