"""Which scope each RPC needs. Methods missing here are denied (see the interceptor)."""

from __future__ import annotations

from credbroker.domain.models import Scope

_INTEGRATIONS = "/credbroker.v1.IntegrationService/"
_CONNECTIONS = "/credbroker.v1.ConnectionService/"
_WEBHOOKS = "/credbroker.v1.WebhookService/"
_SESSIONS = "/credbroker.v1.ConnectSessionService/"

REQUIRED_SCOPES: dict[str, Scope] = {
    _INTEGRATIONS + "CreateIntegration": Scope.INTEGRATIONS_WRITE,
    _INTEGRATIONS + "GetIntegration": Scope.INTEGRATIONS_READ,
    _INTEGRATIONS + "ListIntegrations": Scope.INTEGRATIONS_READ,
    _INTEGRATIONS + "UpdateIntegration": Scope.INTEGRATIONS_WRITE,
    _INTEGRATIONS + "DeleteIntegration": Scope.INTEGRATIONS_WRITE,
    _INTEGRATIONS + "ListProviders": Scope.INTEGRATIONS_READ,
    _INTEGRATIONS + "GetProvider": Scope.INTEGRATIONS_READ,
    _CONNECTIONS + "CreateConnection": Scope.CONNECTIONS_WRITE,
    _CONNECTIONS + "GetConnection": Scope.CONNECTIONS_READ,
    _CONNECTIONS + "ListConnections": Scope.CONNECTIONS_READ,
    _CONNECTIONS + "UpdateConnection": Scope.CONNECTIONS_WRITE,
    _CONNECTIONS + "DeleteConnection": Scope.CONNECTIONS_WRITE,
    _CONNECTIONS + "AccessCredentials": Scope.CREDENTIALS_READ,
    _CONNECTIONS + "VerifyConnection": Scope.CONNECTIONS_WRITE,
    _CONNECTIONS + "WatchConnections": Scope.CONNECTIONS_READ,
    "/credbroker.v1.AuditService/ListAuditEvents": Scope.AUDIT_READ,
    _WEBHOOKS + "CreateWebhookEndpoint": Scope.WEBHOOKS_WRITE,
    _WEBHOOKS + "ListWebhookEndpoints": Scope.WEBHOOKS_READ,
    _WEBHOOKS + "UpdateWebhookEndpoint": Scope.WEBHOOKS_WRITE,
    _WEBHOOKS + "DeleteWebhookEndpoint": Scope.WEBHOOKS_WRITE,
    _WEBHOOKS + "RotateWebhookSecret": Scope.WEBHOOKS_WRITE,
    _WEBHOOKS + "ListWebhookDeliveries": Scope.WEBHOOKS_READ,
    _WEBHOOKS + "RedeliverWebhookEvent": Scope.WEBHOOKS_WRITE,
    _SESSIONS + "CreateConnectSession": Scope.CONNECT_SESSIONS_WRITE,
    _SESSIONS + "GetConnectSession": Scope.CONNECT_SESSIONS_WRITE,
    _SESSIONS + "ListConnectSessions": Scope.CONNECT_SESSIONS_WRITE,
    _SESSIONS + "DeleteConnectSession": Scope.CONNECT_SESSIONS_WRITE,
}
