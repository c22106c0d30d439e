"""Environments and secret keys."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

import asyncpg

from credbroker.domain.errors import AlreadyExistsError
from credbroker.domain.models import Environment, Scope, SecretKeyRecord
from credbroker.storage.db import Database


def _environment(row: asyncpg.Record) -> Environment:
    return Environment(row["id"], row["name"], row["create_time"])


class PostgresEnvironmentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, name: str) -> Environment:
        try:
            row = await self._db.fetchrow(
                "INSERT INTO environments (id, name) VALUES ($1, $2) RETURNING *",
                uuid.uuid4(),
                name,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExistsError(f"environment {name!r} already exists") from None
        assert row is not None
        return _environment(row)

    async def get_by_name(self, name: str) -> Environment | None:
        row = await self._db.fetchrow("SELECT * FROM environments WHERE name = $1", name)
        return _environment(row) if row else None

    async def list(self) -> list[Environment]:
        return [
            _environment(r)
            for r in await self._db.fetch("SELECT * FROM environments ORDER BY name")
        ]


_KEY_COLUMNS = """k.key_id, k.environment_id, e.name AS environment_name, k.scopes, k.secret_hash,
    k.description, k.create_time, k.expire_time, k.revoke_time, k.last_used_time"""


def _key(row: asyncpg.Record) -> SecretKeyRecord:
    return SecretKeyRecord(
        key_id=row["key_id"],
        environment_id=row["environment_id"],
        environment_name=row["environment_name"],
        scopes=frozenset(Scope(s) for s in row["scopes"]),
        secret_hash=bytes(row["secret_hash"]),
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        revoke_time=row["revoke_time"],
        description=row["description"],
        last_used_time=row["last_used_time"],
    )


class PostgresSecretKeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, record: SecretKeyRecord) -> None:
        await self._db.execute(
            """INSERT INTO secret_keys
                   (key_id, environment_id, scopes, secret_hash, description, create_time,
                    expire_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            record.key_id,
            record.environment_id,
            sorted(s.value for s in record.scopes),
            record.secret_hash,
            record.description,
            record.create_time,
            record.expire_time,
        )

    async def get(self, key_id: str) -> SecretKeyRecord | None:
        row = await self._db.fetchrow(
            f"""SELECT {_KEY_COLUMNS} FROM secret_keys k
                JOIN environments e ON e.id = k.environment_id WHERE k.key_id = $1""",  # noqa: S608
            key_id,
        )
        return _key(row) if row else None

    async def list(self, environment_id: uuid.UUID) -> list[SecretKeyRecord]:
        rows = await self._db.fetch(
            f"""SELECT {_KEY_COLUMNS} FROM secret_keys k
                JOIN environments e ON e.id = k.environment_id
                WHERE k.environment_id = $1 ORDER BY k.create_time, k.key_id""",  # noqa: S608
            environment_id,
        )
        return [_key(r) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        status = await self._db.execute(
            "UPDATE secret_keys SET revoke_time = coalesce(revoke_time, now()) WHERE key_id = $1",
            key_id,
        )
        return status != "UPDATE 0"

    async def expire_by(self, key_id: str, expire_time: datetime) -> None:
        await self._db.execute(
            """UPDATE secret_keys SET expire_time = least(coalesce(expire_time, $2), $2)
               WHERE key_id = $1""",
            key_id,
            expire_time,
        )

    async def record_last_used(self, used: Mapping[str, datetime]) -> None:
        if not used:
            return
        await self._db.execute(
            """UPDATE secret_keys k SET last_used_time = greatest(k.last_used_time, u.used)
               FROM unnest($1::text[], $2::timestamptz[]) AS u(key_id, used)
               WHERE k.key_id = u.key_id""",
            list(used),
            list(used.values()),
        )
