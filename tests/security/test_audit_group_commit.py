"""The group-commit audit writer keeps the fail-closed rule while it holds one connection for
as long as batches keep coming and writes reveals without asking for their ids: every call that
returns has its row committed, every call that raises has none, whether the batch mixes
numbered and unnumbered records, no connection can be had, or the held connection dies
mid-stream; and the writer gives its connection back once nothing is pending."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest_asyncio

from credbroker.config import Settings
from credbroker.domain.audit import AuditRecord
from credbroker.domain.models import ALL_SCOPES, Principal
from credbroker.storage.audit import GroupCommitAuditLog, PostgresAuditLog
from credbroker.storage.db import Database, PoolSettings, create_pool

METHOD = "/credbroker.v1.ConnectionService/AccessCredentials"


@pytest_asyncio.fixture
async def small_db(settings: Settings) -> AsyncIterator[Database]:
    """A database handle of its own: a pool of one connection, a short acquire bound."""
    assert settings.database_url is not None
    pool = await create_pool(
        settings.database_url.get_secret_value(),
        PoolSettings(min_size=1, max_size=1, acquire_timeout=0.3),
    )
    try:
        yield Database(pool, 0.3)
    finally:
        await pool.close()


def _principal() -> Principal:
    name = f"gc-{uuid.uuid4().hex[:8]}"
    return Principal("k" * 16, uuid.uuid4(), name, ALL_SCOPES)


def _record(principal: Principal, n: int) -> AuditRecord:
    return AuditRecord(f"{principal.environment_name}-{n}", principal, METHOD, "openai", "c1", "OK")


async def _rows(db: Database, principal: Principal) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT id, request_id FROM audit_events WHERE environment = $1",
        principal.environment_name,
    )
    return {row["request_id"]: row["id"] for row in rows}


async def _attempt(log: GroupCommitAuditLog, record: AuditRecord, numbered: bool) -> Any:
    """The event id (numbered), True (stored), or None when the call was refused."""
    try:
        if numbered:
            return await log.append(record)
        await log.store(record)
        return True
    except Exception:  # noqa: BLE001 - a refusal, whatever the driver raised
        return None


async def test_appends_and_stores_in_shared_batches(backend: Any) -> None:
    principal = _principal()
    batches: list[int] = []
    log = GroupCommitAuditLog(PostgresAuditLog(backend.db), on_batch=batches.append)
    records = [_record(principal, n) for n in range(300)]

    async def one(n: int) -> Any:
        await asyncio.sleep(n % 20 / 1000)
        return await _attempt(log, records[n], numbered=n % 3 == 0)

    results = await asyncio.gather(*(one(n) for n in range(300)))
    rows = await _rows(backend.db, principal)
    assert set(rows) == {r.request_id for r in records}
    assert all(result is not None for result in results)
    for n, result in enumerate(results):
        if n % 3 == 0:
            assert result == rows[records[n].request_id]
    assert 1 < len(batches) < 300


async def test_the_writer_returns_its_connection_when_idle(small_db: Database) -> None:
    principal = _principal()
    log = GroupCommitAuditLog(PostgresAuditLog(small_db))
    await asyncio.gather(*(log.store(_record(principal, n)) for n in range(50)))
    # The one connection is back in the pool: another query gets it within the acquire bound.
    assert await small_db.fetchval("SELECT 1") == 1
    assert small_db.pool.get_idle_size() == 1
    assert len(await _rows(small_db, principal)) == 50


async def test_no_connection_refuses_the_calls_and_the_next_ones_recover(
    small_db: Database,
) -> None:
    principal = _principal()
    log = GroupCommitAuditLog(PostgresAuditLog(small_db))
    held = await small_db.pool.acquire()  # the pool's only connection
    try:
        refused = await asyncio.gather(
            *(_attempt(log, _record(principal, n), numbered=n % 2 == 0) for n in range(10))
        )
    finally:
        await small_db.pool.release(held)
    assert refused == [None] * 10
    later = await asyncio.gather(
        *(_attempt(log, _record(principal, n), numbered=n % 2 == 0) for n in range(10, 20))
    )
    assert all(result is not None for result in later)
    assert set(await _rows(small_db, principal)) == {
        f"{principal.environment_name}-{n}" for n in range(10, 20)
    }


async def test_a_connection_lost_mid_stream_refuses_only_its_batch(
    backend: Any, settings: Settings
) -> None:
    """Writers' backends are terminated while records keep coming: calls of the batch that was
    on the dead connection raise, later ones succeed on another connection, and exactly the
    calls that returned have rows."""
    principal = _principal()
    log = GroupCommitAuditLog(PostgresAuditLog(backend.db))
    outcomes: dict[str, Any] = {}
    stop = asyncio.Event()

    async def caller(worker: int) -> None:
        n = 0
        while not stop.is_set() or n < 20:
            record = _record(principal, worker * 100_000 + n)
            outcomes[record.request_id] = await _attempt(log, record, numbered=n % 4 == 0)
            n += 1

    assert settings.database_url is not None
    admin = await asyncpg.connect(settings.database_url.get_secret_value())
    callers = [asyncio.create_task(caller(w)) for w in range(16)]
    try:
        for _ in range(200):
            await asyncio.sleep(0.02)
            await admin.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()
                     AND query LIKE 'INSERT INTO audit_events%'"""
            )
            if sum(1 for v in outcomes.values() if v is None) >= 3:
                break
    finally:
        stop.set()
        await asyncio.gather(*callers)
        await admin.close()
    rows = await _rows(backend.db, principal)
    returned = {request_id for request_id, result in outcomes.items() if result is not None}
    refused = set(outcomes) - returned
    assert refused, "no batch was caught on a terminated connection"
    assert set(rows) == returned
    for request_id, result in outcomes.items():
        if result not in (None, True):
            assert rows[request_id] == result
    # After the losses, calls succeed again.
    assert await _attempt(log, _record(principal, -1), numbered=False) is True
