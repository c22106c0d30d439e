"""Conversions between the generated ``credbroker.v1`` messages and the SDK's types, and the
request builders shared by the sync and async clients."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from credbroker.client._models import (
    AccessedCredentials,
    AuditEvent,
    AuthMode,
    ConfigField,
    Connection,
    Integration,
    Provider,
    Verification,
    VerificationState,
)
from credbroker.v1 import audit_service_pb2 as apb
from credbroker.v1 import connection_service_pb2 as cpb
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import resources_pb2 as rpb

_AUTH_MODE_TO_PROTO: dict[AuthMode, rpb.AuthMode.ValueType] = {
    AuthMode.UNSPECIFIED: rpb.AUTH_MODE_UNSPECIFIED,
    AuthMode.API_KEY: rpb.AUTH_MODE_API_KEY,
    AuthMode.BASIC: rpb.AUTH_MODE_BASIC,
}
_AUTH_MODE_FROM_PROTO = {v: k for k, v in _AUTH_MODE_TO_PROTO.items()}

_STATE_TO_PROTO: dict[VerificationState, rpb.Verification.State.ValueType] = {
    VerificationState.UNSPECIFIED: rpb.Verification.STATE_UNSPECIFIED,
    VerificationState.UNVERIFIED: rpb.Verification.UNVERIFIED,
    VerificationState.VERIFIED: rpb.Verification.VERIFIED,
    VerificationState.REJECTED: rpb.Verification.REJECTED,
    VerificationState.ERROR: rpb.Verification.ERROR,
}
_STATE_FROM_PROTO = {v: k for k, v in _STATE_TO_PROTO.items()}


# ---------------------------------------------------------------------------------------------
# responses


def _time(message: Any, name: str) -> datetime.datetime | None:
    if not message.HasField(name):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, name)
    return value.ToDatetime(tzinfo=datetime.UTC)


def auth_mode(value: rpb.AuthMode.ValueType) -> AuthMode:
    return _AUTH_MODE_FROM_PROTO.get(value, AuthMode.UNSPECIFIED)


def integration(message: rpb.Integration) -> Integration:
    return Integration(
        integration_id=message.integration_id,
        provider=message.provider,
        display_name=message.display_name,
        auth_mode=auth_mode(message.auth_mode),
        integration_config=dict(message.integration_config),
        create_time=_time(message, "create_time"),
        update_time=_time(message, "update_time"),
    )


def _config_field(message: rpb.ConfigField) -> ConfigField:
    return ConfigField(
        name=message.name,
        title=message.title,
        description=message.description,
        pattern=message.pattern,
        optional=message.optional,
        secret=message.secret,
        default_value=message.default_value,
    )


def provider(message: rpb.Provider) -> Provider:
    return Provider(
        name=message.name,
        display_name=message.display_name,
        auth_mode=auth_mode(message.auth_mode),
        docs=message.docs,
        categories=tuple(message.categories),
        base_url=message.base_url,
        connection_config=tuple(_config_field(f) for f in message.connection_config),
        integration_config=tuple(_config_field(f) for f in message.integration_config),
        verifies_credentials=message.verifies_credentials,
    )


def _verification(message: rpb.Verification) -> Verification:
    return Verification(
        state=_STATE_FROM_PROTO.get(message.state, VerificationState.UNSPECIFIED),
        verify_time=_time(message, "verify_time"),
        http_status=message.http_status,
        consecutive_failures=message.consecutive_failures,
    )


def connection(message: rpb.Connection) -> Connection:
    metadata: dict[str, Any] = json_format.MessageToDict(message.metadata)
    return Connection(
        integration_id=message.integration_id,
        connection_id=message.connection_id,
        auth_mode=auth_mode(message.auth_mode),
        credentials_set=message.credentials_set,
        metadata=metadata,
        tags=dict(message.tags),
        connection_config_keys=tuple(message.connection_config_keys),
        create_time=_time(message, "create_time"),
        update_time=_time(message, "update_time"),
        etag=message.etag,
        verification=_verification(message.verification),
    )


def accessed_credentials(message: cpb.AccessCredentialsResponse) -> AccessedCredentials:
    kind = message.credentials.WhichOneof("kind")
    api_key = message.credentials.api_key.api_key if kind == "api_key" else None
    basic = message.credentials.basic
    return AccessedCredentials(
        auth_mode=auth_mode(message.auth_mode),
        api_key=api_key,
        username=basic.username if kind == "basic" else None,
        password=basic.password if kind == "basic" else None,
        connection_config=dict(message.connection_config),
        base_url=message.base_url,
        headers=dict(message.headers),
        query_params=dict(message.query_params),
    )


def audit_event(message: apb.AuditEvent) -> AuditEvent:
    return AuditEvent(
        event_id=message.event_id,
        event_time=_time(message, "event_time"),
        request_id=message.request_id,
        key_id=message.key_id,
        environment=message.environment,
        method=message.method,
        integration_id=message.integration_id,
        connection_id=message.connection_id,
        outcome=message.outcome,
    )


# ---------------------------------------------------------------------------------------------
# requests


def _credentials(
    api_key: str | None, username: str | None, password: str | None, *, required: bool
) -> rpb.Credentials | None:
    basic = username is not None or password is not None
    if api_key is not None and basic:
        raise ValueError("pass either api_key or username/password, not both")
    if api_key is not None:
        return rpb.Credentials(api_key=rpb.ApiKeyCredentials(api_key=api_key))
    if basic:
        return rpb.Credentials(
            basic=rpb.BasicCredentials(username=username or "", password=password or "")
        )
    if required:
        raise ValueError("credentials are required: pass api_key, or username and password")
    return None


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    return struct


def create_integration(
    integration_id: str,
    provider: str,
    display_name: str,
    integration_config: Mapping[str, str] | None,
) -> ipb.CreateIntegrationRequest:
    return ipb.CreateIntegrationRequest(
        integration=rpb.Integration(
            integration_id=integration_id,
            provider=provider,
            display_name=display_name,
            integration_config=dict(integration_config or {}),
        )
    )


def update_integration(
    integration_id: str,
    display_name: str | None,
    integration_config: Mapping[str, str] | None,
) -> ipb.UpdateIntegrationRequest:
    paths = []
    message = rpb.Integration(integration_id=integration_id)
    if display_name is not None:
        paths.append("display_name")
        message.display_name = display_name
    if integration_config is not None:
        paths.append("integration_config")
        message.integration_config.update(integration_config)
    return ipb.UpdateIntegrationRequest(
        integration=message, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def list_providers(mode: AuthMode | str | None, page_size: int | None) -> ipb.ListProvidersRequest:
    return ipb.ListProvidersRequest(
        auth_mode=_AUTH_MODE_TO_PROTO[AuthMode(mode)] if mode else rpb.AUTH_MODE_UNSPECIFIED,
        page_size=page_size or 0,
    )


def create_connection(
    integration_id: str,
    connection_id: str,
    api_key: str | None,
    username: str | None,
    password: str | None,
    metadata: Mapping[str, Any] | None,
    connection_config: Mapping[str, str] | None,
    tags: Mapping[str, str] | None,
    skip_verification: bool,
) -> cpb.CreateConnectionRequest:
    message = rpb.Connection(
        integration_id=integration_id,
        connection_id=connection_id,
        credentials=_credentials(api_key, username, password, required=True),
        connection_config=dict(connection_config or {}),
        tags=dict(tags or {}),
    )
    if metadata is not None:
        message.metadata.CopyFrom(_struct(metadata))
    return cpb.CreateConnectionRequest(connection=message, skip_verification=skip_verification)


def list_connections(
    integration_id: str,
    tags: Mapping[str, str] | None,
    state: VerificationState | str | None,
    page_size: int | None,
) -> cpb.ListConnectionsRequest:
    return cpb.ListConnectionsRequest(
        integration_id=integration_id,
        tags=dict(tags or {}),
        verification_state=(
            _STATE_TO_PROTO[VerificationState(state)]
            if state
            else rpb.Verification.STATE_UNSPECIFIED
        ),
        page_size=page_size or 0,
    )


def update_connection(
    integration_id: str,
    connection_id: str,
    api_key: str | None,
    username: str | None,
    password: str | None,
    metadata: Mapping[str, Any] | None,
    connection_config: Mapping[str, str] | None,
    tags: Mapping[str, str] | None,
    etag: str,
    allow_missing: bool,
    skip_verification: bool,
) -> cpb.UpdateConnectionRequest:
    message = rpb.Connection(integration_id=integration_id, connection_id=connection_id, etag=etag)
    paths = []
    credentials = _credentials(api_key, username, password, required=False)
    if credentials is not None:
        paths.append("credentials")
        message.credentials.CopyFrom(credentials)
    if metadata is not None:
        paths.append("metadata")
        message.metadata.CopyFrom(_struct(metadata))
    if connection_config is not None:
        paths.append("connection_config")
        message.connection_config.update(connection_config)
    if tags is not None:
        paths.append("tags")
        message.tags.update(tags)
    return cpb.UpdateConnectionRequest(
        connection=message,
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        allow_missing=allow_missing,
        skip_verification=skip_verification,
    )


def list_audit_events(
    integration_id: str, connection_id: str, page_size: int | None
) -> apb.ListAuditEventsRequest:
    return apb.ListAuditEventsRequest(
        integration_id=integration_id, connection_id=connection_id, page_size=page_size or 0
    )
