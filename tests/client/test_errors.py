"""Failed calls raise the exception of their status code, carrying the server's ErrorInfo reason,
metadata and BadRequest field violations; both client flavours behave the same."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from credbroker.client import (
    AlreadyExists,
    CredBrokerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from credbroker.domain.models import Scope

Invoke = Callable[..., Awaitable[Any]]
DOMAIN = "credbroker.dev"


async def test_missing_connection_is_not_found(
    invoke: Invoke, tenant: Any, waits: list[float]
) -> None:
    with pytest.raises(NotFound) as caught:
        await invoke(tenant.key, "get_connection", "no-such-integration", "no-such-connection")
    error = caught.value
    assert isinstance(error, CredBrokerError)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.reason == "CONNECTION_NOT_FOUND"
    assert error.domain == DOMAIN
    assert error.message == "connection not found"
    assert error.field_violations == []
    assert isinstance(error.__cause__, grpc.RpcError)  # the original error stays reachable
    assert str(error) == "NOT_FOUND: connection not found (reason CONNECTION_NOT_FOUND)"
    assert waits == []  # only UNAVAILABLE is retried


@pytest.mark.parametrize(
    ("method", "args", "reason"),
    [
        ("get_integration", ("nope",), "INTEGRATION_NOT_FOUND"),
        ("delete_integration", ("nope",), "INTEGRATION_NOT_FOUND"),
        ("get_provider", ("nope",), "PROVIDER_NOT_FOUND"),
        ("access_credentials", ("nope", "nope"), "CONNECTION_NOT_FOUND"),
        ("verify_connection", ("nope", "nope"), "CONNECTION_NOT_FOUND"),
        ("delete_connection", ("nope", "nope"), "CONNECTION_NOT_FOUND"),
    ],
)
async def test_not_found_reasons(
    invoke: Invoke, tenant: Any, method: str, args: tuple[str, ...], reason: str
) -> None:
    with pytest.raises(NotFound) as caught:
        await invoke(tenant.key, method, *args)
    assert caught.value.reason == reason


async def test_invalid_argument_names_the_fields(invoke: Invoke, tenant: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await invoke(tenant.key, "create_integration", "-bad id-", "")
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    fields = [violation.field for violation in error.field_violations]
    assert fields == ["integration.integration_id", "integration.provider"]
    assert all(description for _, description in error.field_violations)
    assert "integration.integration_id" in str(error)


async def test_invalid_argument_on_a_list_is_raised_while_iterating(
    invoke: Invoke, tenant: Any
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await invoke(tenant.key, "list_connections", page_size=-1)
    assert [v.field for v in caught.value.field_violations] == ["page_size"]


async def test_wrong_credential_kind_is_invalid_argument(invoke: Invoke, tenant: Any) -> None:
    await invoke(tenant.key, "create_integration", "openai", "openai")
    with pytest.raises(InvalidArgument) as caught:
        await invoke(tenant.key, "create_connection", "openai", username="u", password="p")
    assert caught.value.reason == "CREDENTIALS_AUTH_MODE_MISMATCH"


async def test_taken_id_is_already_exists(invoke: Invoke, tenant: Any) -> None:
    await invoke(tenant.key, "create_integration", "twice", "openai")
    with pytest.raises(AlreadyExists) as caught:
        await invoke(tenant.key, "create_integration", "twice", "openai")
    assert caught.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.reason


async def test_integration_with_connections_is_failed_precondition(
    invoke: Invoke, tenant: Any
) -> None:
    await invoke(tenant.key, "create_integration", "busy", "openai")
    await invoke(tenant.key, "create_connection", "busy", connection_id="c", api_key="sk-1")
    with pytest.raises(FailedPrecondition) as caught:
        await invoke(tenant.key, "delete_integration", "busy")
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION


async def test_missing_scope_is_permission_denied(
    invoke: Invoke, tenant: Any, limited_key: Callable[..., Awaitable[str]]
) -> None:
    await invoke(tenant.key, "create_integration", "openai", "openai")
    await invoke(tenant.key, "create_connection", "openai", connection_id="u", api_key="sk-1")
    reader = await limited_key(Scope.CONNECTIONS_READ)
    assert (await invoke(reader, "get_connection", "openai", "u")).connection_id == "u"
    with pytest.raises(PermissionDenied) as caught:
        await invoke(reader, "access_credentials", "openai", "u")
    error = caught.value
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "MISSING_SCOPE"
    assert error.metadata == {"scope": "credentials:read"}
    with pytest.raises(PermissionDenied) as listing:
        await invoke(reader, "list_audit_events")
    assert listing.value.metadata == {"scope": "audit:read"}


@pytest.mark.parametrize(
    "key", ["cbsk_not-a-real-key", "cbsk_0123456789abcdef_" + "A" * 50, "not-even-a-key"]
)
async def test_bad_key_is_unauthenticated(invoke: Invoke, key: str, waits: list[float]) -> None:
    with pytest.raises(Unauthenticated) as caught:
        await invoke(key, "list_integrations")
    error = caught.value
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "UNAUTHENTICATED"
    assert key not in str(error) and key not in repr(error)
    assert waits == []
