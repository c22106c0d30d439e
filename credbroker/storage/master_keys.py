"""Master-key check values and which master keys the stored data uses."""

from __future__ import annotations

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
               UNION SELECT DISTINCT config_key_id FROM connections"""
        )
        return {row["key_id"] for row in rows}

    async def rows_per_key(self) -> dict[int, int]:
        rows = await self._db.fetch(
            """SELECT key_id, count(*) AS n FROM (
                   SELECT credentials_key_id AS key_id FROM connections
                   UNION ALL SELECT config_key_id FROM connections) blobs
               GROUP BY key_id ORDER BY key_id"""
        )
        return {row["key_id"]: row["n"] for row in rows}
