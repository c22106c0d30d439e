"""Which gRPC methods are audited, and the ids their messages name (the recording itself is
transport-neutral: :mod:`credbroker.admission.audit`)."""

from __future__ import annotations

from typing import Any

from credbroker.admission.audit import Audit, ResourceIds, recordable

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


def resource_ids_of(message_class: Any) -> ResourceIds:
    """:func:`resource_ids` for the requests of one message class, resolved once at
    registration: a request that nests no ``connection`` or ``integration`` message (e.g.
    AccessCredentialsRequest) has its ids read directly, without the attribute probes (each
    missing attribute of a protobuf message raises and catches an AttributeError)."""
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    fields = getattr(descriptor, "fields_by_name", None)
    if fields is None or "connection" in fields or "integration" in fields:
        return resource_ids
    has_integration, has_connection = "integration_id" in fields, "connection_id" in fields

    def direct(message: Any) -> tuple[str, str]:
        return recordable(
            message.integration_id if has_integration else "",
            message.connection_id if has_connection else "",
        )

    return direct


def created_connection_id(response: Any) -> str:
    """The connection id a response names (a generated one for CreateConnection)."""
    return resource_ids(response)[1]
