"""Webhook endpoints of an environment: where connection events are sent, signed with a secret
only the caller that created (or rotated) it ever sees.

Signing secrets are envelope-encrypted before storage, like credentials, and bound to their
endpoint row; the dispatcher (:mod:`credbroker.domain.delivery`) decrypts them to sign.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import urlsplit
from uuid import UUID

from credbroker.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from credbroker.domain.events import ConnectionEvent, check_event_types
from credbroker.domain.models import Page, Principal
from credbroker.domain.ports import Binding, Cipher
from credbroker.domain.validation import MAX_DISPLAY_NAME, Violations, check_page_size

SECRET_PURPOSE = "webhook_endpoint.signing_secret"  # noqa: S105 - a name, not a secret
PREVIOUS_SECRET_PURPOSE = "webhook_endpoint.previous_signing_secret"  # noqa: S105
SECRET_PREFIX = "cbwhsec_"  # noqa: S105 - the prefix of generated secrets
MAX_ENDPOINTS = 20
MAX_URL_LENGTH = 2048
DEFAULT_OVERLAP = timedelta(hours=1)
MAX_OVERLAP = timedelta(days=7)
UPDATABLE_PATHS = frozenset({"url", "events", "description", "disabled"})
ENDPOINT_NOT_FOUND = "webhook endpoint not found"


def endpoint_binding(environment_id: UUID, endpoint_id: UUID) -> Binding:
    """An endpoint is found by its environment and id; binding v1 had the same ids."""
    ids = (environment_id.bytes, endpoint_id.bytes)
    return Binding(ids, ids)


def new_signing_secret() -> str:
    """256 random bits, URL-safe; used as the HMAC key as its UTF-8 bytes."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class WebhookEndpoint:
    id: UUID
    environment_id: UUID
    url: str
    event_types: tuple[str, ...]
    description: str
    disabled: bool
    create_time: datetime
    update_time: datetime
    previous_secret_expire_time: datetime | None = None
    consecutive_failures: int = 0
    circuit_open_until: datetime | None = None


@dataclass(frozen=True)
class NewWebhookEndpoint:
    id: UUID
    environment_id: UUID
    url: str
    event_types: tuple[str, ...]
    description: str
    secret_blob: bytes = field(repr=False)


@dataclass(frozen=True)
class EndpointChanges:
    """Replacement values; None keeps the stored one."""

    url: str | None = None
    event_types: tuple[str, ...] | None = None
    description: str | None = None
    disabled: bool | None = None


class DeliveryState(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class AttemptOutcome(enum.Enum):
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class WebhookAttempt:
    attempt_number: int
    start_time: datetime
    duration_ms: int
    outcome: AttemptOutcome
    http_status: int
    error: str


@dataclass(frozen=True)
class WebhookDelivery:
    delivery_id: int
    endpoint_id: UUID
    event: ConnectionEvent
    redelivery: bool
    state: DeliveryState
    attempt_count: int
    create_time: datetime
    next_attempt_time: datetime | None
    finish_time: datetime | None
    attempts: tuple[WebhookAttempt, ...] = ()


class WebhookRepository(Protocol):
    async def count(self, environment_id: UUID) -> int: ...

    async def create(self, endpoint: NewWebhookEndpoint) -> WebhookEndpoint: ...

    async def list_endpoints(self, environment_id: UUID) -> list[WebhookEndpoint]: ...

    async def get(self, environment_id: UUID, endpoint_id: UUID) -> WebhookEndpoint | None: ...

    async def secret_blob(self, environment_id: UUID, endpoint_id: UUID) -> bytes | None: ...

    async def update(
        self, environment_id: UUID, endpoint_id: UUID, changes: EndpointChanges
    ) -> WebhookEndpoint | None: ...

    async def rotate_secret(
        self,
        environment_id: UUID,
        endpoint_id: UUID,
        *,
        secret_blob: bytes,
        previous_blob: bytes,
        previous_expire_time: datetime,
    ) -> WebhookEndpoint | None: ...

    async def delete(self, environment_id: UUID, endpoint_id: UUID) -> bool: ...

    async def list_deliveries(
        self,
        environment_id: UUID,
        *,
        endpoint_id: UUID | None,
        event_id: UUID | None,
        before: int | None,
        limit: int,
    ) -> list[WebhookDelivery]:
        """Newest first, each with its attempts."""
        ...

    async def redeliver(
        self, environment_id: UUID, endpoint_id: UUID, event_id: UUID
    ) -> WebhookDelivery | None:
        """A new pending delivery of a retained event; None if endpoint or event is missing."""
        ...


class DestinationPolicy(Protocol):
    async def check(self, url: str) -> None:
        """Raises FailedPreconditionError (reason DESTINATION_NOT_ALLOWED) if the outbound
        policy refuses the URL's host (private addresses, plain http)."""
        ...


class DeliveryWaker(Protocol):
    def wake_deliveries(self) -> None: ...


def check_webhook_url(v: Violations, field_name: str, url: str) -> None:
    if not url:
        v.add(field_name, "is required")
        return
    if len(url) > MAX_URL_LENGTH:
        v.add(field_name, f"must be at most {MAX_URL_LENGTH} characters")
        return
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        v.add(field_name, "must not contain spaces or control characters")
        return
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        v.add(field_name, "is not a valid URL")
        return
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        v.add(field_name, "must be an https URL with a host")
    elif parts.username is not None or parts.password is not None:
        v.add(field_name, "must not contain a user name or password")
    elif parts.fragment:
        v.add(field_name, "must not have a fragment")
    elif port == 0:
        v.add(field_name, "must not use port 0")


def _check_description(v: Violations, field_name: str, description: str) -> None:
    if len(description) > MAX_DISPLAY_NAME or any(
        ord(ch) < 0x20 or ord(ch) == 0x7F for ch in description
    ):
        v.add(field_name, f"must be at most {MAX_DISPLAY_NAME} characters, no control characters")


def parse_uuid(field_name: str, value: str) -> UUID:
    try:
        if len(value) != 36:
            raise ValueError
        return UUID(value)
    except ValueError:
        raise InvalidArgumentError.single(
            field_name, "must be an id returned by the server"
        ) from None


def _endpoint_not_found() -> NotFoundError:
    return NotFoundError(ENDPOINT_NOT_FOUND, reason="WEBHOOK_ENDPOINT_NOT_FOUND")


class WebhookService:
    def __init__(
        self,
        repository: WebhookRepository,
        cipher: Cipher,
        destinations: DestinationPolicy,
        waker: DeliveryWaker | None = None,
    ) -> None:
        self._repository = repository
        self._cipher = cipher
        self._destinations = destinations
        self._waker = waker

    def _encrypt(self, secret: str, purpose: str, environment_id: UUID, endpoint_id: UUID) -> bytes:
        return self._cipher.encrypt(
            secret.encode("utf-8"),
            purpose=purpose,
            binding=endpoint_binding(environment_id, endpoint_id),
        )

    async def create(
        self, principal: Principal, *, url: str, events: Sequence[str], description: str = ""
    ) -> tuple[WebhookEndpoint, str]:
        """The new endpoint and its signing secret (returned only here and by rotation)."""
        v = Violations()
        check_webhook_url(v, "url", url)
        check_event_types(v, "events", events)
        _check_description(v, "description", description)
        v.raise_if_any()
        await self._destinations.check(url)
        if await self._repository.count(principal.environment_id) >= MAX_ENDPOINTS:
            raise FailedPreconditionError(
                f"an environment has at most {MAX_ENDPOINTS} webhook endpoints",
                reason="TOO_MANY_WEBHOOK_ENDPOINTS",
            )
        endpoint_id = uuid.uuid4()
        secret = new_signing_secret()
        endpoint = await self._repository.create(
            NewWebhookEndpoint(
                id=endpoint_id,
                environment_id=principal.environment_id,
                url=url,
                event_types=tuple(dict.fromkeys(events)),
                description=description,
                secret_blob=self._encrypt(
                    secret, SECRET_PURPOSE, principal.environment_id, endpoint_id
                ),
            )
        )
        return endpoint, secret

    async def list_endpoints(self, principal: Principal) -> list[WebhookEndpoint]:
        return await self._repository.list_endpoints(principal.environment_id)

    async def update(
        self,
        principal: Principal,
        endpoint_id: str,
        paths: frozenset[str],
        *,
        url: str = "",
        events: Sequence[str] = (),
        description: str = "",
        disabled: bool = False,
    ) -> WebhookEndpoint:
        unknown = sorted(paths - UPDATABLE_PATHS)
        if unknown:
            raise InvalidArgumentError.single("update_mask", f"unknown field {unknown[0]}")
        if not paths:
            raise InvalidArgumentError.single("update_mask", "names no field to update")
        identifier = parse_uuid("webhook_endpoint.endpoint_id", endpoint_id)
        v = Violations()
        if "url" in paths:
            check_webhook_url(v, "webhook_endpoint.url", url)
        if "events" in paths:
            check_event_types(v, "webhook_endpoint.events", events)
        if "description" in paths:
            _check_description(v, "webhook_endpoint.description", description)
        v.raise_if_any()
        if "url" in paths:
            await self._destinations.check(url)
        updated = await self._repository.update(
            principal.environment_id,
            identifier,
            EndpointChanges(
                url=url if "url" in paths else None,
                event_types=tuple(dict.fromkeys(events)) if "events" in paths else None,
                description=description if "description" in paths else None,
                disabled=disabled if "disabled" in paths else None,
            ),
        )
        if updated is None:
            raise _endpoint_not_found()
        if self._waker is not None and "disabled" in paths and not disabled:
            self._waker.wake_deliveries()
        return updated

    async def delete(self, principal: Principal, endpoint_id: str) -> None:
        identifier = parse_uuid("endpoint_id", endpoint_id)
        if not await self._repository.delete(principal.environment_id, identifier):
            raise _endpoint_not_found()

    async def rotate_secret(
        self, principal: Principal, endpoint_id: str, overlap: timedelta | None = None
    ) -> tuple[WebhookEndpoint, str]:
        """A new signing secret; the current one keeps signing (beside it) for ``overlap``."""
        identifier = parse_uuid("endpoint_id", endpoint_id)
        overlap = DEFAULT_OVERLAP if overlap is None else overlap
        if not timedelta(0) <= overlap <= MAX_OVERLAP:
            raise InvalidArgumentError.single("overlap", "must be between 0 and 7 days")
        environment_id = principal.environment_id
        current_blob = await self._repository.secret_blob(environment_id, identifier)
        if current_blob is None:
            raise _endpoint_not_found()
        bound = endpoint_binding(environment_id, identifier)
        current = self._cipher.decrypt(current_blob, purpose=SECRET_PURPOSE, binding=bound)
        secret = new_signing_secret()
        rotated = await self._repository.rotate_secret(
            environment_id,
            identifier,
            secret_blob=self._encrypt(secret, SECRET_PURPOSE, environment_id, identifier),
            previous_blob=self._cipher.encrypt(
                current, purpose=PREVIOUS_SECRET_PURPOSE, binding=bound
            ),
            previous_expire_time=datetime.now(UTC) + overlap,
        )
        if rotated is None:
            raise _endpoint_not_found()
        return rotated, secret

    async def list_deliveries(
        self,
        principal: Principal,
        *,
        endpoint_id: str,
        event_id: str,
        page_size: int,
        before: int | None,
    ) -> Page[WebhookDelivery]:
        v = Violations()
        limit = check_page_size(v, "page_size", page_size)
        v.raise_if_any()
        rows = await self._repository.list_deliveries(
            principal.environment_id,
            endpoint_id=parse_uuid("endpoint_id", endpoint_id) if endpoint_id else None,
            event_id=parse_uuid("event_id", event_id) if event_id else None,
            before=before,
            limit=limit + 1,
        )
        items = rows[:limit]
        cursor = (str(items[-1].delivery_id),) if len(rows) > limit and items else None
        return Page(items, cursor)

    async def redeliver(
        self, principal: Principal, endpoint_id: str, event_id: str
    ) -> WebhookDelivery:
        endpoint = parse_uuid("endpoint_id", endpoint_id)
        event = parse_uuid("event_id", event_id)
        delivery = await self._repository.redeliver(principal.environment_id, endpoint, event)
        if delivery is None:
            raise NotFoundError(
                "webhook endpoint or retained event not found",
                reason="WEBHOOK_ENDPOINT_OR_EVENT_NOT_FOUND",
            )
        if self._waker is not None:
            self._waker.wake_deliveries()
        return delivery
