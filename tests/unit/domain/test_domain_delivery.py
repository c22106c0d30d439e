"""Pure parts of webhook delivery: backoff with jitter, the body, the signatures, and which
verification outcomes are events."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import uuid
from datetime import UTC, datetime

import pytest

from credbroker.domain.delivery import RetryPolicy, signature_headers, webhook_body
from credbroker.domain.events import (
    ConnectionEvent,
    ConnectionEventType,
    EventError,
    verification_event,
)
from credbroker.domain.models import AuthMode, VerificationState


def _event(**overrides: object) -> ConnectionEvent:
    values: dict[str, object] = {
        "position": 7,
        "event_id": uuid.UUID("0b6f3c1e-0000-4000-8000-000000000001"),
        "event_type": ConnectionEventType.CREATED,
        "event_time": datetime(2026, 12, 1, 22, 0, tzinfo=UTC),
        "environment_id": uuid.uuid4(),
        "environment": "prod",
        "integration_id": "openai-prod",
        "connection_id": "user-42",
        "provider": "openai",
        "auth_mode": AuthMode.BASIC,
        "tags": {"end_user_id": "42"},
    }
    values.update(overrides)
    return ConnectionEvent(**values)  # type: ignore[arg-type]


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_seconds=5, max_seconds=60)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (40, 60)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # jitter spreads retries out


def test_body_is_the_reference_shape_and_deterministic() -> None:
    event = _event(end_user={"id": "42", "email": "a@b.c", "organization_id": "org-1"})
    body = webhook_body(event)
    assert body == webhook_body(event)
    document = json.loads(body)
    assert document == {
        "from": "credbroker",
        "type": "auth",
        "operation": "creation",
        "success": True,
        "connectionId": "user-42",
        "providerConfigKey": "openai-prod",
        "authMode": "BASIC",
        "provider": "openai",
        "environment": "prod",
        "tags": {"end_user_id": "42"},
        "endUser": {
            "endUserId": "42",
            "endUserEmail": "a@b.c",
            "organizationId": "org-1",
            "tags": {"end_user_id": "42"},
        },
        "event_id": "0b6f3c1e-0000-4000-8000-000000000001",
        "event_type": "connection.created",
        "event_time": "2026-12-01T22:00:00Z",
    }
    failed = json.loads(
        webhook_body(
            _event(
                event_type=ConnectionEventType.VERIFICATION_FAILED,
                error=EventError("credentials_rejected", "HTTP 401"),
            )
        )
    )
    assert (failed["operation"], failed["success"]) == ("refresh", False)
    assert failed["error"] == {"type": "credentials_rejected", "description": "HTTP 401"}
    assert "endUser" not in failed


def test_signatures_with_and_without_a_previous_secret() -> None:
    body = b'{"a":1}'
    event_id = uuid.uuid4()
    headers = signature_headers(body, "new", None, 1700000000, event_id)
    mac = hmac.new(b"new", body, hashlib.sha256).hexdigest()
    assert headers["x-nango-hmac-sha256"] == mac
    signed = hmac.new(b"new", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["credbroker-signature"] == f"t=1700000000,v1={signed}"
    assert headers["credbroker-event-id"] == str(event_id)
    overlap = signature_headers(body, "new", "old", 1700000000, event_id)
    assert overlap["x-nango-hmac-sha256"] == hmac.new(b"old", body, hashlib.sha256).hexdigest()
    old = hmac.new(b"old", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert overlap["credbroker-signature"] == f"t=1700000000,v1={signed},v1={old}"


V = VerificationState


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (V.UNVERIFIED, V.REJECTED, ConnectionEventType.VERIFICATION_FAILED),
        (V.VERIFIED, V.ERROR, ConnectionEventType.VERIFICATION_FAILED),
        (V.REJECTED, V.REJECTED, None),
        (V.REJECTED, V.ERROR, None),
        (V.ERROR, V.VERIFIED, ConnectionEventType.VERIFICATION_RECOVERED),
        (V.REJECTED, V.VERIFIED, ConnectionEventType.VERIFICATION_RECOVERED),
        (V.VERIFIED, V.VERIFIED, None),
        (V.UNVERIFIED, V.VERIFIED, None),
        (V.REJECTED, V.UNVERIFIED, None),
    ],
)
def test_verification_transitions(
    old: VerificationState, new: VerificationState, expected: ConnectionEventType | None
) -> None:
    transition = verification_event(old, new, 401)
    assert (transition[0] if transition else None) is expected
