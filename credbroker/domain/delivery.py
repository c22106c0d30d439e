"""Sending connection events to webhook endpoints: at least once, in order per connection, with
exponential backoff and jitter over a bounded horizon, a timeout per attempt, a per-endpoint
circuit breaker, and every attempt recorded.

Deliveries are rows written in the event's transaction. Every server runs a
:class:`DeliveryDispatcher`; a dispatcher *claims* due deliveries with row locks
(``FOR UPDATE SKIP LOCKED``) and a lease, so each attempt is made by one server. A server that
dies mid-attempt leaves its lease to expire; the delivery is then retried by any server (the
receiver may see the event twice, with the same ``event_id``, only after such an incomplete or
failed attempt). The dispatcher is woken by the database's announcement of new deliveries and
sleeps until the next retry is due otherwise: no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import structlog

from credbroker.background import Outage
from credbroker.domain.errors import DomainError
from credbroker.domain.events import ConnectionEvent
from credbroker.domain.ports import Cipher
from credbroker.domain.webhooks import PREVIOUS_SECRET_PURPOSE, SECRET_PURPOSE, endpoint_binding

log = structlog.get_logger("credbroker.webhooks")

USER_AGENT = "credbroker-webhooks/1"
AUTH_MODES = {"api_key": "API_KEY", "basic": "BASIC"}


def webhook_body(event: ConnectionEvent) -> bytes:
    """The reference auth-webhook body, plus credbroker's ``event_id``, ``event_type`` and
    ``event_time``. Deterministic: every attempt of an event sends the same bytes."""
    document: dict[str, Any] = {
        "from": "credbroker",
        "type": "auth",
        "operation": event.operation,
        "success": event.success,
        "connectionId": event.connection_id,
        "providerConfigKey": event.integration_id,
        "authMode": AUTH_MODES[event.auth_mode.value],
        "provider": event.provider,
        "environment": event.environment,
        "tags": dict(event.tags),
        "event_id": str(event.event_id),
        "event_type": event.event_type.value,
        "event_time": event.event_time.isoformat().replace("+00:00", "Z"),
    }
    if event.end_user:
        end_user: dict[str, Any] = {
            "endUserId": event.end_user.get("id", ""),
            "tags": dict(event.tags),
        }
        if event.end_user.get("email"):
            end_user["endUserEmail"] = event.end_user["email"]
        if event.end_user.get("organization_id"):
            end_user["organizationId"] = event.end_user["organization_id"]
        document["endUser"] = end_user
    if event.error is not None:
        document["error"] = {"type": event.error.type, "description": event.error.description}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_headers(
    body: bytes, secret: str, previous: str | None, timestamp: int, event_id: UUID
) -> dict[str, str]:
    """``X-Nango-Hmac-Sha256``: hex HMAC-SHA256 of the body (what the reference SDK checks);
    during a rotation overlap it is made with the previous secret, as the reference does, so
    receivers not yet updated keep working. ``Credbroker-Signature``: ``t=<unix>,v1=<hex HMAC of
    "<t>.<body>">`` under the current secret, plus a second ``v1`` under the previous one while
    it still signs."""
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}", f"v1={_hmac_hex(secret, signed)}"]
    if previous is not None:
        parts.append(f"v1={_hmac_hex(previous, signed)}")
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "x-nango-hmac-sha256": _hmac_hex(previous if previous is not None else secret, body),
        "credbroker-signature": ",".join(parts),
        "credbroker-event-id": str(event_id),
    }


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 5.0
    max_seconds: float = 3600.0
    horizon_seconds: float = 86400.0
    timeout_seconds: float = 10.0
    circuit_failures: int = 5
    circuit_cooldown_seconds: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds before the attempt after ``attempt`` (1-based): exponential, capped, with
        jitter in [50 %, 100 %] so that retries of many deliveries spread out."""
        exponential = self.base_seconds * 2.0 ** min(attempt - 1, 30)
        return min(self.max_seconds, exponential) * rng.uniform(0.5, 1.0)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery stays reserved: the attempt's timeout plus a margin."""
        return self.timeout_seconds + 5.0


@dataclass(frozen=True)
class ClaimedDelivery:
    delivery_id: int
    lease_token: UUID
    attempt_number: int
    endpoint_id: UUID
    environment_id: UUID
    url: str = field(repr=False)
    secret_blob: bytes = field(repr=False)
    previous_secret_blob: bytes | None = field(repr=False)
    event: ConnectionEvent


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt got: an HTTP status (0 if none) and an error naming what went wrong
    (never a URL, header or body)."""

    http_status: int
    error: str = ""
    duration_ms: int = 0

    @property
    def succeeded(self) -> bool:
        return 200 <= self.http_status < 300


class DeliveryStore(Protocol):
    async def claim(
        self,
        *,
        limit: int,
        busy_endpoints: Sequence[UUID],
        per_endpoint: int,
        policy: RetryPolicy,
        lease_token: UUID,
    ) -> list[ClaimedDelivery]: ...

    async def finish(
        self,
        claimed: ClaimedDelivery,
        result: AttemptResult,
        *,
        retry_in: float,
        policy: RetryPolicy,
    ) -> None:
        """Records the attempt; a failure is retried in ``retry_in`` seconds unless that passes
        the horizon (then the delivery is failed). Updates the endpoint's circuit breaker."""
        ...

    async def seconds_until_due(self, busy_endpoints: Sequence[UUID]) -> float | None: ...

    async def expire(self, policy: RetryPolicy) -> int:
        """Fails pending deliveries older than the horizon that no server is attempting."""
        ...


class WebhookSender(Protocol):
    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult: ...


class DeliveryWakeups(Protocol):
    def subscribe_deliveries(self) -> contextlib.AbstractContextManager[Any]: ...

    def wake_deliveries(self) -> None: ...


MAX_IDLE_SECONDS = 30.0
SWEEP_SECONDS = 60.0


class DeliveryDispatcher:
    def __init__(
        self,
        store: DeliveryStore,
        sender: WebhookSender,
        cipher: Cipher,
        wakeups: DeliveryWakeups,
        policy: RetryPolicy,
        *,
        concurrency: int = 32,
        per_endpoint: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._cipher = cipher
        self._wakeups = wakeups
        self._policy = policy
        self._concurrency = concurrency
        self._per_endpoint = per_endpoint
        self._rng = rng or random.Random()
        self._in_flight: dict[asyncio.Task[None], UUID] = {}
        self._by_endpoint: Counter[UUID] = Counter()

    def _busy(self) -> list[UUID]:
        return [e for e, n in self._by_endpoint.items() if n >= self._per_endpoint]

    async def run(self) -> None:
        """Claims and sends until cancelled; database trouble is logged and retried."""
        last_sweep = 0.0
        outage = Outage("webhook dispatcher")
        with self._wakeups.subscribe_deliveries() as wakeup:
            while True:
                try:
                    if time.monotonic() - last_sweep > SWEEP_SECONDS:
                        last_sweep = time.monotonic()
                        expired = await self._store.expire(self._policy)
                        if expired:
                            log.warning("webhook deliveries given up", count=expired)
                    claimed = await self._claim_some()
                    outage.recovered()
                    if claimed:
                        continue
                    due = await self._store.seconds_until_due(self._busy())
                    wait = MAX_IDLE_SECONDS if due is None else min(MAX_IDLE_SECONDS, due)
                    # Due now but nothing claimable (another server holds its probe): do not spin.
                    await wakeup.wait(max(wait, 0.2))
                except Exception as exc:  # noqa: BLE001 - the dispatcher must outlive any failure
                    await asyncio.sleep(outage.failed(exc))

    async def _claim_some(self) -> bool:
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return False
        claimed = await self._store.claim(
            limit=free,
            busy_endpoints=self._busy(),
            per_endpoint=self._per_endpoint,
            policy=self._policy,
            lease_token=uuid.uuid4(),
        )
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(delivery))
            self._in_flight[task] = delivery.endpoint_id
            self._by_endpoint[delivery.endpoint_id] += 1
            task.add_done_callback(self._done)
        return bool(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a delivery failure: the lease expires and the delivery is retried.
            log.error("webhook attempt crashed", error_type=type(task.exception()).__name__)
        endpoint_id = self._in_flight.pop(task, None)
        if endpoint_id is not None:
            self._by_endpoint[endpoint_id] -= 1
            if self._by_endpoint[endpoint_id] <= 0:
                del self._by_endpoint[endpoint_id]
        self._wakeups.wake_deliveries()

    def _secrets(self, delivery: ClaimedDelivery) -> tuple[str, str | None]:
        bound = endpoint_binding(delivery.environment_id, delivery.endpoint_id)
        secret = self._cipher.decrypt(delivery.secret_blob, purpose=SECRET_PURPOSE, binding=bound)
        previous = None
        if delivery.previous_secret_blob is not None:
            previous = self._cipher.decrypt(
                delivery.previous_secret_blob, purpose=PREVIOUS_SECRET_PURPOSE, binding=bound
            ).decode("utf-8")
        return secret.decode("utf-8"), previous

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        started = time.monotonic()
        try:
            secret, previous = self._secrets(delivery)
            body = webhook_body(delivery.event)
            headers = signature_headers(
                body, secret, previous, int(time.time()), delivery.event.event_id
            )
            try:
                result = await asyncio.wait_for(
                    self._sender.send(delivery.url, body, headers), self._policy.timeout_seconds
                )
            except TimeoutError:
                result = AttemptResult(0, "timed out")
        except DomainError as exc:  # e.g. an undecryptable secret: recorded, retried later
            result = AttemptResult(0, f"cannot sign: {exc.reason}")
        except asyncio.CancelledError:
            result = AttemptResult(0, "the server stopped during the attempt")
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._store.finish(delivery, result, retry_in=0.0, policy=self._policy)
                )
            raise
        result = AttemptResult(
            result.http_status, result.error, int((time.monotonic() - started) * 1000)
        )
        retry_in = (
            0.0 if result.succeeded else self._policy.delay(delivery.attempt_number, self._rng)
        )
        try:
            await self._store.finish(delivery, result, retry_in=retry_in, policy=self._policy)
        except Exception as exc:  # noqa: BLE001 - any failure to record it ends the same way
            # The lease expires and another attempt follows: at least once, never lost.
            log.warning("webhook attempt not recorded", error_type=type(exc).__name__)
        log.info(
            "webhook attempt",
            delivery_id=delivery.delivery_id,
            attempt=delivery.attempt_number,
            http_status=result.http_status,
            error=result.error or None,
            duration_ms=result.duration_ms,
        )

    async def stop(self, grace: float) -> None:
        """Lets attempts in flight finish for ``grace`` seconds, then cancels the rest (they
        are recorded as failed and retried at once by any server)."""
        tasks = list(self._in_flight)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
