"""Connections table. Secrets arrive and leave as ciphertext; this module never sees plaintext.

Every change writes its connection event (:mod:`credbroker.storage.events`) in the same
transaction, so a committed change always has its event and a rolled-back one never does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from credbroker.domain.errors import AlreadyExistsError, NotFoundError
from credbroker.domain.events import ConnectionEventType, verification_event
from credbroker.domain.models import (
    AuthMode,
    Connection,
    EncryptedConnectionSecrets,
    EndUser,
    Organization,
    VerificationRecord,
    VerificationState,
)
from credbroker.domain.ports import ConnectionChanges, NewConnection, StoredConnection
from credbroker.storage.db import Database
from credbroker.storage.events import append_event

_COLUMNS = """c.id, c.environment_id, c.integration_id, c.connection_id, c.auth_mode,
    c.connection_config_keys, c.metadata, c.tags, c.version, c.create_time, c.update_time,
    c.verification_state, c.verify_time, c.verify_http_status, c.verify_failures, c.end_user,
    c.organization,
    (SELECT f.last_fetch_time FROM connection_fetches f WHERE f.id = c.id) AS last_fetch_time"""


def end_user_from_json(document: Any) -> EndUser | None:
    if not document:
        return None
    return EndUser(document["id"], document.get("email", ""), document.get("display_name", ""))


def end_user_to_json(end_user: EndUser | None) -> dict[str, str] | None:
    if end_user is None:
        return None
    return {"id": end_user.id, "email": end_user.email, "display_name": end_user.display_name}


def organization_from_json(document: Any) -> Organization | None:
    return Organization(document["id"], document.get("display_name", "")) if document else None


def organization_to_json(organization: Organization | None) -> dict[str, str] | None:
    if organization is None:
        return None
    return {"id": organization.id, "display_name": organization.display_name}


def _connection(row: asyncpg.Record) -> Connection:
    return Connection(
        id=row["id"],
        environment_id=row["environment_id"],
        integration_id=row["integration_id"],
        connection_id=row["connection_id"],
        auth_mode=AuthMode(row["auth_mode"]),
        metadata=row["metadata"],
        tags=row["tags"],
        connection_config_keys=tuple(row["connection_config_keys"]),
        credentials_set=True,
        version=row["version"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        verification=VerificationRecord(
            VerificationState(row["verification_state"]),
            row["verify_time"],
            row["verify_http_status"],
            row["verify_failures"],
        ),
        last_fetch_time=row["last_fetch_time"],
        end_user=end_user_from_json(row["end_user"]),
        organization=organization_from_json(row["organization"]),
    )


def _stored(row: asyncpg.Record) -> StoredConnection:
    return StoredConnection(
        _connection(row),
        EncryptedConnectionSecrets(bytes(row["credentials_blob"]), bytes(row["config_blob"])),
        row["provider"],
        row["integration_config"],
    )


_STORED = f"""SELECT {_COLUMNS}, c.credentials_blob, c.config_blob, i.provider, i.integration_config
    FROM connections c
    JOIN integrations i ON i.environment_id = c.environment_id
                       AND i.integration_id = c.integration_id"""  # noqa: S608


class PostgresConnectionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, connection: NewConnection) -> Connection:
        """Inserts, with its connection.created event."""
        try:
            async with self._db.transaction() as tx:
                row = await tx.fetchrow(
                    f"""INSERT INTO connections AS c (id, environment_id, integration_id,
                            connection_id, auth_mode, credentials_blob, config_blob,
                            connection_config_keys, metadata, tags, verification_state, verify_time,
                            verify_http_status, end_user, organization)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                                $15)
                        RETURNING {_COLUMNS}""",  # noqa: S608
                    connection.id,
                    connection.environment_id,
                    connection.integration_id,
                    connection.connection_id,
                    connection.auth_mode.value,
                    connection.secrets.credentials,
                    connection.secrets.connection_config,
                    list(connection.connection_config_keys),
                    dict(connection.metadata),
                    dict(connection.tags),
                    connection.verification.state.value,
                    connection.verification.verify_time,
                    connection.verification.http_status,
                    end_user_to_json(connection.end_user),
                    organization_to_json(connection.organization),
                )
                assert row is not None
                created = _connection(row)
                await append_event(tx, ConnectionEventType.CREATED, created)
        except asyncpg.UniqueViolationError:
            raise AlreadyExistsError(
                "a connection with this id already exists", reason="CONNECTION_ALREADY_EXISTS"
            ) from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFoundError("integration not found", reason="INTEGRATION_NOT_FOUND") from None
        return created

    async def get(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> Connection | None:
        row = await self._db.fetchrow(
            f"""SELECT {_COLUMNS} FROM connections c
                WHERE environment_id = $1 AND integration_id = $2 AND connection_id = $3""",  # noqa: S608
            environment_id,
            integration_id,
            connection_id,
        )
        return _connection(row) if row else None

    async def get_with_secrets(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> StoredConnection | None:
        row = await self._db.fetchrow(
            f"""{_STORED}
                WHERE c.environment_id = $1 AND c.integration_id = $2 AND c.connection_id = $3""",
            environment_id,
            integration_id,
            connection_id,
        )
        return _stored(row) if row else None

    async def list_stale(self, verified_before: datetime, limit: int) -> list[StoredConnection]:
        rows = await self._db.fetch(
            f"""{_STORED}
                WHERE c.verify_time IS NULL OR c.verify_time < $1
                ORDER BY c.verify_time NULLS FIRST, c.id LIMIT $2""",
            verified_before,
            limit,
        )
        return [_stored(r) for r in rows]

    async def record_verification(
        self, environment_id: UUID, id: UUID, record: VerificationRecord
    ) -> Connection | None:
        """Stores the outcome; a failure after a non-failure (or a success after a failure)
        writes its connection.verification_* event in the same transaction."""
        failed = record.state in {VerificationState.REJECTED, VerificationState.ERROR}
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(
                f"""UPDATE connections c SET
                        verification_state = $3, verify_time = $4, verify_http_status = $5,
                        verify_failures = CASE WHEN $6 THEN c.verify_failures + 1 ELSE 0 END
                    FROM (SELECT id, verification_state AS old_state FROM connections
                          WHERE id = $1 AND environment_id = $2 FOR UPDATE) old
                    WHERE c.id = old.id RETURNING {_COLUMNS}, old.old_state""",  # noqa: S608
                id,
                environment_id,
                record.state.value,
                record.verify_time,
                record.http_status,
                failed,
            )
            if row is None:
                return None
            updated = _connection(row)
            transition = verification_event(
                VerificationState(row["old_state"]), record.state, record.http_status
            )
            if transition is not None:
                await append_event(tx, transition[0], updated, transition[1])
        return updated

    async def list(
        self,
        environment_id: UUID,
        *,
        integration_id: str | None,
        tags: Mapping[str, str],
        verification_state: VerificationState | None = None,
        after: tuple[str, str] | None,
        limit: int,
        integration_ids: Sequence[str] = (),
        connection_id: str | None = None,
        search: str | None = None,
        end_user_id: str | None = None,
        organization_id: str | None = None,
    ) -> list[Connection]:
        after_integration, after_connection = after if after else (None, None)
        rows = await self._db.fetch(
            f"""SELECT {_COLUMNS} FROM connections c
                WHERE environment_id = $1
                  AND ($2::text IS NULL OR integration_id = $2)
                  AND tags @> $3::jsonb
                  AND ($4::text IS NULL OR (integration_id, connection_id) > ($4, $5::text))
                  AND ($7::text IS NULL OR verification_state = $7)
                  AND ($8::text[] IS NULL OR integration_id = ANY($8::text[]))
                  AND ($9::text IS NULL OR connection_id = $9)
                  AND ($10::text IS NULL OR connection_id ILIKE $10 ESCAPE '\\'
                       OR end_user->>'id' ILIKE $10 ESCAPE '\\'
                       OR end_user->>'email' ILIKE $10 ESCAPE '\\'
                       OR end_user->>'display_name' ILIKE $10 ESCAPE '\\')
                  AND ($11::text IS NULL OR end_user->>'id' = $11)
                  AND ($12::text IS NULL OR organization->>'id' = $12)
                ORDER BY integration_id, connection_id
                LIMIT $6""",  # noqa: S608
            environment_id,
            integration_id,
            dict(tags),
            after_integration,
            after_connection,
            limit,
            verification_state.value if verification_state else None,
            list(integration_ids) if integration_ids else None,
            connection_id,
            _contains_pattern(search) if search else None,
            end_user_id,
            organization_id,
        )
        return [_connection(r) for r in rows]

    async def update_metadata(
        self,
        environment_id: UUID,
        integration_id: str,
        connection_ids: Sequence[str],
        compute: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> Sequence[Connection] | None:
        wanted = sorted(set(connection_ids))
        async with self._db.transaction() as tx:
            # Locked in a fixed order, so two overlapping calls cannot deadlock.
            rows = await tx.fetch(
                """SELECT id, metadata FROM connections
                   WHERE environment_id = $1 AND integration_id = $2
                     AND connection_id = ANY($3::text[])
                   ORDER BY connection_id FOR UPDATE""",
                environment_id,
                integration_id,
                wanted,
            )
            if len(rows) != len(wanted):
                return None
            updated = await tx.fetch(
                f"""UPDATE connections c SET metadata = u.metadata, version = version + 1,
                        update_time = now()
                    FROM unnest($2::uuid[], $3::jsonb[]) AS u(id, metadata)
                    WHERE c.id = u.id AND c.environment_id = $1
                    RETURNING {_COLUMNS}""",  # noqa: S608
                environment_id,
                [r["id"] for r in rows],
                [dict(compute(r["metadata"])) for r in rows],
            )
        return sorted((_connection(r) for r in updated), key=lambda c: c.connection_id)

    async def record_fetches(self, fetched: Mapping[UUID, datetime]) -> None:
        if not fetched:
            return
        # Joined with connections so ids deleted since the read are skipped, not a FK error.
        await self._db.execute(
            """INSERT INTO connection_fetches (id, last_fetch_time)
               SELECT u.id, u.fetched FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, fetched)
               JOIN connections c ON c.id = u.id
               ON CONFLICT (id) DO UPDATE SET last_fetch_time =
                   greatest(connection_fetches.last_fetch_time, EXCLUDED.last_fetch_time)""",
            list(fetched),
            list(fetched.values()),
        )

    async def update(
        self,
        environment_id: UUID,
        id: UUID,
        changes: ConnectionChanges,
        *,
        expected_version: int | None,
        event: ConnectionEventType | None = None,
    ) -> Connection | None:
        """Applies the changes and writes ``event`` (if any) in the same transaction."""
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(
                f"""UPDATE connections c SET
                        credentials_blob = coalesce($4, credentials_blob),
                        config_blob = coalesce($5, config_blob),
                        connection_config_keys = coalesce($6, connection_config_keys),
                        metadata = coalesce($7::jsonb, metadata),
                        tags = coalesce($8::jsonb, tags),
                        verification_state = coalesce($9, verification_state),
                        verify_time = CASE WHEN $9::text IS NULL THEN verify_time ELSE $10 END,
                        verify_http_status = CASE WHEN $9::text IS NULL THEN verify_http_status
                                                  ELSE $11 END,
                        verify_failures = CASE WHEN $9::text IS NULL THEN verify_failures
                                               ELSE 0 END,
                        version = version + 1,
                        update_time = now()
                    WHERE id = $1 AND environment_id = $2 AND ($3::bigint IS NULL OR version = $3)
                    RETURNING {_COLUMNS}""",  # noqa: S608
                id,
                environment_id,
                expected_version,
                changes.credentials,
                changes.connection_config,
                list(changes.connection_config_keys)
                if changes.connection_config_keys is not None
                else None,
                dict(changes.metadata) if changes.metadata is not None else None,
                dict(changes.tags) if changes.tags is not None else None,
                changes.verification.state.value if changes.verification else None,
                changes.verification.verify_time if changes.verification else None,
                changes.verification.http_status if changes.verification else 0,
            )
            if row is None:
                return None
            updated = _connection(row)
            if event is not None:
                await append_event(tx, event, updated)
        return updated

    async def delete(self, environment_id: UUID, integration_id: str, connection_id: str) -> bool:
        """Deletes, with its connection.deleted event."""
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(
                f"""DELETE FROM connections c
                    WHERE environment_id = $1 AND integration_id = $2 AND connection_id = $3
                    RETURNING {_COLUMNS}""",  # noqa: S608
                environment_id,
                integration_id,
                connection_id,
            )
            if row is None:
                return False
            await append_event(tx, ConnectionEventType.DELETED, _connection(row))
        return True


def _contains_pattern(text: str) -> str:
    """An ILIKE pattern matching ``text`` anywhere, its own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
