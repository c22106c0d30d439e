"""Domain models in the reference product's JSON shapes (``@nangohq/types`` 0.71.10:
``ApiPublicConnectionFull``, ``ApiPublicConnection``, ``ApiPublicIntegration``, ``ApiProvider``),
plus credbroker's own fields under ``credbroker``. Secrets appear only in :func:`connection_full`
given a revealed connection; everything else here is safe to send to any caller of the route.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from credbroker.domain.connections import FetchedConnection
from credbroker.domain.errors import InvalidArgumentError
from credbroker.domain.models import (
    ApiKeyCredentials,
    AuthMode,
    BasicCredentials,
    Connection,
    Credentials,
    Integration,
    VerificationState,
)
from credbroker.domain.providers import ConfigField, Provider

AUTH_MODE_NAMES = {AuthMode.API_KEY: "API_KEY", AuthMode.BASIC: "BASIC"}


def timestamp(value: datetime | None) -> str | None:
    """ISO 8601 with an explicit ``+00:00`` offset, as the reference's GET returns."""
    return value.isoformat() if value is not None else None


def _errors(connection: Connection) -> list[dict[str, str]]:
    """Active auth errors: the provider refused the stored credentials at the last check."""
    if connection.verification.state is VerificationState.REJECTED:
        return [{"type": "auth", "log_id": ""}]
    return []


def _credbroker_fields(connection: Connection) -> dict[str, Any]:
    verification = connection.verification
    return {
        "auth_mode": AUTH_MODE_NAMES[connection.auth_mode],
        "etag": str(connection.version),
        "connection_config_keys": list(connection.connection_config_keys),
        "verification": {
            "state": verification.state.name,
            "verify_time": timestamp(verification.verify_time),
            "http_status": verification.http_status,
            "consecutive_failures": verification.consecutive_failures,
        },
    }


def credentials_json(credentials: Credentials) -> dict[str, str]:
    if isinstance(credentials, ApiKeyCredentials):
        return {"type": "API_KEY", "apiKey": credentials.api_key}
    return {"type": "BASIC", "username": credentials.username, "password": credentials.password}


def end_user_json(connection: Connection) -> dict[str, Any] | None:
    """The reference ``end_user`` (``{id, display_name, email, tags, organization}``) of a
    connection made through a connect session; None otherwise."""
    end_user = connection.end_user
    if end_user is None:
        return None
    organization = connection.organization
    return {
        "id": end_user.id,
        "display_name": end_user.display_name or None,
        "email": end_user.email or None,
        "tags": {},
        "organization": {"id": organization.id, "display_name": organization.display_name or None}
        if organization is not None
        else None,
    }


def connection_full(fetched: FetchedConnection) -> dict[str, Any]:
    """``ApiPublicConnectionFull``. With a reveal: ``credentials``, the ``connection_config``
    values and ``credbroker.{base_url, headers, query_params}``; without: no ``credentials``
    key at all and an empty ``connection_config`` (its values are stored encrypted)."""
    connection = fetched.connection
    extra = _credbroker_fields(connection)
    body: dict[str, Any] = {
        "id": str(connection.id),
        "connection_id": connection.connection_id,
        "provider_config_key": connection.integration_id,
        "provider": fetched.provider,
        "errors": _errors(connection),
        "end_user": end_user_json(connection),
        "tags": dict(connection.tags),
        "metadata": dict(connection.metadata),
        "connection_config": {},
        "webhook_url_override": None,
        "created_at": timestamp(connection.create_time),
        "updated_at": timestamp(connection.update_time),
        "last_fetched_at": timestamp(connection.last_fetch_time),
        "credbroker": extra,
    }
    revealed = fetched.revealed
    if revealed is not None:
        body["connection_config"] = dict(revealed.connection_config)
        body["credentials"] = credentials_json(revealed.credentials)
        extra["base_url"] = revealed.base_url
        extra["headers"] = dict(revealed.headers)
        extra["query_params"] = dict(revealed.query_params)
    return body


def connection_item(connection: Connection, provider: str) -> dict[str, Any]:
    """``ApiPublicConnection``: a list entry, never with credentials."""
    return {
        "id": str(connection.id),
        "connection_id": connection.connection_id,
        "provider_config_key": connection.integration_id,
        "provider": provider,
        "created": timestamp(connection.create_time),
        "metadata": dict(connection.metadata),
        "tags": dict(connection.tags),
        "errors": _errors(connection),
        "end_user": end_user_json(connection),
    }


def integration_json(integration: Integration) -> dict[str, Any]:
    """``ApiPublicIntegration`` (no logo is shipped: ``logo`` is empty)."""
    return {
        "unique_key": integration.integration_id,
        "provider": integration.provider,
        "display_name": integration.display_name,
        "logo": "",
        "forward_webhooks": False,
        "created_at": timestamp(integration.create_time),
        "updated_at": timestamp(integration.update_time),
        "credbroker": {
            "auth_mode": AUTH_MODE_NAMES[integration.auth_mode],
            "integration_config": dict(integration.integration_config),
        },
    }


# credbroker's template names -> the reference's (``${credentials.api_key}`` -> ``${apiKey}``).
_TEMPLATE_NAMES = {
    ("credentials", "api_key"): "apiKey",
    ("credentials", "username"): "credentials.username",
    ("credentials", "password"): "credentials.password",
}
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\.([A-Za-z0-9_.\-]+)\}")


def _reference_template(template: str) -> str:
    def rename(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        renamed = _TEMPLATE_NAMES.get((kind, name))
        if renamed is None:
            prefix = "connectionConfig" if kind == "connection_config" else "integrationConfig"
            renamed = f"{prefix}.{name}"
        return "${" + renamed + "}"

    return _PLACEHOLDER.sub(rename, template)


def _field_schema(config_field: ConfigField, order: int) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "string",
        "title": config_field.title,
        "description": config_field.description,
        "order": order,
        "automated": False,
    }
    if config_field.pattern is not None:
        schema["pattern"] = config_field.pattern.pattern
    if config_field.optional:
        schema["optional"] = True
    if config_field.example is not None:
        schema["example"] = config_field.example
    if config_field.default is not None:
        schema["default_value"] = config_field.default
    if config_field.secret:
        schema["secret"] = "true"  # noqa: S105 - a form hint, not a password
    return schema


_CREDENTIAL_FORMS = {
    AuthMode.API_KEY: {
        "apiKey": {
            "type": "string",
            "title": "API Key",
            "description": "The API key",
            "order": 0,
            "automated": False,
            "secret": "true",
        }
    },
    AuthMode.BASIC: {
        "username": {
            "type": "string",
            "title": "Username",
            "description": "The username",
            "order": 0,
            "automated": False,
        },
        "password": {
            "type": "string",
            "title": "Password",
            "description": "The password",
            "order": 1,
            "automated": False,
            "secret": "true",
        },
    },
}


def provider_json(provider: Provider) -> dict[str, Any]:
    """``ApiProvider``: a catalog entry with its templates in the reference's names."""
    proxy: dict[str, Any] = {"base_url": _reference_template(provider.base_url)}
    if provider.headers:
        proxy["headers"] = {k: _reference_template(v) for k, v in provider.headers.items()}
    if provider.query:
        proxy["query"] = {k: _reference_template(v) for k, v in provider.query.items()}
    if provider.verification is not None:
        proxy["verification"] = {
            "method": provider.verification.method,
            "endpoints": list(provider.verification.paths),
        }
    body: dict[str, Any] = {
        "name": provider.name,
        "display_name": provider.display_name,
        "auth_mode": AUTH_MODE_NAMES[provider.auth_mode],
        "logo_url": "",
        "docs": provider.docs,
        "categories": list(provider.categories),
        "proxy": proxy,
        "credentials": _CREDENTIAL_FORMS[provider.auth_mode],
        "connection_config": {
            f.name: _field_schema(f, i) for i, f in enumerate(provider.connection_config)
        },
    }
    if provider.integration_config:
        body["integration_config"] = {
            f.name: _field_schema(f, i) for i, f in enumerate(provider.integration_config)
        }
    return body


def _string(value: Any, field: str, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError.single(field, "must be a string" if required else "is invalid")
    return value


def credentials_from_json(value: Any, field: str = "credentials") -> Credentials:
    """``{"type": "API_KEY", "apiKey"}`` or ``{"type": "BASIC", "username", "password"}``
    (other types and extra keys are refused; messages never echo a value)."""
    if not isinstance(value, dict):
        raise InvalidArgumentError.single(field, "must be an object")
    kind = value.get("type")
    allowed = {"API_KEY": {"type", "apiKey"}, "BASIC": {"type", "username", "password"}}
    if kind not in allowed:
        raise InvalidArgumentError.single(f"{field}.type", "must be API_KEY or BASIC")
    if set(value) - allowed[kind]:
        known = ", ".join(sorted(allowed[kind]))
        raise InvalidArgumentError.single(field, f"has an unknown field (known: {known})")
    if kind == "API_KEY":
        if "apiKey" not in value:
            raise InvalidArgumentError.single(f"{field}.apiKey", "is required")
        return ApiKeyCredentials(_string(value["apiKey"], f"{field}.apiKey"))
    return BasicCredentials(
        _string(value.get("username", ""), f"{field}.username"),
        _string(value.get("password", ""), f"{field}.password"),
    )
