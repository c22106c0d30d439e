"""The connect_sessions table. Tokens never reach it: only their hashes."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from credbroker.domain.models import ConnectSession, ReconnectTarget
from credbroker.storage.connections import (
    end_user_from_json,
    end_user_to_json,
    organization_from_json,
    organization_to_json,
)
from credbroker.storage.db import Database

_COLUMNS = """s.id, s.environment_id, e.name AS environment_name, s.end_user, s.organization,
    s.tags, s.allowed_integrations, s.allowed_origins, s.integrations_config_defaults,
    s.reconnect_integration_id, s.connection_id, s.created_by, s.create_time, s.expire_time,
    s.consume_time, s.consumed_integration_id, s.failed_attempts"""
_FROM = "connect_sessions s JOIN environments e ON e.id = s.environment_id"


def _session(row: asyncpg.Record) -> ConnectSession:
    reconnect = None
    if row["reconnect_integration_id"] is not None:
        reconnect = ReconnectTarget(row["reconnect_integration_id"], row["connection_id"])
    return ConnectSession(
        id=row["id"],
        environment_id=row["environment_id"],
        environment_name=row["environment_name"],
        end_user=end_user_from_json(row["end_user"]),
        organization=organization_from_json(row["organization"]),
        tags=row["tags"],
        allowed_integrations=tuple(row["allowed_integrations"]),
        allowed_origins=tuple(row["allowed_origins"]),
        integrations_config_defaults=row["integrations_config_defaults"],
        reconnect=reconnect,
        connection_id=row["connection_id"],
        created_by=row["created_by"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        consume_time=row["consume_time"],
        consumed_integration_id=row["consumed_integration_id"],
        failed_attempts=row["failed_attempts"],
    )


class PostgresConnectSessionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, session: ConnectSession, token_hash: bytes) -> None:
        await self._db.execute(
            """INSERT INTO connect_sessions (id, environment_id, token_hash, end_user,
                   organization, tags, allowed_integrations, allowed_origins,
                   integrations_config_defaults, reconnect_integration_id, connection_id,
                   created_by, create_time, expire_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)""",
            session.id,
            session.environment_id,
            token_hash,
            end_user_to_json(session.end_user),
            organization_to_json(session.organization),
            dict(session.tags),
            list(session.allowed_integrations),
            list(session.allowed_origins),
            {k: dict(v) for k, v in session.integrations_config_defaults.items()},
            session.reconnect.integration_id if session.reconnect else None,
            session.connection_id,
            session.created_by,
            session.create_time,
            session.expire_time,
        )

    async def get(self, environment_id: UUID, id: UUID) -> ConnectSession | None:
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE s.environment_id = $1 AND s.id = $2",  # noqa: S608
            environment_id,
            id,
        )
        return _session(row) if row else None

    async def get_by_token_hash(self, token_hash: bytes) -> ConnectSession | None:
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE s.token_hash = $1",  # noqa: S608
            token_hash,
        )
        return _session(row) if row else None

    async def list(
        self, environment_id: UUID, *, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[ConnectSession]:
        after_time, after_id = after if after else (None, None)
        rows = await self._db.fetch(
            f"""SELECT {_COLUMNS} FROM {_FROM}
                WHERE s.environment_id = $1
                  AND ($2::timestamptz IS NULL OR (s.create_time, s.id) < ($2, $3::uuid))
                ORDER BY s.create_time DESC, s.id DESC LIMIT $4""",  # noqa: S608
            environment_id,
            after_time,
            after_id,
            limit,
        )
        return [_session(r) for r in rows]

    async def delete(self, environment_id: UUID, id: UUID) -> bool:
        status = await self._db.execute(
            "DELETE FROM connect_sessions WHERE environment_id = $1 AND id = $2",
            environment_id,
            id,
        )
        return status != "DELETE 0"

    async def begin_attempt(
        self, id: UUID, *, until: datetime, max_attempts: int
    ) -> ConnectSession | None:
        row = await self._db.fetchrow(
            f"""WITH claimed AS (
                    UPDATE connect_sessions SET attempt_until = $2
                    WHERE id = $1 AND consume_time IS NULL AND expire_time > now()
                      AND failed_attempts < $3
                      AND (attempt_until IS NULL OR attempt_until < now())
                    RETURNING *)
                SELECT {_COLUMNS} FROM claimed s
                JOIN environments e ON e.id = s.environment_id""",  # noqa: S608
            id,
            until,
            max_attempts,
        )
        return _session(row) if row else None

    async def end_attempt(self, id: UUID, *, failed: bool) -> None:
        await self._db.execute(
            """UPDATE connect_sessions
               SET attempt_until = NULL,
                   failed_attempts = failed_attempts + CASE WHEN $2 THEN 1 ELSE 0 END
               WHERE id = $1""",
            id,
            failed,
        )

    async def consume(self, id: UUID, integration_id: str) -> None:
        await self._db.execute(
            """UPDATE connect_sessions
               SET consume_time = coalesce(consume_time, now()),
                   consumed_integration_id = CASE WHEN consume_time IS NULL THEN $2
                                                  ELSE consumed_integration_id END,
                   attempt_until = NULL
               WHERE id = $1""",
            id,
            integration_id,
        )

    async def purge_expired(self, before: datetime) -> int:
        status = await self._db.execute(
            "DELETE FROM connect_sessions WHERE expire_time < $1", before
        )
        return int(status.split()[-1])
