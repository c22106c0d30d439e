"""The connection_events outbox (migration 0006): appending inside a change's transaction,
reading after a position, retention, and waking watchers on the change announcements."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from datetime import datetime
from uuid import UUID

import asyncpg

from credbroker.domain.events import ConnectionEvent, ConnectionEventType, EventError
from credbroker.domain.models import AuthMode, Connection
from credbroker.storage.changes import ChangeListener
from credbroker.storage.db import Database

# Transaction-level advisory lock class taken before an environment's event insert: it makes
# positions of one environment commit in increasing order (the lock is held until commit).
EVENT_LOCK_CLASS = 0x63626576  # "cbev"

# One statement: the event, one pending delivery per enabled webhook endpoint of the
# environment that wants its type, and the announcements (sent by PostgreSQL at commit).
_INSERT = """
WITH inserted AS (
    INSERT INTO connection_events (event_id, environment_id, environment, event_type,
        connection_row_id, integration_id, connection_id, provider, auth_mode, tags, end_user,
        error_type, error_description)
    SELECT $1, e.id, e.name, $3, $4, $5, $6, coalesce(i.provider, ''), $7, $8::jsonb, $9::jsonb,
           $10, $11
    FROM environments e
    LEFT JOIN integrations i ON i.environment_id = e.id AND i.integration_id = $5
    WHERE e.id = $2
    RETURNING position, environment_id, event_type, integration_id, connection_id
), fanned AS (
    INSERT INTO webhook_deliveries (endpoint_id, environment_id, event_position, integration_id,
        connection_id)
    SELECT w.id, n.environment_id, n.position, n.integration_id, n.connection_id
    FROM inserted n
    JOIN webhook_endpoints w ON w.environment_id = n.environment_id
    WHERE NOT w.disabled AND (cardinality(w.event_types) = 0 OR n.event_type = ANY (w.event_types))
    RETURNING 1
)
SELECT position,
       pg_notify('credbroker_changes', 'e|' || environment_id || '|' || position),
       CASE WHEN EXISTS (SELECT 1 FROM fanned)
            THEN pg_notify('credbroker_changes', 'w') END
FROM inserted"""


async def append_event(
    connection: asyncpg.Connection,
    event_type: ConnectionEventType,
    changed: Connection,
    error: EventError | None = None,
) -> int:
    """Writes the event of ``changed`` inside the caller's open transaction; returns its
    position. Provider and environment name are copied from their rows, so the event keeps
    them after the connection (or integration) is gone."""
    await connection.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        EVENT_LOCK_CLASS,
        str(changed.environment_id),
    )
    row = await connection.fetchrow(
        _INSERT,
        uuid.uuid4(),
        changed.environment_id,
        event_type.value,
        changed.id,
        changed.integration_id,
        changed.connection_id,
        changed.auth_mode.value,
        dict(changed.tags),
        _end_user(changed),
        error.type if error else "",
        error.description if error else "",
    )
    assert row is not None, "the environment of a changed connection exists"
    return int(row["position"])


def _end_user(changed: Connection) -> dict[str, str] | None:
    end_user = changed.end_user  # set by connect sessions (issue 11)
    if end_user is None:
        return None
    organization = changed.organization
    document = {
        "id": end_user.id,
        "email": end_user.email,
        "display_name": end_user.display_name,
        "organization_id": organization.id if organization is not None else "",
    }
    return {k: v for k, v in document.items() if v}


_EVENT_COLUMNS = """position, event_id, event_type, event_time, environment_id, environment,
    integration_id, connection_id, provider, auth_mode, tags, end_user, error_type,
    error_description"""


def event_from_row(row: asyncpg.Record) -> ConnectionEvent:
    error = None
    if row["error_type"]:
        error = EventError(row["error_type"], row["error_description"])
    return ConnectionEvent(
        position=row["position"],
        event_id=row["event_id"],
        event_type=ConnectionEventType(row["event_type"]),
        event_time=row["event_time"],
        environment_id=row["environment_id"],
        environment=row["environment"],
        integration_id=row["integration_id"],
        connection_id=row["connection_id"],
        provider=row["provider"],
        auth_mode=AuthMode(row["auth_mode"]),
        tags=row["tags"],
        end_user=row["end_user"],
        error=error,
    )


class PostgresEventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_after(
        self, environment_id: UUID, position: int, limit: int
    ) -> list[ConnectionEvent]:
        rows = await self._db.fetch(
            f"""SELECT {_EVENT_COLUMNS} FROM connection_events
                WHERE environment_id = $1 AND position > $2
                ORDER BY position LIMIT $3""",  # noqa: S608
            environment_id,
            position,
            limit,
        )
        return [event_from_row(r) for r in rows]

    async def get(self, environment_id: UUID, event_id: UUID) -> ConnectionEvent | None:
        row = await self._db.fetchrow(
            f"""SELECT {_EVENT_COLUMNS} FROM connection_events
                WHERE environment_id = $1 AND event_id = $2""",  # noqa: S608
            environment_id,
            event_id,
        )
        return event_from_row(row) if row else None

    async def latest_position(self, environment_id: UUID) -> int:
        value = await self._db.fetchval(
            "SELECT max(position) FROM connection_events WHERE environment_id = $1",
            environment_id,
        )
        return int(value or 0)

    async def purged_through(self, environment_id: UUID) -> int:
        value = await self._db.fetchval(
            "SELECT purged_through FROM connection_event_purges WHERE environment_id = $1",
            environment_id,
        )
        return int(value or 0)

    async def purge(self, older_than: datetime, batch: int) -> int:
        """Deletes up to ``batch`` events older than ``older_than`` (their deliveries go with
        them) and records the highest deleted position per environment; returns the count."""
        async with self._db.transaction() as connection:
            rows = await connection.fetch(
                """WITH doomed AS (
                       SELECT position FROM connection_events WHERE event_time < $1
                       ORDER BY position LIMIT $2 FOR UPDATE SKIP LOCKED),
                   deleted AS (
                       DELETE FROM connection_events e USING doomed d
                       WHERE e.position = d.position RETURNING e.environment_id, e.position)
                   SELECT environment_id, max(position) AS through, count(*) AS n
                   FROM deleted GROUP BY environment_id""",
                older_than,
                batch,
            )
            await connection.executemany(
                """INSERT INTO connection_event_purges (environment_id, purged_through)
                   VALUES ($1, $2) ON CONFLICT (environment_id) DO UPDATE
                   SET purged_through = greatest(connection_event_purges.purged_through,
                                                 excluded.purged_through)""",
                [(r["environment_id"], r["through"]) for r in rows],
            )
        return sum(int(r["n"]) for r in rows)


class _Wakeup:
    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self.flag = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        if not self._hub.listening:
            # Announcements may be missed while the listener reconnects: re-read soon instead.
            seconds = min(seconds, self._hub.unnotified_poll_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flag.wait(), timeout=max(seconds, 0.0))
        self.flag.clear()


class EventHub:
    """Wakes the watchers of an environment when the database announces one of its events
    (and every watcher when the listener reconnects, since announcements may have been lost)."""

    def __init__(self, listener: ChangeListener, *, unnotified_poll_seconds: float = 1.0) -> None:
        self._listener = listener
        self._subscribers: dict[UUID, set[_Wakeup]] = {}
        self._closed = False
        self._delivery_waiters: set[_Wakeup] = set()
        self.unnotified_poll_seconds = unnotified_poll_seconds
        listener.subscribe(self._on_change, self._wake_all)

    @property
    def listening(self) -> bool:
        return self._listener.healthy

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._wake_all()

    def _on_change(self, parts: list[str]) -> None:
        if parts[0] == "w":
            for wakeup in self._delivery_waiters:
                wakeup.flag.set()
            return
        if parts[0] == "e" and len(parts) == 3:
            try:
                environment_id = UUID(parts[1])
            except ValueError:
                return
            for wakeup in self._subscribers.get(environment_id, ()):
                wakeup.flag.set()

    def _wake_all(self) -> None:
        for wakeup in self._delivery_waiters:
            wakeup.flag.set()
        for wakeups in self._subscribers.values():
            for wakeup in wakeups:
                wakeup.flag.set()

    @contextlib.contextmanager
    def subscribe_deliveries(self) -> Iterator[_Wakeup]:
        """Woken when any transaction committed new webhook deliveries (or may have)."""
        wakeup = _Wakeup(self)
        self._delivery_waiters.add(wakeup)
        try:
            yield wakeup
        finally:
            self._delivery_waiters.discard(wakeup)

    def wake_deliveries(self) -> None:
        """Wakes the dispatcher from inside the process (an attempt finished, a redelivery)."""
        for wakeup in self._delivery_waiters:
            wakeup.flag.set()

    @contextlib.contextmanager
    def subscribe(self, environment_id: UUID) -> Iterator[_Wakeup]:
        wakeup = _Wakeup(self)
        self._subscribers.setdefault(environment_id, set()).add(wakeup)
        try:
            yield wakeup
        finally:
            wakeups = self._subscribers.get(environment_id)
            if wakeups is not None:
                wakeups.discard(wakeup)
                if not wakeups:
                    del self._subscribers[environment_id]
