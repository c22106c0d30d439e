"""Conversions between credbroker.v1 messages and domain models."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from credbroker.domain import models
from credbroker.domain.etags import etag_for
from credbroker.domain.providers import ConfigField, Provider
from credbroker.v1 import resources_pb2

AUTH_MODE_TO_PROTO = {
    models.AuthMode.API_KEY: resources_pb2.AUTH_MODE_API_KEY,
    models.AuthMode.BASIC: resources_pb2.AUTH_MODE_BASIC,
}
AUTH_MODE_FROM_PROTO = {v: k for k, v in AUTH_MODE_TO_PROTO.items()}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """Like ``Timestamp.FromDatetime`` (pure Python, slow on list pages), for aware datetimes."""
    seconds = value.timestamp()
    whole = int(seconds // 1)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=value.microsecond * 1000)


def integration_to_proto(integration: models.Integration) -> resources_pb2.Integration:
    return resources_pb2.Integration(
        integration_id=integration.integration_id,
        provider=integration.provider,
        display_name=integration.display_name,
        auth_mode=AUTH_MODE_TO_PROTO[integration.auth_mode],
        create_time=timestamp(integration.create_time),
        update_time=timestamp(integration.update_time),
        integration_config=dict(integration.integration_config),
    )


VERIFICATION_STATE_TO_PROTO = {
    models.VerificationState.UNVERIFIED: resources_pb2.Verification.UNVERIFIED,
    models.VerificationState.VERIFIED: resources_pb2.Verification.VERIFIED,
    models.VerificationState.REJECTED: resources_pb2.Verification.REJECTED,
    models.VerificationState.ERROR: resources_pb2.Verification.ERROR,
}
VERIFICATION_STATE_FROM_PROTO = {v: k for k, v in VERIFICATION_STATE_TO_PROTO.items()}


def verification_to_proto(record: models.VerificationRecord) -> resources_pb2.Verification:
    message = resources_pb2.Verification(
        state=VERIFICATION_STATE_TO_PROTO[record.state],
        http_status=record.http_status,
        consecutive_failures=record.consecutive_failures,
    )
    if record.verify_time is not None:
        message.verify_time.CopyFrom(timestamp(record.verify_time))
    return message


def _config_field(config_field: ConfigField) -> resources_pb2.ConfigField:
    return resources_pb2.ConfigField(
        name=config_field.name,
        title=config_field.title,
        description=config_field.description,
        pattern=config_field.pattern.pattern if config_field.pattern else "",
        optional=config_field.optional,
        secret=config_field.secret,
        default_value=config_field.default or "",
    )


def provider_to_proto(provider: Provider) -> resources_pb2.Provider:
    return resources_pb2.Provider(
        name=provider.name,
        display_name=provider.display_name,
        auth_mode=AUTH_MODE_TO_PROTO[provider.auth_mode],
        docs=provider.docs,
        categories=list(provider.categories),
        base_url=provider.base_url,
        connection_config=[_config_field(f) for f in provider.connection_config],
        integration_config=[_config_field(f) for f in provider.integration_config],
        verifies_credentials=provider.verification is not None or provider.generic,
    )


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    result = json_format.MessageToDict(value)
    assert isinstance(result, dict)
    return result


def dict_to_struct(value: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    return struct


def end_user_to_proto(end_user: models.EndUser) -> resources_pb2.EndUser:
    return resources_pb2.EndUser(
        id=end_user.id, email=end_user.email, display_name=end_user.display_name
    )


def connection_to_proto(connection: models.Connection) -> resources_pb2.Connection:
    message = _connection_to_proto(connection)
    if connection.end_user is not None:
        message.end_user.CopyFrom(end_user_to_proto(connection.end_user))
    if connection.organization is not None:
        message.organization_id = connection.organization.id
        message.organization_display_name = connection.organization.display_name
    return message


def _connection_to_proto(connection: models.Connection) -> resources_pb2.Connection:
    return resources_pb2.Connection(
        integration_id=connection.integration_id,
        connection_id=connection.connection_id,
        metadata=dict_to_struct(connection.metadata),
        tags=dict(connection.tags),
        auth_mode=AUTH_MODE_TO_PROTO[connection.auth_mode],
        credentials_set=connection.credentials_set,
        connection_config_keys=list(connection.connection_config_keys),
        create_time=timestamp(connection.create_time),
        update_time=timestamp(connection.update_time),
        etag=etag_for(connection.id, connection.version),
        verification=verification_to_proto(connection.verification),
    )


def credentials_from_proto(message: resources_pb2.Credentials) -> models.Credentials | None:
    kind = message.WhichOneof("kind")
    if kind == "api_key":
        return models.ApiKeyCredentials(message.api_key.api_key)
    if kind == "basic":
        return models.BasicCredentials(message.basic.username, message.basic.password)
    return None


def fill_map(container: MutableMapping[str, str], values: Mapping[str, str]) -> None:
    """Copies ``values`` into a protobuf map field item by item: passing a dict to the message's
    constructor goes through ``MutableMapping.update`` (abstract-base-class checks in Python),
    about twice the cost on every reveal."""
    for key, value in values.items():
        container[key] = value


def set_credentials(message: resources_pb2.Credentials, credentials: models.Credentials) -> None:
    """Fills ``message`` in place (cheaper than building one and copying it)."""
    if isinstance(credentials, models.ApiKeyCredentials):
        message.api_key.api_key = credentials.api_key
    else:
        message.basic.username = credentials.username
        message.basic.password = credentials.password
