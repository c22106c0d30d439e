"""The audit_events table."""

from __future__ import annotations

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
        event_id = await self._db.fetchval(
            """INSERT INTO audit_events (request_id, environment_id, environment, key_id, method,
                   integration_id, connection_id, outcome)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
            record.request_id,
            record.principal.environment_id,
            record.principal.environment_name,
            record.principal.key_id,
            record.method,
            record.integration_id,
            record.connection_id,
            record.outcome,
        )
        return int(event_id)

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
