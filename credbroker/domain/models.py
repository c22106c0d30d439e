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


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)


@dataclass(frozen=True)
class Environment:
    id: UUID
    name: str
    create_time: datetime


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str
    environment_id: UUID
    environment_name: str
    scopes: frozenset[Scope]


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
