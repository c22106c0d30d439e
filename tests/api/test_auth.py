"""Authentication and authorization of every RPC, discovered from the service descriptors.

Every method of both credbroker services is called through a raw channel method with an empty
request of its input type: the interceptor must refuse the caller before the handler looks at the
request, so an empty request is enough to see UNAUTHENTICATED / PERMISSION_DENIED.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from credbroker.domain import secret_keys
from credbroker.domain.models import Scope
from credbroker.v1 import (
    audit_service_pb2,
    connect_session_service_pb2,
    connection_service_pb2,
    integration_service_pb2,
    webhook_service_pb2,
)

ERROR_DOMAIN = "credbroker.dev"
UNAUTHENTICATED_DETAILS = "invalid credentials"

# The contract (the proto comments): the one scope each method needs.
EXPECTED_SCOPES: dict[str, Scope] = {
    "/credbroker.v1.IntegrationService/CreateIntegration": Scope("integrations:write"),
    "/credbroker.v1.IntegrationService/GetIntegration": Scope("integrations:read"),
    "/credbroker.v1.IntegrationService/ListIntegrations": Scope("integrations:read"),
    "/credbroker.v1.IntegrationService/UpdateIntegration": Scope("integrations:write"),
    "/credbroker.v1.IntegrationService/DeleteIntegration": Scope("integrations:write"),
    "/credbroker.v1.ConnectionService/CreateConnection": Scope("connections:write"),
    "/credbroker.v1.ConnectionService/GetConnection": Scope("connections:read"),
    "/credbroker.v1.ConnectionService/ListConnections": Scope("connections:read"),
    "/credbroker.v1.ConnectionService/UpdateConnection": Scope("connections:write"),
    "/credbroker.v1.ConnectionService/DeleteConnection": Scope("connections:write"),
    "/credbroker.v1.ConnectionService/AccessCredentials": Scope("credentials:read"),
    "/credbroker.v1.ConnectionService/VerifyConnection": Scope("connections:write"),
    "/credbroker.v1.IntegrationService/ListProviders": Scope("integrations:read"),
    "/credbroker.v1.IntegrationService/GetProvider": Scope("integrations:read"),
    "/credbroker.v1.AuditService/ListAuditEvents": Scope("audit:read"),
    "/credbroker.v1.ConnectionService/WatchConnections": Scope("connections:read"),
    "/credbroker.v1.WebhookService/CreateWebhookEndpoint": Scope("webhooks:write"),
    "/credbroker.v1.WebhookService/ListWebhookEndpoints": Scope("webhooks:read"),
    "/credbroker.v1.WebhookService/UpdateWebhookEndpoint": Scope("webhooks:write"),
    "/credbroker.v1.WebhookService/DeleteWebhookEndpoint": Scope("webhooks:write"),
    "/credbroker.v1.WebhookService/RotateWebhookSecret": Scope("webhooks:write"),
    "/credbroker.v1.WebhookService/ListWebhookDeliveries": Scope("webhooks:read"),
    "/credbroker.v1.WebhookService/RedeliverWebhookEvent": Scope("webhooks:write"),
    "/credbroker.v1.ConnectSessionService/CreateConnectSession": Scope("connect_sessions:write"),
    "/credbroker.v1.ConnectSessionService/GetConnectSession": Scope("connect_sessions:write"),
    "/credbroker.v1.ConnectSessionService/ListConnectSessions": Scope("connect_sessions:write"),
    "/credbroker.v1.ConnectSessionService/DeleteConnectSession": Scope("connect_sessions:write"),
}
# Server-streaming methods: called with unary_stream, done once the first message arrives.
STREAMING = frozenset({"/credbroker.v1.ConnectionService/WatchConnections"})


def _discover() -> list[MethodDescriptor]:
    services = [
        integration_service_pb2.DESCRIPTOR.services_by_name["IntegrationService"],
        connection_service_pb2.DESCRIPTOR.services_by_name["ConnectionService"],
        audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
        webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"],
        connect_session_service_pb2.DESCRIPTOR.services_by_name["ConnectSessionService"],
    ]
    return [method for service in services for method in service.methods]


METHODS = _discover()
METHOD_IDS = [f"{m.containing_service.name}.{m.name}" for m in METHODS]


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def test_every_discovered_method_has_an_expected_scope() -> None:
    """Guards the tables below: a new RPC must be added to the contract table (and so tested)."""
    assert {path_of(m) for m in METHODS} == set(EXPECTED_SCOPES)
    assert all(not m.client_streaming for m in METHODS)
    assert {path_of(m) for m in METHODS if m.server_streaming} == STREAMING


# ---------------------------------------------------------------------------------------------
# helpers


def raw_call(
    channel: grpc.aio.Channel, method: MethodDescriptor
) -> Callable[..., grpc.aio.UnaryUnaryCall[Any, Any]]:
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    return channel.unary_unary(
        path_of(method),
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )


def empty_request(method: MethodDescriptor) -> Message:
    return message_factory.GetMessageClass(method.input_type)()


async def call_code(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    metadata: tuple[tuple[str, str], ...] | None,
) -> tuple[grpc.StatusCode, grpc.aio.AioRpcError | None]:
    try:
        if method.server_streaming:
            response_type = message_factory.GetMessageClass(method.output_type)
            stream: Any = cast(Any, channel).unary_stream(
                path_of(method),
                request_serializer=empty_request(method).SerializeToString,
                response_deserializer=response_type.FromString,
            )(empty_request(method), metadata=metadata, timeout=10)
            await stream.read()  # the first message, or the error ending the call
            stream.cancel()
        else:
            await raw_call(channel, method)(empty_request(method), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), error
    return grpc.StatusCode.OK, None


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "the error carries no google.rpc.Status trailer"
    return status


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    infos = []
    for detail in rich_status(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1
    assert infos[0].domain == ERROR_DOMAIN
    return infos[0]


def trailer_bytes(error: grpc.aio.AioRpcError) -> bytes:
    parts = [(error.details() or "").encode(), (error.debug_error_string() or "").encode()]
    for key, value in error.trailing_metadata() or ():
        parts.append(key.encode())
        parts.append(value if isinstance(value, bytes) else value.encode())
    return b"\n".join(parts)


async def assert_unauthenticated(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    metadata: tuple[tuple[str, str], ...] | None,
    *tokens: str,
) -> None:
    code, error = await call_code(channel, method, metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED, f"{path_of(method)} answered {code.name}"
    assert error is not None
    assert error.details() == UNAUTHENTICATED_DETAILS
    info = error_info(error)
    assert info.reason == "UNAUTHENTICATED"
    assert dict(info.metadata) == {}
    status = rich_status(error)
    assert status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert len(status.details) == 1  # the ErrorInfo only: no hint of what was wrong
    for token in tokens:  # the presented key is never echoed back
        assert token.encode() not in trailer_bytes(error)
        assert token[5:21].encode() not in trailer_bytes(error)  # nor its key id


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _with_checksum(body: str) -> str:
    number = zlib.crc32(body.encode("ascii"))
    digits = ""
    while number:
        number, rem = divmod(number, 62)
        digits = _BASE62[rem] + digits
    return body + digits.rjust(6, "0")


def _flip(char: str) -> str:
    return "B" if char == "A" else "A"


def _flip_at(token: str, index: int) -> str:
    return token[:index] + _flip(token[index]) + token[index + 1 :]


# ---------------------------------------------------------------------------------------------
# bad keys: each case builds the metadata of a request that must be UNAUTHENTICATED


@dataclass(frozen=True)
class BadKey:
    name: str
    build: Callable[[Any, Any], Awaitable[tuple[tuple[str, str], ...] | None]]


async def _none(tenant: Any, keys: Any) -> tuple[tuple[str, str], ...] | None:
    return None


def _static(
    transform: Callable[[str], tuple[tuple[str, str], ...]],
) -> Callable[[Any, Any], Awaitable[tuple[tuple[str, str], ...]]]:
    async def build(tenant: Any, keys: Any) -> tuple[tuple[str, str], ...]:
        assert secret_keys.parse_key(tenant.key) is not None  # the base key is well formed
        return transform(tenant.key)

    return build


async def _revoked(tenant: Any, keys: Any) -> tuple[tuple[str, str], ...]:
    token, record = await keys.create_key(tenant.environment, frozenset(Scope))
    await keys.revoke_key(record.key_id)
    return bearer(token)


async def _expired(tenant: Any, keys: Any) -> tuple[tuple[str, str], ...]:
    token, _ = await keys.create_key(
        tenant.environment, frozenset(Scope), expire_time=datetime.now(UTC) - timedelta(seconds=1)
    )
    return bearer(token)


async def _never_issued(tenant: Any, keys: Any) -> tuple[tuple[str, str], ...]:
    token, _ = secret_keys.generate_key()  # well formed, valid checksum, never stored
    return bearer(token)


BAD_KEYS = [
    BadKey("no-metadata", _none),
    BadKey("other-metadata-only", _static(lambda k: (("x-api-key", k),))),
    BadKey("wrong-prefix", _static(lambda k: bearer("cbpk_" + k[5:]))),
    BadKey("uppercase-prefix", _static(lambda k: bearer("CBSK_" + k[5:]))),
    BadKey("flipped-secret-char", _static(lambda k: bearer(_flip_at(k, 30)))),
    BadKey("flipped-key-id-char", _static(lambda k: bearer(_flip_at(k, 8)))),
    BadKey("flipped-checksum-char", _static(lambda k: bearer(_flip_at(k, len(k) - 1)))),
    BadKey(
        "flipped-secret-char-valid-checksum",
        _static(lambda k: bearer(_with_checksum(_flip_at(k, 30)[:-6]))),
    ),
    BadKey(
        "flipped-key-id-char-valid-checksum",
        _static(lambda k: bearer(_with_checksum(_flip_at(k, 8)[:-6]))),
    ),
    BadKey("truncated", _static(lambda k: bearer(k[:-1]))),
    BadKey("truncated-to-prefix", _static(lambda k: bearer(k[:21]))),
    BadKey("extended", _static(lambda k: bearer(k + "A"))),
    BadKey("bearer-missing", _static(lambda k: (("authorization", k),))),
    BadKey("bearer-without-token", _static(lambda k: (("authorization", "Bearer"),))),
    BadKey("bearer-empty-token", _static(lambda k: (("authorization", "Bearer "),))),
    BadKey("basic-scheme", _static(lambda k: (("authorization", f"Basic {k}"),))),
    BadKey("token-scheme", _static(lambda k: (("authorization", f"Token {k}"),))),
    BadKey("double-space", _static(lambda k: (("authorization", f"Bearer  {k}"),))),
    BadKey("trailing-space", _static(lambda k: (("authorization", f"Bearer {k} "),))),
    BadKey("two-tokens", _static(lambda k: (("authorization", f"Bearer {k} {k}"),))),
    BadKey(
        "valid-then-invalid",
        _static(lambda k: (*bearer(k), ("authorization", f"Bearer {_flip_at(k, 30)}"))),
    ),
    BadKey(
        "invalid-then-valid",
        _static(lambda k: (("authorization", f"Bearer {_flip_at(k, 30)}"), *bearer(k))),
    ),
    BadKey("valid-then-garbage", _static(lambda k: (*bearer(k), ("authorization", "garbage")))),
    BadKey("garbage-then-valid", _static(lambda k: (("authorization", "garbage"), *bearer(k)))),
    BadKey("revoked", _revoked),
    BadKey("expired", _expired),
    BadKey("never-issued", _never_issued),
]


@pytest.mark.parametrize("bad_key", BAD_KEYS, ids=[b.name for b in BAD_KEYS])
@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
async def test_bad_key_is_unauthenticated(
    channel: grpc.aio.Channel, tenant: Any, keys: Any, method: MethodDescriptor, bad_key: BadKey
) -> None:
    metadata = await bad_key.build(tenant, keys)
    tokens = [value.partition(" ")[2] or value for _, value in metadata or ()]
    await assert_unauthenticated(channel, method, metadata, *[t for t in tokens if len(t) > 21])


async def test_unauthenticated_errors_are_identical(
    channel: grpc.aio.Channel, tenant: Any, keys: Any
) -> None:
    """No failure kind (missing, malformed, unknown, revoked, expired) is distinguishable."""
    method = next(m for m in METHODS if m.name == "AccessCredentials")
    seen = set()
    for bad_key in BAD_KEYS:
        code, error = await call_code(channel, method, await bad_key.build(tenant, keys))
        assert code == grpc.StatusCode.UNAUTHENTICATED, bad_key.name
        assert error is not None
        trailers = [
            (key, value)
            for key, value in error.trailing_metadata() or ()
            if key == "grpc-status-details-bin"
        ]
        seen.add((error.details(), tuple(trailers)))
    assert len(seen) == 1, seen


async def test_revoked_key_worked_before_revocation(
    channel: grpc.aio.Channel, tenant: Any, keys: Any, change_takes_effect: Any
) -> None:
    """Revoked by another process while cached by the server: refused within the documented
    bound, with the same error as any other bad key."""
    method = next(m for m in METHODS if m.name == "ListIntegrations")
    token, record = await keys.create_key(tenant.environment, frozenset(Scope))
    code, _ = await call_code(channel, method, bearer(token))
    assert code == grpc.StatusCode.OK
    await keys.revoke_key(record.key_id)
    revoked = time.monotonic()

    async def refused() -> bool:
        code, _ = await call_code(channel, method, bearer(token))
        assert code in {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED}, code
        return code == grpc.StatusCode.UNAUTHENTICATED

    await change_takes_effect(refused, revoked, "revoke")
    await assert_unauthenticated(channel, method, bearer(token), token)


async def test_key_expiring_in_the_future_works(
    channel: grpc.aio.Channel, tenant: Any, keys: Any
) -> None:
    method = next(m for m in METHODS if m.name == "ListConnections")
    token, _ = await keys.create_key(
        tenant.environment, frozenset(Scope), expire_time=datetime.now(UTC) + timedelta(hours=1)
    )
    code, _ = await call_code(channel, method, bearer(token))
    assert code == grpc.StatusCode.OK


# ---------------------------------------------------------------------------------------------
# accepted spellings


def _expected_code_past_auth(method: MethodDescriptor) -> grpc.StatusCode:
    """An empty request that got past admission: lists and watches succeed, and so does
    creating a connect session (every field is optional); the rest need ids."""
    passes = method.name.startswith(("List", "Watch")) or method.name == "CreateConnectSession"
    return grpc.StatusCode.OK if passes else grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
async def test_bearer_scheme_is_case_insensitive(
    channel: grpc.aio.Channel, tenant: Any, method: MethodDescriptor, scheme: str
) -> None:
    """Documented behaviour: the auth scheme is matched case-insensitively (RFC 9110 §11.1), so
    ``bearer <key>`` is accepted like ``Bearer <key>``; the key itself is case-sensitive."""
    code, error = await call_code(channel, method, (("authorization", f"{scheme} {tenant.key}"),))
    assert code == _expected_code_past_auth(method), error and error.details()


# ---------------------------------------------------------------------------------------------
# scopes


@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
async def test_required_scope_alone_is_enough(
    channel: grpc.aio.Channel, tenant: Any, method: MethodDescriptor
) -> None:
    metadata = await tenant.key_with(EXPECTED_SCOPES[path_of(method)])
    code, error = await call_code(channel, method, metadata)
    assert code == _expected_code_past_auth(method), error and error.details()


@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
async def test_key_lacking_the_scope_is_permission_denied(
    channel: grpc.aio.Channel, tenant: Any, method: MethodDescriptor
) -> None:
    required = EXPECTED_SCOPES[path_of(method)]
    for scopes in (frozenset(Scope) - {required}, frozenset()):
        metadata = await tenant.key_with(*scopes)
        code, error = await call_code(channel, method, metadata)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (
            path_of(method),
            sorted(s.value for s in scopes),
        )
        assert error is not None
        assert error.details() == f"missing scope {required.value}"
        info = error_info(error)
        assert info.reason == "MISSING_SCOPE"
        assert dict(info.metadata) == {"scope": required.value}


@pytest.mark.parametrize(
    "scope", [s for s in Scope if s is not Scope("credentials:read")], ids=lambda s: s.value
)
async def test_only_credentials_read_allows_access_credentials(
    channel: grpc.aio.Channel, tenant: Any, scope: Scope
) -> None:
    method = next(m for m in METHODS if m.name == "AccessCredentials")
    code, error = await call_code(channel, method, await tenant.key_with(scope))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert error is not None
    assert error.details() == "missing scope credentials:read"


@pytest.mark.parametrize(
    "method",
    [m for m in METHODS if m.name != "AccessCredentials"],
    ids=[i for m, i in zip(METHODS, METHOD_IDS, strict=True) if m.name != "AccessCredentials"],
)
async def test_credentials_read_allows_nothing_else(
    channel: grpc.aio.Channel, tenant: Any, method: MethodDescriptor
) -> None:
    code, _ = await call_code(channel, method, await tenant.key_with(Scope("credentials:read")))
    assert code == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------------------------------------
# unknown methods, health and reflection


def _health_check(channel: grpc.aio.Channel, path: str) -> Any:
    return channel.unary_unary(
        path,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


@pytest.mark.parametrize(
    "metadata",
    [None, (("authorization", "Bearer garbage"),)],
    ids=["no-key", "garbage-key"],
)
@pytest.mark.parametrize(
    "service", ["", "credbroker.v1.IntegrationService", "credbroker.v1.ConnectionService"]
)
async def test_health_check_needs_no_key(
    channel: grpc.aio.Channel, service: str, metadata: tuple[tuple[str, str], ...] | None
) -> None:
    response = await _health_check(channel, "/grpc.health.v1.Health/Check")(
        health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=10
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "path",
    [
        "/grpc.health.v1.health/Check",
        "/grpc.health.v1.Health/check",
        "/grpc.health.v1.Health/CHECK",
        "/grpc.health.v1.Health/Check/",
        "/grpc.health.v1.Health/CheckX",
        "/grpc.health.v1.Health//Check",
        "/grpc.health.v1.Healthz/Check",
        "/grpc.health.v2.Health/Check",
        "/Grpc.health.v1.Health/Check",
        "//grpc.health.v1.Health/Check",
    ],
)
async def test_near_miss_health_paths_are_not_exempt(channel: grpc.aio.Channel, path: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health_check(channel, path)(health_pb2.HealthCheckRequest(), timeout=10)
    assert caught.value.code() in {
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
    }


@pytest.mark.parametrize(
    "path",
    [
        "/credbroker.v1.connectionservice/AccessCredentials",
        "/credbroker.v1.ConnectionService/accesscredentials",
        "/credbroker.v1.ConnectionService/AccessCredentials/",
        "/credbroker.v1.ConnectionService/NoSuchMethod",
        "/credbroker.v2.ConnectionService/AccessCredentials",
    ],
)
async def test_unknown_methods_are_unimplemented(
    channel: grpc.aio.Channel, tenant: Any, path: str
) -> None:
    call = channel.unary_unary(
        path,
        request_serializer=connection_service_pb2.AccessCredentialsRequest.SerializeToString,
        response_deserializer=connection_service_pb2.AccessCredentialsResponse.FromString,
    )
    for metadata in (None, tenant.metadata):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(
                connection_service_pb2.AccessCredentialsRequest(
                    integration_id="a", connection_id="b"
                ),
                metadata=metadata,
                timeout=10,
            )
        assert caught.value.code() in {
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.UNAUTHENTICATED,
        }


REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


async def _list_services(
    channel: grpc.aio.Channel, path: str, metadata: tuple[tuple[str, str], ...] | None
) -> list[str]:
    # v1 and v1alpha messages are identical on the wire.
    call = channel.stream_stream(
        path,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    stream = call(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=metadata,
        timeout=10,
    )
    names: list[str] = []
    async for response in stream:
        assert response.WhichOneof("message_response") == "list_services_response"
        names.extend(s.name for s in response.list_services_response.service)
    return names


@pytest.mark.parametrize("scopes", ["all", "none"])
async def test_reflection_v1alpha_lists_services_with_a_valid_key(
    channel: grpc.aio.Channel, tenant: Any, scopes: str
) -> None:
    metadata = tenant.metadata if scopes == "all" else await tenant.key_with()
    names = await _list_services(channel, REFLECTION_V1ALPHA, metadata)
    assert "credbroker.v1.IntegrationService" in names
    assert "credbroker.v1.ConnectionService" in names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("path", [REFLECTION_V1ALPHA, REFLECTION_V1])
@pytest.mark.parametrize("bad_key", BAD_KEYS[:5] + BAD_KEYS[-3:], ids=lambda b: b.name)
async def test_reflection_without_a_valid_key_is_refused(
    channel: grpc.aio.Channel, tenant: Any, keys: Any, path: str, bad_key: BadKey
) -> None:
    metadata = await bad_key.build(tenant, keys)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list_services(channel, path, metadata)
    allowed = {grpc.StatusCode.UNAUTHENTICATED}
    if path == REFLECTION_V1:
        allowed.add(grpc.StatusCode.UNIMPLEMENTED)  # not served by every grpcio-reflection
    assert caught.value.code() in allowed
    if caught.value.code() == grpc.StatusCode.UNAUTHENTICATED:
        assert caught.value.details() == UNAUTHENTICATED_DETAILS


async def test_reflection_v1_is_authenticated_or_not_served(
    channel: grpc.aio.Channel, tenant: Any
) -> None:
    """grpc.reflection.v1 (grpcurl's first choice): when served, it lists both services to a
    valid key; the installed grpcio-reflection may serve v1alpha only (then UNIMPLEMENTED)."""
    try:
        names = await _list_services(channel, REFLECTION_V1, tenant.metadata)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error.details()
        return
    assert "credbroker.v1.IntegrationService" in names
    assert "credbroker.v1.ConnectionService" in names
