"""Migrations against a real PostgreSQL: idempotent, tamper-evident and safe to run concurrently."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from credbroker.bootstrap import Backend
from credbroker.storage.migrate import MigrationError, available_migrations, migrate

TABLES = {"environments", "secret_keys", "integrations", "connections", "master_keys"}


async def _tables(connection: asyncpg.Connection) -> set[str]:
    rows = await connection.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    )
    return {row["tablename"] for row in rows}


def test_available_migrations_are_ordered_and_named() -> None:
    migrations = available_migrations()
    assert migrations
    versions = [m.version for m in migrations]
    assert versions == sorted(versions)
    assert versions[0] == "0001_initial"
    assert len(set(versions)) == len(versions)
    for migration in migrations:
        assert len(migration.checksum) == 64
        assert migration.sql.strip()


async def test_second_run_applies_nothing(fresh_database_url: str) -> None:
    connection = await asyncpg.connect(fresh_database_url)
    try:
        first = await migrate(connection)
        assert first == [m.version for m in available_migrations()]
        assert await _tables(connection) >= TABLES
        assert await migrate(connection) == []
        assert await migrate(connection) == []
        rows = await connection.fetch("SELECT version, checksum FROM schema_migrations")
        assert {r["version"]: r["checksum"] for r in rows} == {
            m.version: m.checksum for m in available_migrations()
        }
    finally:
        await connection.close()


async def test_backend_database_is_fully_migrated(backend: Backend) -> None:
    async with backend.db.connection() as connection:
        assert await migrate(connection) == []
        count = await connection.fetchval("SELECT count(*) FROM schema_migrations")
    assert count == len(available_migrations())


async def test_modified_applied_migration_refused(fresh_database_url: str) -> None:
    connection = await asyncpg.connect(fresh_database_url)
    try:
        await connection.execute(
            """CREATE TABLE schema_migrations (
                   version text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        first = available_migrations()[0]
        await connection.execute(
            "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
            first.version,
            "0" * 64,
        )
        with pytest.raises(MigrationError) as caught:
            await migrate(connection)
        assert first.version in str(caught.value)
        assert "modified" in str(caught.value)
        # Nothing was applied: the refused run rolled back as a whole.
        assert await _tables(connection) == {"schema_migrations"}
        assert await connection.fetchval("SELECT count(*) FROM schema_migrations") == 1
        # And it keeps refusing.
        with pytest.raises(MigrationError):
            await migrate(connection)
    finally:
        await connection.close()


async def test_modified_migration_refused_after_real_apply(fresh_database_url: str) -> None:
    connection = await asyncpg.connect(fresh_database_url)
    try:
        await migrate(connection)
        await connection.execute(
            "UPDATE schema_migrations SET checksum = 'tampered' WHERE version = '0001_initial'"
        )
        with pytest.raises(MigrationError, match="0001_initial"):
            await migrate(connection)
    finally:
        await connection.close()


async def test_concurrent_migrations_apply_once(fresh_database_url: str) -> None:
    connections = [await asyncpg.connect(fresh_database_url) for _ in range(5)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(migrate(c) for c in connections)), timeout=60
        )
        everything = [m.version for m in available_migrations()]
        assert sorted(results, key=len) == [[], [], [], [], everything]
        check = connections[0]
        assert await _tables(check) >= TABLES
        rows = await check.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == everything
    finally:
        for connection in connections:
            await connection.close()


async def test_failed_migration_run_leaves_nothing_behind(fresh_database_url: str) -> None:
    """A pre-existing conflicting table makes 0001 fail; no tracking row may be left."""
    connection = await asyncpg.connect(fresh_database_url)
    try:
        await connection.execute("CREATE TABLE integrations (x int)")
        with pytest.raises(asyncpg.PostgresError):
            await migrate(connection)
        assert await _tables(connection) == {"integrations"}
    finally:
        await connection.close()
