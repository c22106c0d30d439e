"""What the use cases need from outside, as protocols that storage and crypto implement."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol
from uuid import UUID

from credbroker.domain.events import ConnectionEventType
from credbroker.domain.models import (
    UNVERIFIED,
    AuthMode,
    Connection,
    ConnectSession,
    EncryptedConnectionSecrets,
    EndUser,
    Environment,
    Integration,
    Organization,
    SecretKeyRecord,
    VerificationRecord,
    VerificationState,
)


class Binding(NamedTuple):
    """The identity of the row that stores a blob, as its associated data binds it.

    ``ids`` are what blobs are written with (binding v2): every id the row is found by (for a
    connection: environment, integration and connection ids, and the row id), so a blob moved to
    another row, or a row whose ids were changed in the database, fails to decrypt.
    ``legacy_ids`` are what blobs written before v2 were bound to (binding v1: the row id, with
    environment and integration for a connection), read until a rewrap moves them to ``ids``.
    """

    ids: tuple[bytes | str, ...]
    legacy_ids: tuple[bytes | str, ...]


class Cipher(Protocol):
    """Envelope encryption bound to a purpose (the column) and the identity of the row that
    stores the blob.

    ``decrypt`` raises :class:`credbroker.domain.errors.DataIntegrityError` when the blob does not
    authenticate under that binding.
    """

    def encrypt(self, plaintext: bytes, *, purpose: str, binding: Binding) -> bytes: ...

    def decrypt(self, blob: bytes, *, purpose: str, binding: Binding) -> bytes: ...

    def rewrap(self, blob: bytes, *, purpose: str, binding: Binding) -> bytes:
        """The same plaintext under the primary master key and the current binding (the data
        key rewrapped; or, for a blob of the legacy binding, encrypted afresh). The returned
        blob is the given one when it needs neither."""
        ...


class IntegrationRepository(Protocol):
    async def create(self, integration: Integration) -> Integration: ...

    async def get(self, environment_id: UUID, integration_id: str) -> Integration | None: ...

    async def list(
        self, environment_id: UUID, *, after: str | None, limit: int
    ) -> list[Integration]: ...

    async def update(
        self,
        environment_id: UUID,
        integration_id: str,
        *,
        display_name: str | None,
        integration_config: Mapping[str, str] | None,
    ) -> Integration | None:
        """Replaces the given fields (None keeps the stored value)."""
        ...

    async def delete(self, environment_id: UUID, integration_id: str, *, force: bool) -> bool:
        """Deletes; raises FailedPreconditionError if connections exist and not ``force``."""
        ...


@dataclass(frozen=True)
class NewConnection:
    id: UUID
    environment_id: UUID
    integration_id: str
    connection_id: str
    auth_mode: AuthMode
    secrets: EncryptedConnectionSecrets
    metadata: Mapping[str, Any]
    tags: Mapping[str, str]
    connection_config_keys: tuple[str, ...]
    verification: VerificationRecord = UNVERIFIED
    end_user: EndUser | None = None
    organization: Organization | None = None


@dataclass(frozen=True)
class StoredConnection:
    """A connection with its ciphertexts and what resolving its auth needs from the integration."""

    connection: Connection
    secrets: EncryptedConnectionSecrets
    provider: str
    integration_config: Mapping[str, str]


@dataclass(frozen=True)
class ConnectionChanges:
    """Replacement values for an update; ``None`` keeps the stored value."""

    credentials: bytes | None = None
    connection_config: bytes | None = None
    connection_config_keys: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] | None = field(default=None)
    tags: Mapping[str, str] | None = None
    verification: VerificationRecord | None = None


class ConnectionRepository(Protocol):
    """Every change also writes its connection event in the same transaction: created on
    ``create``, deleted on ``delete``, the ``event`` given to ``update``, and the
    verification_failed / verification_recovered transitions of ``record_verification``."""

    async def create(self, connection: NewConnection) -> Connection:
        """Inserts; AlreadyExistsError if the id is taken, NotFoundError if no integration."""
        ...

    async def get(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> Connection | None: ...

    async def get_with_secrets(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> StoredConnection | None: ...

    async def list_stale(self, verified_before: datetime, limit: int) -> list[StoredConnection]:
        """Connections of every environment not verified since ``verified_before`` (never
        verified first), for the background re-check."""
        ...

    async def record_verification(
        self, environment_id: UUID, id: UUID, record: VerificationRecord
    ) -> Connection | None:
        """Stores a verification outcome; counts consecutive failures. Leaves the etag alone."""
        ...

    async def list(
        self,
        environment_id: UUID,
        *,
        integration_id: str | None,
        tags: Mapping[str, str],
        verification_state: VerificationState | None = None,
        after: tuple[str, str] | None,
        limit: int,
        integration_ids: Sequence[str] = (),
        connection_id: str | None = None,
        search: str | None = None,
        end_user_id: str | None = None,
        organization_id: str | None = None,
    ) -> list[Connection]:
        """Sorted by (integration id, connection id), after ``after``. ``integration_ids``
        (any of) narrows like ``integration_id``; ``connection_id`` is exact; ``search`` is a
        case-insensitive substring of the connection id or of the end user's id, email or
        display name; ``end_user_id`` and ``organization_id`` are exact."""
        ...

    async def update_metadata(
        self,
        environment_id: UUID,
        integration_id: str,
        connection_ids: Sequence[str],
        compute: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> Sequence[Connection] | None:
        """In one transaction: replaces the metadata of each named connection with
        ``compute(current metadata)``. None, with nothing changed, if any id is unknown; an
        exception raised by ``compute`` also leaves everything unchanged."""
        ...

    async def record_fetches(self, fetched: Mapping[UUID, datetime]) -> None:
        """Stores when connections (by row id) were last read; ids since deleted are skipped."""
        ...

    async def update(
        self,
        environment_id: UUID,
        id: UUID,
        changes: ConnectionChanges,
        *,
        expected_version: int | None,
        event: ConnectionEventType | None = None,
    ) -> Connection | None:
        """Applies changes if the row exists (and has ``expected_version`` when given), and
        writes ``event`` with them."""
        ...

    async def delete(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> bool: ...


class EnvironmentRepository(Protocol):
    async def create(self, name: str) -> Environment:
        """Inserts; AlreadyExistsError if the name is taken."""
        ...

    async def get_by_name(self, name: str) -> Environment | None: ...

    async def list(self) -> list[Environment]: ...


class SecretKeyRepository(Protocol):
    async def create(self, record: SecretKeyRecord) -> None: ...

    async def get(self, key_id: str) -> SecretKeyRecord | None: ...

    async def list(self, environment_id: UUID) -> list[SecretKeyRecord]: ...

    async def revoke(self, key_id: str) -> bool:
        """Marks the key revoked; False if no such key (revoking twice keeps the first time)."""
        ...

    async def expire_by(self, key_id: str, expire_time: datetime) -> None:
        """Moves the key's expiry to ``expire_time`` unless it already expires sooner."""
        ...

    async def record_last_used(self, used: Mapping[str, datetime]) -> None: ...


class ConnectSessionRepository(Protocol):
    async def create(self, session: ConnectSession, token_hash: bytes) -> None: ...

    async def get(self, environment_id: UUID, id: UUID) -> ConnectSession | None: ...

    async def get_by_token_hash(self, token_hash: bytes) -> ConnectSession | None: ...

    async def list(
        self, environment_id: UUID, *, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[ConnectSession]:
        """Newest first."""
        ...

    async def delete(self, environment_id: UUID, id: UUID) -> bool: ...

    async def begin_attempt(
        self, id: UUID, *, until: datetime, max_attempts: int
    ) -> ConnectSession | None:
        """Claims the session for one submission until ``until``; None unless it is unconsumed,
        unexpired, under ``max_attempts`` failures and not claimed by another submission."""
        ...

    async def end_attempt(self, id: UUID, *, failed: bool) -> None:
        """Releases the claim, counting a failure if ``failed``."""
        ...

    async def consume(self, id: UUID, integration_id: str) -> None:
        """Marks the session used (it admits nobody afterwards) and releases the claim."""
        ...

    async def purge_expired(self, before: datetime) -> int:
        """Deletes sessions that expired before ``before``; returns how many."""
        ...
