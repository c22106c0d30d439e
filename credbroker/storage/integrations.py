"""Integrations table."""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

import asyncpg

from credbroker.domain.errors import AlreadyExistsError, FailedPreconditionError
from credbroker.domain.models import AuthMode, Integration
from credbroker.storage.db import Database


def _integration(row: asyncpg.Record) -> Integration:
    return Integration(
        id=row["id"],
        environment_id=row["environment_id"],
        integration_id=row["integration_id"],
        provider=row["provider"],
        display_name=row["display_name"],
        auth_mode=AuthMode(row["auth_mode"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        integration_config=row["integration_config"],
    )


class PostgresIntegrationRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, integration: Integration) -> Integration:
        try:
            row = await self._db.fetchrow(
                """INSERT INTO integrations (id, environment_id, integration_id, provider,
                       display_name, auth_mode, create_time, update_time, integration_config)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) RETURNING *""",
                integration.id,
                integration.environment_id,
                integration.integration_id,
                integration.provider,
                integration.display_name,
                integration.auth_mode.value,
                integration.create_time,
                dict(integration.integration_config),
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExistsError(
                "an integration with this id already exists", reason="INTEGRATION_ALREADY_EXISTS"
            ) from None
        assert row is not None
        return _integration(row)

    async def get(self, environment_id: UUID, integration_id: str) -> Integration | None:
        row = await self._db.fetchrow(
            "SELECT * FROM integrations WHERE environment_id = $1 AND integration_id = $2",
            environment_id,
            integration_id,
        )
        return _integration(row) if row else None

    async def list(
        self, environment_id: UUID, *, after: str | None, limit: int
    ) -> list[Integration]:
        rows = await self._db.fetch(
            """SELECT * FROM integrations
               WHERE environment_id = $1 AND ($2::text IS NULL OR integration_id > $2)
               ORDER BY integration_id LIMIT $3""",
            environment_id,
            after,
            limit,
        )
        return [_integration(r) for r in rows]

    async def update(
        self,
        environment_id: UUID,
        integration_id: str,
        *,
        display_name: str | None,
        integration_config: Mapping[str, str] | None,
    ) -> Integration | None:
        row = await self._db.fetchrow(
            """UPDATE integrations SET display_name = coalesce($3, display_name),
                   integration_config = coalesce($4::jsonb, integration_config),
                   update_time = now()
               WHERE environment_id = $1 AND integration_id = $2 RETURNING *""",
            environment_id,
            integration_id,
            display_name,
            dict(integration_config) if integration_config is not None else None,
        )
        return _integration(row) if row else None

    async def delete(self, environment_id: UUID, integration_id: str, *, force: bool) -> bool:
        try:
            async with self._db.transaction() as connection:
                if force:
                    # Lock the integration first: concurrent connection inserts wait on it.
                    await connection.execute(
                        """SELECT 1 FROM integrations
                           WHERE environment_id = $1 AND integration_id = $2 FOR UPDATE""",
                        environment_id,
                        integration_id,
                    )
                    await connection.execute(
                        "DELETE FROM connections WHERE environment_id = $1 AND integration_id = $2",
                        environment_id,
                        integration_id,
                    )
                status = await connection.execute(
                    "DELETE FROM integrations WHERE environment_id = $1 AND integration_id = $2",
                    environment_id,
                    integration_id,
                )
        except asyncpg.ForeignKeyViolationError:
            raise FailedPreconditionError(
                "the integration has connections; delete them or pass force",
                reason="INTEGRATION_HAS_CONNECTIONS",
            ) from None
        return status != "DELETE 0"
