"""Domain models: frozen dataclasses shared by the use cases, the api and the storage layers."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID


class AuthMode(enum.Enum):
    """The kind of credential a provider takes. Values are stored in the database."""

    API_KEY = "api_key"
    BASIC = "basic"


class Scope(enum.Enum):
    """What a secret key may do. ``CREDENTIALS_READ`` alone allows revealing secrets."""

    INTEGRATIONS_READ = "integrations:read"
    INTEGRATIONS_WRITE = "integrations:write"
    CONNECTIONS_READ = "connections:read"
    CONNECTIONS_WRITE = "connections:write"
    CREDENTIALS_READ = "credentials:read"
    AUDIT_READ = "audit:read"
    WEBHOOKS_READ = "webhooks:read"
    WEBHOOKS_WRITE = "webhooks:write"
    CONNECT_SESSIONS_WRITE = "connect_sessions:write"


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)


@dataclass(frozen=True)
class Environment:
    id: UUID
    name: str
    create_time: datetime


@dataclass(frozen=True)
class EndUser:
    """The app's end user a connection belongs to, as the app's backend named them."""

    id: str
    email: str = ""
    display_name: str = ""


@dataclass(frozen=True)
class Organization:
    """The end user's organization in the app, as the app's backend named it."""

    id: str
    display_name: str = ""


@dataclass(frozen=True)
class ReconnectTarget:
    """The one connection a reconnect session may replace the credentials of."""

    integration_id: str
    connection_id: str


@dataclass(frozen=True)
class ConnectSession:
    """A short-lived grant for a browser to store one end user's credentials (the token itself
    is never kept: only its hash, in storage)."""

    id: UUID
    environment_id: UUID
    environment_name: str
    end_user: EndUser | None
    organization: Organization | None
    tags: Mapping[str, str]
    allowed_integrations: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    integrations_config_defaults: Mapping[str, Mapping[str, str]]
    reconnect: ReconnectTarget | None
    connection_id: str
    """The id the connection gets (generated at creation; the reconnect target's id)."""
    created_by: str
    create_time: datetime
    expire_time: datetime
    consume_time: datetime | None = None
    consumed_integration_id: str = ""
    failed_attempts: int = 0

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expire_time

    def allows_integration(self, integration_id: str) -> bool:
        return not self.allowed_integrations or integration_id in self.allowed_integrations


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request: a secret key, or a connect session (then
    ``key_id`` is ``connect_session:<id>``, there are no scopes, and ``connect_session`` is
    set)."""

    key_id: str
    environment_id: UUID
    environment_name: str
    scopes: frozenset[Scope]
    connect_session: ConnectSession | None = None


@dataclass(frozen=True)
class SecretKeyRecord:
    """A stored secret key: only the hash of its secret is kept."""

    key_id: str
    environment_id: UUID
    environment_name: str
    scopes: frozenset[Scope]
    secret_hash: bytes = field(repr=False)
    create_time: datetime
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    description: str = ""
    last_used_time: datetime | None = None

    def is_active(self, now: datetime) -> bool:
        if self.revoke_time is not None:
            return False
        return self.expire_time is None or now < self.expire_time


@dataclass(frozen=True)
class ApiKeyCredentials:
    api_key: str

    def __repr__(self) -> str:
        return "ApiKeyCredentials(api_key=<redacted>)"


@dataclass(frozen=True)
class BasicCredentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return "BasicCredentials(username=<redacted>, password=<redacted>)"


Credentials = ApiKeyCredentials | BasicCredentials


def auth_mode_of(credentials: Credentials) -> AuthMode:
    return AuthMode.API_KEY if isinstance(credentials, ApiKeyCredentials) else AuthMode.BASIC


@dataclass(frozen=True)
class Integration:
    id: UUID
    environment_id: UUID
    integration_id: str
    provider: str
    display_name: str
    auth_mode: AuthMode
    create_time: datetime
    update_time: datetime
    integration_config: Mapping[str, str] = field(default_factory=dict)


class VerificationState(enum.Enum):
    """Stored in the database; see ``credbroker.v1.Verification.State``."""

    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    REJECTED = "rejected"
    ERROR = "error"


@dataclass(frozen=True)
class VerificationRecord:
    """The last check of a connection's credentials against its provider."""

    state: VerificationState
    verify_time: datetime | None = None
    http_status: int = 0
    consecutive_failures: int = 0


UNVERIFIED = VerificationRecord(VerificationState.UNVERIFIED)


@dataclass(frozen=True)
class Connection:
    """A stored connection without its secrets (those stay encrypted in storage)."""

    id: UUID
    environment_id: UUID
    integration_id: str
    connection_id: str
    auth_mode: AuthMode
    metadata: Mapping[str, Any]
    tags: Mapping[str, str]
    connection_config_keys: tuple[str, ...]
    credentials_set: bool
    version: int
    create_time: datetime
    update_time: datetime
    verification: VerificationRecord = UNVERIFIED
    last_fetch_time: datetime | None = None
    """When a backend last read the connection; recorded in batches, so it may lag."""
    end_user: EndUser | None = None
    """Who connected, when the connection came from a connect session."""
    organization: Organization | None = None


@dataclass(frozen=True)
class EncryptedConnectionSecrets:
    """The ciphertexts of a connection, as stored."""

    credentials: bytes
    connection_config: bytes


@dataclass(frozen=True)
class RevealedCredentials:
    """The plaintext returned by AccessCredentials only, with ready-to-use auth."""

    connection: Connection
    credentials: Credentials
    connection_config: Mapping[str, str] = field(repr=False)
    base_url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    query_params: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"RevealedCredentials(connection={self.connection.connection_id!r}, <redacted>)"


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing; ``next_cursor`` is the last item's sort key."""

    items: list[T]
    next_cursor: tuple[str, ...] | None
