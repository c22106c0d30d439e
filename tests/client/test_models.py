"""The public types: plain frozen dataclasses (no generated protobuf types), secrets hidden from
``repr``, argument checks before any call, and the mapping of aio errors' rich status."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

import credbroker.client
from credbroker.api.errors import build_status
from credbroker.client import (
    AccessedCredentials,
    AsyncCredBroker,
    AuthMode,
    CredBroker,
    CredBrokerError,
    InvalidArgument,
    NotFound,
)
from credbroker.client._errors import from_aio_error

Invoke = Callable[..., Awaitable[Any]]
SECRETS = ["sk-secret-123", "hunter2-password", "secret-user", "acme-config-secret", "qp-secret"]


def _credentials() -> AccessedCredentials:
    return AccessedCredentials(
        auth_mode=AuthMode.BASIC,
        api_key="sk-secret-123",
        username="secret-user",
        password="hunter2-password",
        connection_config={"subdomain": "acme-config-secret"},
        base_url="https://api.example.com",
        headers={"authorization": "Bearer sk-secret-123", "x-other": "hunter2-password"},
        query_params={"key": "qp-secret"},
    )


def test_accessed_credentials_repr_hides_secrets() -> None:
    creds = _credentials()
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds])):
        for secret in SECRETS:
            assert secret not in text
        for name in ("authorization", "x-other", "key", "subdomain", "https://api.example.com"):
            assert name in text
    assert repr(creds).startswith("AccessedCredentials(auth_mode='BASIC'")
    assert "api_key=None" in repr(dataclasses.replace(creds, api_key=None))
    assert creds.headers["authorization"] == "Bearer sk-secret-123"  # still usable


def test_results_are_frozen() -> None:
    creds = _credentials()
    with pytest.raises(dataclasses.FrozenInstanceError):
        creds.api_key = "other"  # type: ignore[misc]


def _assert_plain(value: Any, path: str = "result") -> None:
    """Only builtins, datetimes, the SDK's enums and dataclasses: no protobuf types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        assert type(value).__module__.startswith("credbroker.client"), path
        for item in dataclasses.fields(value):
            _assert_plain(getattr(value, item.name), f"{path}.{item.name}")
    elif isinstance(value, dict):
        assert type(value) is dict, path
        for key, item in value.items():
            assert type(key) is str, path
            _assert_plain(item, f"{path}[{key!r}]")
    elif isinstance(value, tuple | list):
        assert type(value) in (tuple, list), path
        for n, item in enumerate(value):
            _assert_plain(item, f"{path}[{n}]")
    else:
        allowed = (str, int, float, bool, type(None), datetime.datetime, enum.Enum)
        assert isinstance(value, allowed), f"{path} is a {type(value)}"


async def test_results_from_the_server_are_plain_and_hide_secrets(
    invoke: Invoke, tenant: Any
) -> None:
    results = [
        await invoke(tenant.key, "create_integration", "jira", "jira-basic", display_name="J"),
        await invoke(
            tenant.key,
            "create_connection",
            "jira",
            connection_id="u",
            username="secret-user",
            password="hunter2-password",
            metadata={"nested": {"list": [1, "two", None, True]}},
            connection_config={"subdomain": "acme"},
            tags={"team": "a"},
        ),
        await invoke(tenant.key, "get_provider", "jira-basic"),
        await invoke(tenant.key, "list_audit_events"),
    ]
    creds = await invoke(tenant.key, "access_credentials", "jira", "u")
    for result in [*results, creds]:
        _assert_plain(result)
    assert results[1].metadata == {"nested": {"list": [1.0, "two", None, True]}}
    assert creds.password == "hunter2-password"
    for secret in ("secret-user", "hunter2-password", creds.headers["authorization"]):
        assert secret not in repr(creds)
    # The base URL is shown (it is built from non-secret settings); config values are not.
    assert "base_url='https://acme.atlassian.net'" in repr(creds)
    assert "connection_config={'subdomain': '<hidden>'}" in repr(creds)


def test_public_api() -> None:
    for name in credbroker.client.__all__:
        assert getattr(credbroker.client, name).__module__.startswith("credbroker.client")
    assert issubclass(NotFound, CredBrokerError) and issubclass(CredBrokerError, Exception)


def test_the_sdk_imports_no_server_module() -> None:
    code = (
        "import sys, credbroker.client\n"
        "print(sorted(m for m in sys.modules if m.startswith('credbroker')"
        " and not m.startswith(('credbroker.client', 'credbroker.v1'))))\n"
        "print(sorted(m for m in ('asyncpg', 'pydantic', 'structlog', 'httpx', 'yaml')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines() == ["['credbroker']", "[]"]


# ---------------------------------------------------------------------------------------------
# checks before any call (no server involved: the port is never contacted)

TARGET = "127.0.0.1:1"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"api_key": "k", "username": "u"},
        {"api_key": "k", "password": "p"},
    ],
)
def test_create_connection_needs_exactly_one_kind_of_credentials(kwargs: dict[str, Any]) -> None:
    with CredBroker(TARGET, "cbsk_x") as client, pytest.raises(ValueError, match="api_key"):
        client.create_connection("i", **kwargs)


def test_update_connection_refuses_both_kinds_of_credentials() -> None:
    with CredBroker(TARGET, "cbsk_x") as client, pytest.raises(ValueError, match="not both"):
        client.update_connection("i", "c", api_key="k", username="u")


async def test_async_checks_come_before_any_call() -> None:
    async with AsyncCredBroker(TARGET, "cbsk_x") as client:
        with pytest.raises(ValueError, match="api_key"):
            await client.create_connection("i")
        with pytest.raises(ValueError, match="timeout"):
            await client.get_integration("i", timeout=0)
        with pytest.raises(ValueError):
            client.list_providers("OAUTH")  # before any iteration
        with pytest.raises(ValueError):
            client.list_connections(verification_state="GOOD", timeout=-1)


def test_list_arguments_are_checked_before_iterating() -> None:
    with CredBroker(TARGET, "cbsk_x") as client:
        with pytest.raises(ValueError):
            client.list_providers("OAUTH")
        with pytest.raises(ValueError, match="timeout"):
            client.list_integrations(timeout=0)
        with pytest.raises(ValueError):
            client.list_connections(verification_state="GOOD")


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("", {}),
        ("  ", {}),
        ("cbsk_a b", {}),
        ("cbsk_a\nb", {}),
        ("cbsk_x", {"timeout": 0}),
        ("cbsk_x", {"timeout": -1.0}),
        ("cbsk_x", {"retries": -1}),
    ],
)
def test_constructor_checks(key: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CredBroker(TARGET, key, **options)


def test_client_repr_hides_the_key() -> None:
    key = "cbsk_AAAA_secretsecretsecret"
    with CredBroker(TARGET, f"{key}\n") as client:  # a key read from a file, newline included
        assert repr(client) == "CredBroker(target='127.0.0.1:1', tls=False)"
        assert client._settings.metadata == (("authorization", f"Bearer {key}"),)
    with CredBroker(TARGET, key, tls=True, timeout=None) as secure:
        assert "tls=True" in repr(secure) and key not in repr(secure)
        assert secure._settings.call_timeout(None) is None


# ---------------------------------------------------------------------------------------------
# aio error mapping (the rich status comes from the trailing metadata)


def _aio_error(
    code: grpc.StatusCode, message: str, trailer: tuple[tuple[str, str | bytes], ...]
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailer), details=message
    )


def test_aio_error_with_rich_status() -> None:
    status = build_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
        "INVALID_ARGUMENT",
        metadata={"k": "v"},
        violations=[("a", "is wrong"), ("b", "is missing")],
    )
    error = from_aio_error(
        _aio_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad",
            (("grpc-status-details-bin", status.SerializeToString()),),
        )
    )
    assert isinstance(error, InvalidArgument)
    assert (error.reason, error.domain, error.metadata) == (
        "INVALID_ARGUMENT",
        "credbroker.dev",
        {"k": "v"},
    )
    assert error.field_violations == [("a", "is wrong"), ("b", "is missing")]
    assert error.field_violations[0].field == "a"


@pytest.mark.parametrize(
    "trailer",
    [
        (),
        (("grpc-status-details-bin", b"\xff\xff not a status"),),
        (
            (
                "grpc-status-details-bin",
                build_status(grpc.StatusCode.INTERNAL, "x", "OTHER").SerializeToString(),
            ),
        ),
    ],
)
def test_aio_error_without_usable_details(trailer: tuple[tuple[str, bytes], ...]) -> None:
    error = from_aio_error(_aio_error(grpc.StatusCode.NOT_FOUND, "gone", trailer))
    assert isinstance(error, NotFound)
    assert (error.message, error.reason, error.metadata, error.field_violations) == (
        "gone",
        "",
        {},
        [],
    )


def test_codes_without_a_class_raise_the_base_class() -> None:
    error = from_aio_error(_aio_error(grpc.StatusCode.CANCELLED, "cancelled", ()))
    assert type(error) is CredBrokerError
    assert error.code is grpc.StatusCode.CANCELLED
    assert str(error) == "CANCELLED: cancelled"
