"""Fixtures for integration tests: throwaway databases and per-test environments."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from credbroker.bootstrap import Backend
from credbroker.domain.models import Environment
from credbroker.storage.environments import PostgresEnvironmentRepository


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest_asyncio.fixture
async def fresh_database_url(admin_database_url: str) -> AsyncIterator[str]:
    """An empty database of its own, dropped after the test."""
    name = f"credbroker_it_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(admin_database_url, name)
    finally:
        admin = await asyncpg.connect(admin_database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


EnvironmentFactory = Callable[[], Awaitable[Environment]]


@pytest.fixture
def make_environment(backend: Backend) -> EnvironmentFactory:
    repository = PostgresEnvironmentRepository(backend.db)

    async def create() -> Environment:
        return await repository.create(f"it-{uuid.uuid4().hex[:12]}")

    return create


@pytest_asyncio.fixture
async def environment(make_environment: EnvironmentFactory) -> Environment:
    return await make_environment()


@pytest_asyncio.fixture(autouse=True)
async def _drop_rows_under_unknown_master_keys(
    backend: Backend, keyring: Any
) -> AsyncIterator[None]:
    """Repository tests store fake blobs whose headers name arbitrary master-key ids (or an old
    format); the shared database must not keep them, or every later server start fails closed
    (as it should)."""
    yield
    await backend.db.execute(
        """DELETE FROM connections
           WHERE credentials_key_id <> ALL($1::bigint[]) OR config_key_id <> ALL($1::bigint[])
              OR credentials_format <> 2 OR config_format <> 2""",
        list(keyring.keys),
    )
