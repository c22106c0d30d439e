"""Master keys as the database sees them: check values, rows per key id, and rewrapping."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from uuid import UUID

from credbroker.crypto import CURRENT_FORMAT, FORMAT_V1
from credbroker.domain.rotation import (
    Batch,
    EndpointSecrets,
    Rewrap,
    RewrapEndpoint,
    StoredSecrets,
)
from credbroker.storage.db import Database


class PostgresMasterKeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def check_blobs(self) -> dict[int, bytes]:
        rows = await self._db.fetch("SELECT key_id, check_blob FROM master_keys")
        return {row["key_id"]: bytes(row["check_blob"]) for row in rows}

    async def add_check_blob(self, key_id: int, check_blob: bytes) -> None:
        await self._db.execute(
            "INSERT INTO master_keys (key_id, check_blob) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            key_id,
            check_blob,
        )

    async def key_ids_in_use(self) -> set[int]:
        rows = await self._db.fetch(
            """SELECT DISTINCT credentials_key_id AS key_id FROM connections
               UNION SELECT DISTINCT config_key_id FROM connections
               UNION SELECT DISTINCT secret_key_id FROM webhook_endpoints
               UNION SELECT DISTINCT previous_secret_key_id FROM webhook_endpoints
                     WHERE previous_secret_key_id IS NOT NULL"""
        )
        return {row["key_id"] for row in rows}

    async def rows_per_key(self) -> dict[int, int]:
        rows = await self._db.fetch(
            """SELECT key_id, count(*) AS n FROM (
                   SELECT credentials_key_id AS key_id FROM connections
                   UNION ALL SELECT config_key_id FROM connections
                   UNION ALL SELECT secret_key_id FROM webhook_endpoints
                   UNION ALL SELECT previous_secret_key_id FROM webhook_endpoints
                             WHERE previous_secret_key_id IS NOT NULL) blobs
               GROUP BY key_id ORDER BY key_id"""
        )
        return {row["key_id"]: row["n"] for row in rows}

    async def blobs_per_format(self) -> dict[int, int]:
        rows = await self._db.fetch(
            """SELECT format, count(*) AS n FROM (
                   SELECT credentials_format AS format FROM connections
                   UNION ALL SELECT config_format FROM connections
                   UNION ALL SELECT secret_format FROM webhook_endpoints
                   UNION ALL SELECT previous_secret_format FROM webhook_endpoints
                             WHERE previous_secret_format IS NOT NULL) blobs
               GROUP BY format ORDER BY format"""
        )
        return {row["format"]: row["n"] for row in rows}

    async def legacy_blobs_remain(self) -> bool:
        """Whether any blob of format 1 (binding v1) is stored (through partial indexes)."""
        return bool(
            await self._db.fetchval(
                f"""SELECT EXISTS (SELECT 1 FROM connections WHERE credentials_format = {FORMAT_V1})
                    OR EXISTS (SELECT 1 FROM connections WHERE config_format = {FORMAT_V1})
                    OR EXISTS (SELECT 1 FROM webhook_endpoints WHERE secret_format = {FORMAT_V1})
                    OR EXISTS (SELECT 1 FROM webhook_endpoints
                               WHERE previous_secret_format = {FORMAT_V1})"""  # noqa: S608
            )
        )

    async def count_not_under(self, primary_key_id: int, *, exclude: Collection[UUID]) -> int:
        count = await self._db.fetchval(
            f"""SELECT (SELECT count(*) FROM connections
                       WHERE ({_CONNECTION_PENDING}) AND NOT id = ANY($2::uuid[]))
                    + (SELECT count(*) FROM webhook_endpoints
                       WHERE ({_ENDPOINT_PENDING}) AND NOT id = ANY($2::uuid[]))""",  # noqa: S608
            primary_key_id,
            list(exclude),
        )
        return int(count)

    async def rewrap_batch(
        self,
        primary_key_id: int,
        limit: int,
        rewrap: Rewrap,
        *,
        after: UUID | None,
        exclude: Collection[UUID],
        write: bool,
    ) -> Batch:
        async with self._db.transaction() as connection:
            rows = await connection.fetch(
                f"""SELECT id, environment_id, integration_id, connection_id, credentials_blob,
                           config_blob
                    FROM connections
                    WHERE ({_CONNECTION_PENDING}) AND ($3::uuid IS NULL OR id > $3)
                      AND NOT id = ANY($4::uuid[])
                    ORDER BY id LIMIT $2 {_LOCKED if write else ""}""",  # noqa: S608
                primary_key_id,
                limit,
                after,
                list(exclude),
            )
            updates = []
            for row in rows:
                stored = StoredSecrets(
                    row["id"],
                    row["environment_id"],
                    row["integration_id"],
                    row["connection_id"],
                    bytes(row["credentials_blob"]),
                    bytes(row["config_blob"]),
                )
                credentials, config = rewrap(stored)
                if (credentials, config) != (stored.credentials, stored.connection_config):
                    updates.append((row["id"], credentials, config))
            if write and updates:
                await connection.executemany(
                    "UPDATE connections SET credentials_blob = $2, config_blob = $3 WHERE id = $1",
                    updates,
                )
        return _batch(rows, len(updates) if write else 0)

    async def rewrap_endpoint_batch(
        self,
        primary_key_id: int,
        limit: int,
        rewrap: RewrapEndpoint,
        *,
        after: UUID | None,
        exclude: Collection[UUID],
        write: bool,
    ) -> Batch:
        """The same for webhook signing secrets."""
        async with self._db.transaction() as connection:
            rows = await connection.fetch(
                f"""SELECT id, environment_id, secret_blob, previous_secret_blob
                    FROM webhook_endpoints
                    WHERE ({_ENDPOINT_PENDING}) AND ($3::uuid IS NULL OR id > $3)
                      AND NOT id = ANY($4::uuid[])
                    ORDER BY id LIMIT $2 {_LOCKED if write else ""}""",  # noqa: S608
                primary_key_id,
                limit,
                after,
                list(exclude),
            )
            updates = []
            for row in rows:
                previous = row["previous_secret_blob"]
                stored = EndpointSecrets(
                    row["id"],
                    row["environment_id"],
                    bytes(row["secret_blob"]),
                    bytes(previous) if previous is not None else None,
                )
                secret, new_previous = rewrap(stored)
                if (secret, new_previous) != (stored.secret, stored.previous_secret):
                    updates.append((row["id"], secret, new_previous))
            if write and updates:
                await connection.executemany(
                    """UPDATE webhook_endpoints SET secret_blob = $2, previous_secret_blob = $3
                       WHERE id = $1""",
                    updates,
                )
        return _batch(rows, len(updates) if write else 0)


# Rows with a blob a rewrap has to move: under another key than the primary ($1), or of another
# format than the current one.
_CONNECTION_PENDING = (
    "credentials_key_id <> $1 OR config_key_id <> $1"
    f" OR credentials_format <> {CURRENT_FORMAT} OR config_format <> {CURRENT_FORMAT}"
)
_ENDPOINT_PENDING = (
    "secret_key_id <> $1 OR previous_secret_key_id <> $1"
    f" OR secret_format <> {CURRENT_FORMAT} OR previous_secret_format <> {CURRENT_FORMAT}"
)
_LOCKED = "FOR UPDATE SKIP LOCKED"


def _batch(rows: list[Any], written: int) -> Batch:
    return Batch(len(rows), rows[-1]["id"] if rows else None, written)
