"""Which gRPC methods are audited, and the ids their messages name (the recording itself is
transport-neutral: :mod:`credbroker.admission.audit`)."""

from __future__ import annotations

import re
from typing import Any

from credbroker.admission.audit import Audit
from credbroker.domain.validation import CONNECTION_ID_PATTERN, INTEGRATION_ID_PATTERN

_INTEGRATIONS = "/credbroker.v1.IntegrationService/"
_CONNECTIONS = "/credbroker.v1.ConnectionService/"
_WEBHOOKS = "/credbroker.v1.WebhookService/"

REVEAL_METHODS = frozenset({_CONNECTIONS + "AccessCredentials"})
MUTATING_METHODS = frozenset(
    {
        _INTEGRATIONS + "CreateIntegration",
        _INTEGRATIONS + "UpdateIntegration",
        _INTEGRATIONS + "DeleteIntegration",
        _CONNECTIONS + "CreateConnection",
        _CONNECTIONS + "UpdateConnection",
        _CONNECTIONS + "DeleteConnection",
        _CONNECTIONS + "VerifyConnection",
        _WEBHOOKS + "CreateWebhookEndpoint",
        _WEBHOOKS + "UpdateWebhookEndpoint",
        _WEBHOOKS + "DeleteWebhookEndpoint",
        _WEBHOOKS + "RotateWebhookSecret",
        _WEBHOOKS + "RedeliverWebhookEvent",
    }
)


def audit_rule(method: str) -> Audit:
    if method in REVEAL_METHODS:
        return Audit.REVEAL
    if method in MUTATING_METHODS:
        return Audit.MUTATION
    return Audit.NONE


INVALID_ID = "<invalid>"


def _recordable(value: str, pattern: re.Pattern[str]) -> str:
    """The id itself if it is well-formed; invalid input is never copied into the trail."""
    return value if not value or pattern.fullmatch(value) else INVALID_ID


def resource_ids(message: Any) -> tuple[str, str]:
    """(integration_id, connection_id) named by a request or response message, '' if none."""
    for nested in ("connection", "integration"):
        if hasattr(message, nested) and message.HasField(nested):
            message = getattr(message, nested)
            break
    return (
        _recordable(getattr(message, "integration_id", ""), INTEGRATION_ID_PATTERN),
        _recordable(getattr(message, "connection_id", ""), CONNECTION_ID_PATTERN),
    )


def created_connection_id(response: Any) -> str:
    """The connection id a response names (a generated one for CreateConnection)."""
    return resource_ids(response)[1]
