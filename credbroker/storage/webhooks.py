"""Webhook endpoints, deliveries and attempts (migration 0008). Signing secrets arrive and leave
as ciphertext."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from credbroker.domain.delivery import AttemptResult, ClaimedDelivery, RetryPolicy
from credbroker.domain.webhooks import (
    AttemptOutcome,
    DeliveryState,
    EndpointChanges,
    NewWebhookEndpoint,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from credbroker.storage.db import Database
from credbroker.storage.events import event_from_row

_ENDPOINT_COLUMNS = """id, environment_id, url, event_types, description, disabled, create_time,
    update_time, CASE WHEN previous_secret_expire_time > now() THEN previous_secret_expire_time
    END AS previous_secret_expire_time, consecutive_failures, circuit_open_until"""


def _endpoint(row: asyncpg.Record) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        environment_id=row["environment_id"],
        url=row["url"],
        event_types=tuple(row["event_types"]),
        description=row["description"],
        disabled=row["disabled"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        previous_secret_expire_time=row["previous_secret_expire_time"],
        consecutive_failures=row["consecutive_failures"],
        circuit_open_until=row["circuit_open_until"],
    )


_EVENT_COLUMNS = """e.position, e.event_id, e.event_type, e.event_time, e.environment_id,
    e.environment, e.integration_id, e.connection_id, e.provider, e.auth_mode, e.tags,
    e.end_user, e.error_type, e.error_description"""


class PostgresWebhookRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def count(self, environment_id: UUID) -> int:
        value = await self._db.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE environment_id = $1", environment_id
        )
        return int(value)

    async def create(self, endpoint: NewWebhookEndpoint) -> WebhookEndpoint:
        row = await self._db.fetchrow(
            f"""INSERT INTO webhook_endpoints (id, environment_id, url, event_types, description,
                    secret_blob)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_ENDPOINT_COLUMNS}""",  # noqa: S608
            endpoint.id,
            endpoint.environment_id,
            endpoint.url,
            list(endpoint.event_types),
            endpoint.description,
            endpoint.secret_blob,
        )
        assert row is not None
        return _endpoint(row)

    async def list_endpoints(self, environment_id: UUID) -> list[WebhookEndpoint]:
        rows = await self._db.fetch(
            f"""SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE environment_id = $1
                ORDER BY create_time, id""",  # noqa: S608
            environment_id,
        )
        return [_endpoint(r) for r in rows]

    async def get(self, environment_id: UUID, endpoint_id: UUID) -> WebhookEndpoint | None:
        row = await self._db.fetchrow(
            f"""SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints
                WHERE environment_id = $1 AND id = $2""",  # noqa: S608
            environment_id,
            endpoint_id,
        )
        return _endpoint(row) if row else None

    async def secret_blob(self, environment_id: UUID, endpoint_id: UUID) -> bytes | None:
        value = await self._db.fetchval(
            "SELECT secret_blob FROM webhook_endpoints WHERE environment_id = $1 AND id = $2",
            environment_id,
            endpoint_id,
        )
        return bytes(value) if value is not None else None

    async def update(
        self, environment_id: UUID, endpoint_id: UUID, changes: EndpointChanges
    ) -> WebhookEndpoint | None:
        row = await self._db.fetchrow(
            f"""UPDATE webhook_endpoints SET
                    url = coalesce($3, url),
                    event_types = coalesce($4, event_types),
                    description = coalesce($5, description),
                    disabled = coalesce($6, disabled),
                    -- re-enabling (or a new URL) gives the endpoint a fresh circuit
                    consecutive_failures = CASE WHEN $3::text IS NULL AND $6 IS DISTINCT FROM false
                                                THEN consecutive_failures ELSE 0 END,
                    circuit_open_until = CASE WHEN $3::text IS NULL AND $6 IS DISTINCT FROM false
                                              THEN circuit_open_until END,
                    update_time = now()
                WHERE environment_id = $1 AND id = $2
                RETURNING {_ENDPOINT_COLUMNS}""",  # noqa: S608
            environment_id,
            endpoint_id,
            changes.url,
            list(changes.event_types) if changes.event_types is not None else None,
            changes.description,
            changes.disabled,
        )
        return _endpoint(row) if row else None

    async def rotate_secret(
        self,
        environment_id: UUID,
        endpoint_id: UUID,
        *,
        secret_blob: bytes,
        previous_blob: bytes,
        previous_expire_time: datetime,
    ) -> WebhookEndpoint | None:
        row = await self._db.fetchrow(
            f"""UPDATE webhook_endpoints SET secret_blob = $3, previous_secret_blob = $4,
                    previous_secret_expire_time = $5, update_time = now()
                WHERE environment_id = $1 AND id = $2
                RETURNING {_ENDPOINT_COLUMNS}""",  # noqa: S608
            environment_id,
            endpoint_id,
            secret_blob,
            previous_blob,
            previous_expire_time,
        )
        return _endpoint(row) if row else None

    async def delete(self, environment_id: UUID, endpoint_id: UUID) -> bool:
        status = await self._db.execute(
            "DELETE FROM webhook_endpoints WHERE environment_id = $1 AND id = $2",
            environment_id,
            endpoint_id,
        )
        return status != "DELETE 0"

    async def list_deliveries(
        self,
        environment_id: UUID,
        *,
        endpoint_id: UUID | None,
        event_id: UUID | None,
        before: int | None,
        limit: int,
    ) -> list[WebhookDelivery]:
        rows = await self._db.fetch(
            f"""SELECT d.id AS delivery_id, d.endpoint_id, d.redelivery, d.state,
                       d.attempt_count, d.create_time, d.next_attempt_time, d.finish_time,
                       {_EVENT_COLUMNS}
                FROM webhook_deliveries d JOIN connection_events e ON e.position = d.event_position
                WHERE d.environment_id = $1
                  AND ($2::uuid IS NULL OR d.endpoint_id = $2)
                  AND ($3::uuid IS NULL OR e.event_id = $3)
                  AND ($4::bigint IS NULL OR d.id < $4)
                ORDER BY d.id DESC LIMIT $5""",  # noqa: S608
            environment_id,
            endpoint_id,
            event_id,
            before,
            limit,
        )
        return await self._with_attempts(rows)

    async def _with_attempts(self, rows: Sequence[asyncpg.Record]) -> list[WebhookDelivery]:
        attempts: dict[int, list[WebhookAttempt]] = {}
        if rows:
            for a in await self._db.fetch(
                """SELECT delivery_id, attempt_number, start_time, duration_ms, outcome,
                          http_status, error
                   FROM webhook_attempts WHERE delivery_id = ANY($1::bigint[])
                   ORDER BY delivery_id, attempt_number""",
                [r["delivery_id"] for r in rows],
            ):
                attempts.setdefault(a["delivery_id"], []).append(
                    WebhookAttempt(
                        a["attempt_number"],
                        a["start_time"],
                        a["duration_ms"],
                        AttemptOutcome(a["outcome"]),
                        a["http_status"],
                        a["error"],
                    )
                )
        return [
            WebhookDelivery(
                delivery_id=r["delivery_id"],
                endpoint_id=r["endpoint_id"],
                event=event_from_row(r),
                redelivery=r["redelivery"],
                state=DeliveryState(r["state"]),
                attempt_count=r["attempt_count"],
                create_time=r["create_time"],
                next_attempt_time=r["next_attempt_time"] if r["state"] == "pending" else None,
                finish_time=r["finish_time"],
                attempts=tuple(attempts.get(r["delivery_id"], ())),
            )
            for r in rows
        ]

    async def redeliver(
        self, environment_id: UUID, endpoint_id: UUID, event_id: UUID
    ) -> WebhookDelivery | None:
        async with self._db.transaction() as tx:
            delivery_id = await tx.fetchval(
                """WITH inserted AS (
                       INSERT INTO webhook_deliveries (endpoint_id, environment_id, event_position,
                           integration_id, connection_id, redelivery)
                       SELECT w.id, w.environment_id, e.position, e.integration_id,
                              e.connection_id, true
                       FROM webhook_endpoints w
                       JOIN connection_events e ON e.environment_id = w.environment_id
                       WHERE w.environment_id = $1 AND w.id = $2 AND e.event_id = $3
                       RETURNING id)
                   SELECT id FROM inserted, pg_notify('credbroker_changes', 'w') n""",
                environment_id,
                endpoint_id,
                event_id,
            )
        if delivery_id is None:
            return None
        found = await self.list_deliveries(
            environment_id,
            endpoint_id=endpoint_id,
            event_id=event_id,
            before=delivery_id + 1,
            limit=1,
        )
        return found[0] if found else None


# Due deliveries that may be attempted now: not leased (or the lease expired), endpoint enabled
# with its circuit closed (or half-open: then at most one at a time), not busy in this process,
# and no earlier pending delivery of the same endpoint and connection (redeliveries aside).
_CLAIMABLE = """
    d.state = 'pending' AND d.next_attempt_time <= now()
    AND (d.lease_until IS NULL OR d.lease_until < now())
    AND NOT w.disabled
    AND (w.circuit_open_until IS NULL OR w.circuit_open_until <= now())
    AND d.endpoint_id <> ALL ($1::uuid[])
    AND (d.redelivery OR NOT EXISTS (
        SELECT 1 FROM webhook_deliveries p
        WHERE p.endpoint_id = d.endpoint_id AND p.integration_id = d.integration_id
          AND p.connection_id = d.connection_id AND p.state = 'pending' AND NOT p.redelivery
          AND p.event_position < d.event_position))"""

_CLAIM = f"""
WITH candidates AS (
    SELECT d.id, w.consecutive_failures >= $4 AS probing,
           row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.event_position, d.id) AS rank
    FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
    WHERE {_CLAIMABLE}
), chosen AS (
    SELECT d.id FROM webhook_deliveries d JOIN candidates c ON c.id = d.id
    WHERE c.rank <= CASE WHEN c.probing THEN 1 ELSE $2 END
      -- Re-checked on the row's latest version once locked (a concurrent claim may have
      -- leased it after this statement's snapshot): the CTE above alone would not be.
      AND d.state = 'pending' AND (d.lease_until IS NULL OR d.lease_until < now())
    ORDER BY d.next_attempt_time, d.id
    LIMIT $3
    FOR UPDATE OF d SKIP LOCKED
), abandoned AS (
    UPDATE webhook_attempts a SET outcome = 'abandoned',
        error = 'no outcome recorded (the server stopped or lost the database)'
    FROM chosen WHERE a.delivery_id = chosen.id AND a.outcome = 'in_progress'
), leased AS (
    UPDATE webhook_deliveries d SET lease_until = now() + $5 * interval '1 second',
        lease_token = $6, attempt_count = d.attempt_count + 1
    FROM chosen WHERE d.id = chosen.id
    RETURNING d.id, d.endpoint_id, d.environment_id, d.event_position, d.attempt_count
), started AS (
    INSERT INTO webhook_attempts (delivery_id, attempt_number, outcome)
    SELECT id, attempt_count, 'in_progress' FROM leased
)
SELECT l.id AS delivery_id, l.attempt_count, l.endpoint_id, w.url, w.secret_blob,
       CASE WHEN w.previous_secret_expire_time > now() THEN w.previous_secret_blob END
           AS previous_secret_blob,
       {_EVENT_COLUMNS}
FROM leased l
JOIN webhook_endpoints w ON w.id = l.endpoint_id
JOIN connection_events e ON e.position = l.event_position"""  # noqa: S608


class PostgresDeliveryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(
        self,
        *,
        limit: int,
        busy_endpoints: Sequence[UUID],
        per_endpoint: int,
        policy: RetryPolicy,
        lease_token: UUID,
    ) -> list[ClaimedDelivery]:
        rows = await self._db.fetch(
            _CLAIM,
            list(busy_endpoints),
            per_endpoint,
            limit,
            policy.circuit_failures,
            policy.lease_seconds,
            lease_token,
        )
        return [
            ClaimedDelivery(
                delivery_id=r["delivery_id"],
                lease_token=lease_token,
                attempt_number=r["attempt_count"],
                endpoint_id=r["endpoint_id"],
                environment_id=r["environment_id"],
                url=r["url"],
                secret_blob=bytes(r["secret_blob"]),
                previous_secret_blob=bytes(r["previous_secret_blob"])
                if r["previous_secret_blob"] is not None
                else None,
                event=event_from_row(r),
            )
            for r in rows
        ]

    async def finish(
        self,
        claimed: ClaimedDelivery,
        result: AttemptResult,
        *,
        retry_in: float,
        policy: RetryPolicy,
    ) -> None:
        succeeded = result.succeeded
        outcome = AttemptOutcome.SUCCEEDED if succeeded else AttemptOutcome.FAILED
        async with self._db.transaction() as tx:
            await tx.execute(
                """UPDATE webhook_attempts SET outcome = $3, http_status = $4, error = $5,
                       duration_ms = $6
                   WHERE delivery_id = $1 AND attempt_number = $2""",
                claimed.delivery_id,
                claimed.attempt_number,
                outcome.value,
                result.http_status,
                result.error[:200],
                result.duration_ms,
            )
            await tx.execute(
                """UPDATE webhook_deliveries SET
                       state = CASE WHEN $3 THEN 'delivered'
                                    WHEN create_time + $5 * interval '1 second'
                                         < clock_timestamp() + $4 * interval '1 second'
                                    THEN 'failed' ELSE 'pending' END,
                       next_attempt_time = clock_timestamp() + $4 * interval '1 second',
                       finish_time = CASE WHEN $3 OR create_time + $5 * interval '1 second'
                                               < clock_timestamp() + $4 * interval '1 second'
                                          THEN clock_timestamp() END,
                       last_http_status = $6, last_error = $7,
                       lease_until = NULL, lease_token = NULL
                   WHERE id = $1 AND lease_token = $2 AND state = 'pending'""",
                claimed.delivery_id,
                claimed.lease_token,
                succeeded,
                retry_in,
                policy.horizon_seconds,
                result.http_status,
                result.error[:200],
            )
            await tx.execute(
                """UPDATE webhook_endpoints SET
                       consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures + 1 END,
                       circuit_open_until = CASE
                           WHEN $2 THEN NULL
                           WHEN consecutive_failures + 1 >= $3
                           THEN clock_timestamp() + $4 * interval '1 second'
                           ELSE circuit_open_until END
                   WHERE id = $1""",
                claimed.endpoint_id,
                succeeded,
                policy.circuit_failures,
                policy.circuit_cooldown_seconds,
            )
            if succeeded:
                # The next event of this connection may go now: wake every dispatcher.
                await tx.execute("SELECT pg_notify('credbroker_changes', 'w')")

    async def seconds_until_due(self, busy_endpoints: Sequence[UUID]) -> float | None:
        value = await self._db.fetchval(
            """SELECT extract(epoch FROM min(greatest(d.next_attempt_time,
                          coalesce(d.lease_until, d.next_attempt_time),
                          coalesce(w.circuit_open_until, d.next_attempt_time)))
                          - clock_timestamp())
               FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
               WHERE d.state = 'pending' AND NOT w.disabled
                 AND d.endpoint_id <> ALL ($1::uuid[])
                 AND (d.redelivery OR NOT EXISTS (
                     SELECT 1 FROM webhook_deliveries p
                     WHERE p.endpoint_id = d.endpoint_id AND p.integration_id = d.integration_id
                       AND p.connection_id = d.connection_id AND p.state = 'pending'
                       AND NOT p.redelivery AND p.event_position < d.event_position))""",
            list(busy_endpoints),
        )
        return float(value) if value is not None else None

    async def expire(self, policy: RetryPolicy) -> int:
        status = await self._db.execute(
            """UPDATE webhook_deliveries SET state = 'failed', finish_time = clock_timestamp(),
                   last_error = CASE WHEN last_error = '' THEN 'not attempted within the horizon'
                                     ELSE last_error END
               WHERE state = 'pending' AND create_time + $1 * interval '1 second' < now()
                 AND (lease_until IS NULL OR lease_until < now())""",
            policy.horizon_seconds,
        )
        return int(status.split()[-1])
