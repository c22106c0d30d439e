"""Connection events: what changed, as written to the outbox in the same transaction as the change.

Every path that changes a connection (gRPC, HTTP, the connect page, background re-checks) goes
through :class:`credbroker.domain.connections.ConnectionService` and its repository, which writes
the event with the change: no transport emits events. An event never holds a secret.

Events of one environment get increasing *positions* in commit order (the repository serialises
the event insert per environment), so "every event after position N" is a complete, stable answer:
that is the resume token of :class:`ConnectionEventService.watch` and the order webhooks follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from uuid import UUID

from credbroker.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from credbroker.domain.models import AuthMode, Principal, VerificationState
from credbroker.domain.validation import Violations, check_integration_id


class ConnectionEventType(enum.Enum):
    """The public event names (webhook ``event_type``, Watch filters). Stored in the database."""

    CREATED = "connection.created"
    CREDENTIALS_REPLACED = "connection.credentials_replaced"
    DELETED = "connection.deleted"
    VERIFICATION_FAILED = "connection.verification_failed"
    VERIFICATION_RECOVERED = "connection.verification_recovered"


EVENT_TYPE_NAMES = tuple(t.value for t in ConnectionEventType)

# The reference auth webhook's `operation` for each event.
OPERATIONS = {
    ConnectionEventType.CREATED: "creation",
    ConnectionEventType.CREDENTIALS_REPLACED: "override",
    ConnectionEventType.DELETED: "deletion",
    ConnectionEventType.VERIFICATION_FAILED: "refresh",
    ConnectionEventType.VERIFICATION_RECOVERED: "refresh",
}

_FAILING = frozenset({VerificationState.REJECTED, VerificationState.ERROR})


@dataclass(frozen=True)
class EventError:
    """Why a verification failed: a type (``credentials_rejected`` or ``provider_unavailable``)
    and a description naming the provider's HTTP status, never a secret."""

    type: str
    description: str


def verification_event(
    old: VerificationState, new: VerificationState, http_status: int
) -> tuple[ConnectionEventType, EventError | None] | None:
    """The event a recorded verification produces: a failure after a non-failure, or a success
    after a failure; None otherwise (repeated failures and repeated successes are quiet)."""
    if new in _FAILING and old not in _FAILING:
        if new is VerificationState.REJECTED:
            error = EventError(
                "credentials_rejected", f"the provider refused the credentials (HTTP {http_status})"
            )
        else:
            status = f" (HTTP {http_status})" if http_status else ""
            error = EventError(
                "provider_unavailable", f"the provider could not verify the credentials{status}"
            )
        return ConnectionEventType.VERIFICATION_FAILED, error
    if new is VerificationState.VERIFIED and old in _FAILING:
        return ConnectionEventType.VERIFICATION_RECOVERED, None
    return None


@dataclass(frozen=True)
class ConnectionEvent:
    """One stored event. ``position`` orders the events of an environment (commit order)."""

    position: int
    event_id: UUID
    event_type: ConnectionEventType
    event_time: datetime
    environment_id: UUID
    environment: str
    integration_id: str
    connection_id: str
    provider: str
    auth_mode: AuthMode
    tags: Mapping[str, str] = field(default_factory=dict)
    end_user: Mapping[str, str] | None = None
    error: EventError | None = None

    @property
    def operation(self) -> str:
        return OPERATIONS[self.event_type]

    @property
    def success(self) -> bool:
        return self.event_type is not ConnectionEventType.VERIFICATION_FAILED


class EventStore(Protocol):
    async def list_after(
        self, environment_id: UUID, position: int, limit: int
    ) -> list[ConnectionEvent]:
        """The environment's events after ``position``, oldest first."""
        ...

    async def latest_position(self, environment_id: UUID) -> int:
        """The position of the environment's newest event; 0 if none."""
        ...

    async def purged_through(self, environment_id: UUID) -> int:
        """The highest position retention has deleted in the environment; 0 if none."""
        ...


class Wakeup(Protocol):
    async def wait(self, seconds: float) -> None:
        """Returns when the environment may have new events, or after ``seconds``."""
        ...


class EventNotifier(Protocol):
    """Wakes watchers when their environment's events change (LISTEN/NOTIFY in production)."""

    @property
    def closed(self) -> bool:
        """True once the server is shutting down: watchers end."""
        ...

    def subscribe(self, environment_id: UUID) -> contextlib.AbstractContextManager[Wakeup]: ...


@dataclass(frozen=True)
class WatchItem:
    """What a watcher receives: an event, or (``event`` None) a heartbeat. ``position`` is the
    resume token: everything of the environment up to it has been seen (or filtered out)."""

    position: int
    event: ConnectionEvent | None = None


@dataclass(frozen=True)
class WatchLimits:
    per_key: int = 8
    total: int = 64
    heartbeat_seconds: float = 15.0
    batch: int = 100


MAX_TOKEN_DIGITS = 18


def parse_resume_token(field_name: str, token: str) -> int | None:
    if not token:
        return None
    if not (token.isascii() and token.isdigit()) or len(token) > MAX_TOKEN_DIGITS:
        raise InvalidArgumentError.single(field_name, "is not a resume token issued by the server")
    return int(token)


def check_event_types(v: Violations, field_name: str, names: Sequence[str]) -> None:
    for index, name in enumerate(names):
        if name not in EVENT_TYPE_NAMES:
            v.add(f"{field_name}[{index}]", f"must be one of {', '.join(EVENT_TYPE_NAMES)}")


class ConnectionEventService:
    def __init__(
        self, store: EventStore, notifier: EventNotifier, limits: WatchLimits | None = None
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._limits = limits or WatchLimits()
        self._per_key: Counter[str] = Counter()
        self._total = 0

    @contextlib.contextmanager
    def _slot(self, key_id: str) -> Iterator[None]:
        if self._per_key[key_id] >= self._limits.per_key:
            raise ResourceExhaustedError(
                f"this key already has {self._limits.per_key} open watch streams",
                reason="TOO_MANY_WATCH_STREAMS",
            )
        if self._total >= self._limits.total:
            raise ResourceExhaustedError(
                "the server has no more room for watch streams", reason="TOO_MANY_WATCH_STREAMS"
            )
        self._per_key[key_id] += 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            self._per_key[key_id] -= 1
            if self._per_key[key_id] <= 0:
                del self._per_key[key_id]

    async def watch(
        self,
        principal: Principal,
        *,
        start_after: str,
        integration_id: str,
        event_types: Sequence[str],
    ) -> AsyncIterator[WatchItem]:
        """The environment's events after ``start_after`` (only new ones when empty), filtered,
        with a heartbeat first and after every quiet ``heartbeat_seconds``. Runs until the
        caller stops iterating or the server shuts down (UnavailableError)."""
        v = Violations()
        if integration_id:
            check_integration_id(v, "integration_id", integration_id)
        check_event_types(v, "event_types", event_types)
        v.raise_if_any()
        after = parse_resume_token("start_after", start_after)
        wanted = frozenset(ConnectionEventType(name) for name in event_types)
        environment_id = principal.environment_id
        with self._slot(principal.key_id), self._notifier.subscribe(environment_id) as wakeup:
            if after is None:
                after = await self._store.latest_position(environment_id)
            elif after < await self._store.purged_through(environment_id):
                raise FailedPreconditionError(
                    "events after this resume token are no longer retained; "
                    "re-read the connections, then watch without start_after",
                    reason="RESUME_TOKEN_EXPIRED",
                )
            yield WatchItem(after)
            loop = asyncio.get_running_loop()
            last_sent = loop.time()
            while True:
                events = await self._store.list_after(environment_id, after, self._limits.batch)
                for event in events:
                    after = event.position
                    if (not integration_id or event.integration_id == integration_id) and (
                        not wanted or event.event_type in wanted
                    ):
                        yield WatchItem(after, event)
                        last_sent = loop.time()
                if len(events) >= self._limits.batch:
                    continue
                if self._notifier.closed:
                    raise UnavailableError("the server is shutting down", reason="SHUTTING_DOWN")
                quiet = loop.time() - last_sent
                if quiet >= self._limits.heartbeat_seconds:
                    yield WatchItem(after)
                    last_sent = loop.time()
                    quiet = 0.0
                await wakeup.wait(self._limits.heartbeat_seconds - quiet)
                if self._notifier.closed:
                    raise UnavailableError("the server is shutting down", reason="SHUTTING_DOWN")
