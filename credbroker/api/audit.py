"""Which gRPC methods are audited, and the ids their messages name (the recording itself is
transport-neutral: :mod:`credbroker.admission.audit`)."""

from __future__ import annotations

from typing import Any

from credbroker.admission.audit import Audit, recordable

_INTEGRATIONS = "/credbroker.v1.IntegrationService/"
_CONNECTIONS = "/credbroker.v1.ConnectionService/"
_WEBHOOKS = "/credbroker.v1.WebhookService/"
_SESSIONS = "/credbroker.v1.ConnectSessionService/"

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
        _SESSIONS + "CreateConnectSession",
        _SESSIONS + "DeleteConnectSession",
    }
)


def audit_rule(method: str) -> Audit:
    if method in REVEAL_METHODS:
        return Audit.REVEAL
    if method in MUTATING_METHODS:
        return Audit.MUTATION
    return Audit.NONE


def resource_ids(message: Any) -> tuple[str, str]:
    """(integration_id, connection_id) named by a request or response message, '' if none."""
    for nested in ("connection", "integration"):
        if hasattr(message, nested) and message.HasField(nested):
            message = getattr(message, nested)
            break
    return recordable(getattr(message, "integration_id", ""), getattr(message, "connection_id", ""))


def created_connection_id(response: Any) -> str:
    """The connection id a response names (a generated one for CreateConnection)."""
    return resource_ids(response)[1]
