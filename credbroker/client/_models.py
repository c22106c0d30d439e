"""The SDK's result types: frozen dataclasses and enums, free of generated protobuf types."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "AccessedCredentials",
    "AuditEvent",
    "AuthMode",
    "ConfigField",
    "Connection",
    "Integration",
    "Provider",
    "Verification",
    "VerificationState",
]


class AuthMode(enum.StrEnum):
    """The kind of credentials a provider takes."""

    UNSPECIFIED = "UNSPECIFIED"
    """Not set (the server never returns it; also stands for values this SDK does not know)."""
    API_KEY = "API_KEY"
    """A single API key or token."""
    BASIC = "BASIC"
    """A username and password (HTTP Basic)."""


class VerificationState(enum.StrEnum):
    """The outcome of the last check of a connection's credentials with its provider."""

    UNSPECIFIED = "UNSPECIFIED"
    """Not set (the server never returns it; also stands for values this SDK does not know)."""
    UNVERIFIED = "UNVERIFIED"
    """Never checked: the provider has no verification request, or the check was skipped."""
    VERIFIED = "VERIFIED"
    """The provider accepted the credentials."""
    REJECTED = "REJECTED"
    """The provider refused the credentials (see ``http_status``)."""
    ERROR = "ERROR"
    """The provider could not be reached or answered with an error."""


@dataclass(frozen=True)
class Integration:
    """An app's configuration of one provider from the catalog, in one environment."""

    integration_id: str
    provider: str
    display_name: str
    auth_mode: AuthMode
    integration_config: dict[str, str]
    create_time: datetime | None
    update_time: datetime | None


@dataclass(frozen=True)
class ConfigField:
    """A setting a provider needs from a connection or an integration (e.g. a subdomain)."""

    name: str
    title: str
    description: str
    pattern: str
    """A regular expression the whole value must match; ``""`` for any value."""
    optional: bool
    secret: bool
    default_value: str


@dataclass(frozen=True)
class Provider:
    """A catalog entry: how one third-party API takes its credentials."""

    name: str
    display_name: str
    auth_mode: AuthMode
    docs: str
    categories: tuple[str, ...]
    base_url: str
    """Possibly templated with ``${connection_config.NAME}``."""
    connection_config: tuple[ConfigField, ...]
    integration_config: tuple[ConfigField, ...]
    verifies_credentials: bool


@dataclass(frozen=True)
class Verification:
    """The last check of a connection's credentials against its provider."""

    state: VerificationState
    verify_time: datetime | None
    """When the last check ran; ``None`` if never."""
    http_status: int
    """The provider's HTTP status in the last check, 0 if none."""
    consecutive_failures: int


@dataclass(frozen=True)
class Connection:
    """One end user's credentials for one integration, without the secret parts."""

    integration_id: str
    connection_id: str
    auth_mode: AuthMode
    credentials_set: bool
    metadata: dict[str, Any]
    """Non-secret JSON; numbers come back as ``float`` (JSON numbers)."""
    tags: dict[str, str]
    connection_config_keys: tuple[str, ...]
    """The keys (never the values) of the stored connection config."""
    create_time: datetime | None
    update_time: datetime | None
    etag: str
    """Pass it back to ``update_connection(etag=...)`` to update only an unchanged connection."""
    verification: Verification


_HIDDEN = "<hidden>"


@dataclass(frozen=True, repr=False)
class AccessedCredentials:
    """A connection's decrypted credentials, ready to use: send requests to ``base_url`` with
    ``headers`` added and ``query_params`` appended, whatever the provider's style.

    ``repr()`` (and so ``str()`` and logging of the object) shows the header, query parameter
    and config names, never their values or the credentials.
    """

    auth_mode: AuthMode
    api_key: str | None
    """The API key, for ``AuthMode.API_KEY``; ``None`` otherwise."""
    username: str | None
    """The username, for ``AuthMode.BASIC``; ``None`` otherwise."""
    password: str | None
    """The password, for ``AuthMode.BASIC``; ``None`` otherwise."""
    connection_config: dict[str, str]
    """The decrypted connection config (values may be secret)."""
    base_url: str
    """The provider's API base URL, resolved with the connection config."""
    headers: dict[str, str]
    """Headers to add to each request to the provider (secret)."""
    query_params: dict[str, str]
    """Query parameters to add to each request (secret)."""

    def __repr__(self) -> str:
        def names(values: dict[str, str]) -> str:
            return "{" + ", ".join(f"{name!r}: {_HIDDEN!r}" for name in sorted(values)) + "}"

        def secret(value: str | None) -> str:
            return "None" if value is None else repr(_HIDDEN)

        return (
            f"AccessedCredentials(auth_mode={self.auth_mode.value!r}, "
            f"base_url={self.base_url!r}, api_key={secret(self.api_key)}, "
            f"username={secret(self.username)}, password={secret(self.password)}, "
            f"headers={names(self.headers)}, query_params={names(self.query_params)}, "
            f"connection_config={names(self.connection_config)})"
        )


@dataclass(frozen=True)
class AuditEvent:
    """One audited call (every mutating call and every ``access_credentials``)."""

    event_id: str
    event_time: datetime | None
    request_id: str
    key_id: str
    environment: str
    method: str
    """The full gRPC method, e.g. ``/credbroker.v1.ConnectionService/AccessCredentials``."""
    integration_id: str
    connection_id: str
    outcome: str
    """The status code name the call ended with (``OK``, ``NOT_FOUND``, ...) or ``UNFINISHED``."""
