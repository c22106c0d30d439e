"""Connections table. Secrets arrive and leave as ciphertext; this module never sees plaintext."""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

import asyncpg

from credbroker.domain.errors import AlreadyExistsError, NotFoundError
from credbroker.domain.models import AuthMode, Connection, EncryptedConnectionSecrets
from credbroker.domain.ports import ConnectionChanges, NewConnection
from credbroker.storage.db import Database

_COLUMNS = """id, environment_id, integration_id, connection_id, auth_mode, connection_config_keys,
    metadata, tags, version, create_time, update_time"""


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
    )


class PostgresConnectionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, connection: NewConnection) -> Connection:
        try:
            row = await self._db.fetchrow(
                f"""INSERT INTO connections (id, environment_id, integration_id, connection_id,
                        auth_mode, credentials_blob, config_blob, connection_config_keys, metadata,
                        tags)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_COLUMNS}""",  # noqa: S608
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
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExistsError(
                "a connection with this id already exists", reason="CONNECTION_ALREADY_EXISTS"
            ) from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFoundError("integration not found", reason="INTEGRATION_NOT_FOUND") from None
        assert row is not None
        return _connection(row)

    async def get(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> Connection | None:
        row = await self._db.fetchrow(
            f"""SELECT {_COLUMNS} FROM connections
                WHERE environment_id = $1 AND integration_id = $2 AND connection_id = $3""",  # noqa: S608
            environment_id,
            integration_id,
            connection_id,
        )
        return _connection(row) if row else None

    async def get_with_secrets(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> tuple[Connection, EncryptedConnectionSecrets] | None:
        row = await self._db.fetchrow(
            f"""SELECT {_COLUMNS}, credentials_blob, config_blob FROM connections
                WHERE environment_id = $1 AND integration_id = $2 AND connection_id = $3""",  # noqa: S608
            environment_id,
            integration_id,
            connection_id,
        )
        if row is None:
            return None
        secrets = EncryptedConnectionSecrets(
            bytes(row["credentials_blob"]), bytes(row["config_blob"])
        )
        return _connection(row), secrets

    async def list(
        self,
        environment_id: UUID,
        *,
        integration_id: str | None,
        tags: Mapping[str, str],
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[Connection]:
        after_integration, after_connection = after if after else (None, None)
        rows = await self._db.fetch(
            f"""SELECT {_COLUMNS} FROM connections
                WHERE environment_id = $1
                  AND ($2::text IS NULL OR integration_id = $2)
                  AND tags @> $3::jsonb
                  AND ($4::text IS NULL OR (integration_id, connection_id) > ($4, $5::text))
                ORDER BY integration_id, connection_id
                LIMIT $6""",  # noqa: S608
            environment_id,
            integration_id,
            dict(tags),
            after_integration,
            after_connection,
            limit,
        )
        return [_connection(r) for r in rows]

    async def update(
        self,
        environment_id: UUID,
        id: UUID,
        changes: ConnectionChanges,
        *,
        expected_version: int | None,
    ) -> Connection | None:
        row = await self._db.fetchrow(
            f"""UPDATE connections SET
                    credentials_blob = coalesce($4, credentials_blob),
                    config_blob = coalesce($5, config_blob),
                    connection_config_keys = coalesce($6, connection_config_keys),
                    metadata = coalesce($7::jsonb, metadata),
                    tags = coalesce($8::jsonb, tags),
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
        )
        return _connection(row) if row else None

    async def delete(self, environment_id: UUID, integration_id: str, connection_id: str) -> bool:
        status = await self._db.execute(
            """DELETE FROM connections
               WHERE environment_id = $1 AND integration_id = $2 AND connection_id = $3""",
            environment_id,
            integration_id,
            connection_id,
        )
        return status != "DELETE 0"
