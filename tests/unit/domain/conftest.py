"""In-memory fakes of the domain ports, for testing the use cases without a database.

The fakes follow the documented port contracts (``credbroker.domain.ports``) and add a few hooks
(``hide_next_get``, ``before_update``) that let a test simulate concurrent writers.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from credbroker.domain.connections import ConnectionService
from credbroker.domain.errors import (
    AlreadyExistsError,
    DataIntegrityError,
    FailedPreconditionError,
    NotFoundError,
)
from credbroker.domain.events import ConnectionEventType
from credbroker.domain.injection import ResolvedAuth
from credbroker.domain.integrations import IntegrationService
from credbroker.domain.models import (
    ALL_SCOPES,
    Connection,
    EncryptedConnectionSecrets,
    Integration,
    Principal,
    VerificationRecord,
    VerificationState,
)
from credbroker.domain.ports import Binding, ConnectionChanges, NewConnection, StoredConnection
from credbroker.domain.providers import Verification, default_catalog
from credbroker.domain.verification import CredentialVerifier, ProbeResult


@dataclasses.dataclass(frozen=True)
class Sealed:
    plaintext: bytes
    purpose: str
    binding: Binding


class FakeCipher:
    """Hands out opaque handles; decrypt succeeds only with the purpose and binding used to
    encrypt, like the real AEAD (a blob moved to another row or column fails)."""

    def __init__(self) -> None:
        self.sealed: dict[bytes, Sealed] = {}
        self.encrypt_calls: list[Sealed] = []
        self._counter = itertools.count(1)

    def encrypt(self, plaintext: bytes, *, purpose: str, binding: Binding) -> bytes:
        blob = b"fake-blob-" + str(next(self._counter)).encode()
        sealed = Sealed(plaintext, purpose, binding)
        self.sealed[blob] = sealed
        self.encrypt_calls.append(sealed)
        return blob

    def decrypt(self, blob: bytes, *, purpose: str, binding: Binding) -> bytes:
        sealed = self.sealed.get(blob)
        if sealed is None or sealed.purpose != purpose or sealed.binding != binding:
            raise DataIntegrityError("stored ciphertext failed authentication")
        return sealed.plaintext

    def rewrap(self, blob: bytes, *, purpose: str, binding: Binding) -> bytes:
        plaintext = self.decrypt(blob, purpose=purpose, binding=binding)
        return self.encrypt(plaintext, purpose=purpose, binding=binding)

    def plaintext(self, blob: bytes) -> bytes:
        return self.sealed[blob].plaintext


class FakeIntegrationRepository:
    def __init__(self) -> None:
        self.rows: dict[tuple[UUID, str], Integration] = {}
        self.connections: FakeConnectionRepository | None = None

    async def create(self, integration: Integration) -> Integration:
        key = (integration.environment_id, integration.integration_id)
        if key in self.rows:
            raise AlreadyExistsError(
                "an integration with this id already exists", reason="INTEGRATION_ALREADY_EXISTS"
            )
        self.rows[key] = integration
        return integration

    async def get(self, environment_id: UUID, integration_id: str) -> Integration | None:
        return self.rows.get((environment_id, integration_id))

    async def list(
        self, environment_id: UUID, *, after: str | None, limit: int
    ) -> list[Integration]:
        rows = sorted(
            (r for (env, _), r in self.rows.items() if env == environment_id),
            key=lambda r: r.integration_id,
        )
        if after is not None:
            rows = [r for r in rows if r.integration_id > after]
        return rows[:limit]

    async def update(
        self,
        environment_id: UUID,
        integration_id: str,
        *,
        display_name: str | None,
        integration_config: Mapping[str, str] | None,
    ) -> Integration | None:
        current = self.rows.get((environment_id, integration_id))
        if current is None:
            return None
        updated = dataclasses.replace(
            current,
            display_name=current.display_name if display_name is None else display_name,
            integration_config=current.integration_config
            if integration_config is None
            else dict(integration_config),
            update_time=datetime.now(UTC),
        )
        self.rows[(environment_id, integration_id)] = updated
        return updated

    async def delete(self, environment_id: UUID, integration_id: str, *, force: bool) -> bool:
        if (environment_id, integration_id) not in self.rows:
            return False
        if self.connections is not None:
            children = self.connections.children(environment_id, integration_id)
            if children and not force:
                raise FailedPreconditionError(
                    "the integration has connections; delete them or pass force",
                    reason="INTEGRATION_HAS_CONNECTIONS",
                )
            for child in children:
                del self.connections.rows[child.id]
        del self.rows[(environment_id, integration_id)]
        return True


class FakeConnectionRepository:
    def __init__(self, integrations: FakeIntegrationRepository) -> None:
        self.rows: dict[UUID, tuple[Connection, EncryptedConnectionSecrets]] = {}
        self.integrations = integrations
        integrations.connections = self
        self.updates: list[tuple[UUID, ConnectionChanges, int | None]] = []
        self.fetches: list[dict[UUID, datetime]] = []
        # Concurrency hooks: hide the row from the next get(); run a callback before an update.
        self.hide_next_get = False
        self.before_update: Callable[[], None] | None = None

    def children(self, environment_id: UUID, integration_id: str) -> list[Connection]:
        return [
            c
            for c, _ in self.rows.values()
            if c.environment_id == environment_id and c.integration_id == integration_id
        ]

    def find(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> tuple[Connection, EncryptedConnectionSecrets] | None:
        for connection, secrets in self.rows.values():
            if (
                connection.environment_id == environment_id
                and connection.integration_id == integration_id
                and connection.connection_id == connection_id
            ):
                return connection, secrets
        return None

    def bump(self, environment_id: UUID, integration_id: str, connection_id: str) -> None:
        """Simulates another writer changing the row (its version goes up)."""
        found = self.find(environment_id, integration_id, connection_id)
        assert found is not None
        connection, secrets = found
        self.rows[connection.id] = (
            dataclasses.replace(connection, version=connection.version + 1),
            secrets,
        )

    async def create(self, connection: NewConnection) -> Connection:
        if (connection.environment_id, connection.integration_id) not in self.integrations.rows:
            raise NotFoundError("integration not found", reason="INTEGRATION_NOT_FOUND")
        if self.find(
            connection.environment_id, connection.integration_id, connection.connection_id
        ):
            raise AlreadyExistsError(
                "a connection with this id already exists", reason="CONNECTION_ALREADY_EXISTS"
            )
        now = datetime.now(UTC)
        stored = Connection(
            id=connection.id,
            environment_id=connection.environment_id,
            integration_id=connection.integration_id,
            connection_id=connection.connection_id,
            auth_mode=connection.auth_mode,
            metadata=dict(connection.metadata),
            tags=dict(connection.tags),
            connection_config_keys=connection.connection_config_keys,
            credentials_set=True,
            version=1,
            create_time=now,
            update_time=now,
            verification=connection.verification,
        )
        self.rows[connection.id] = (stored, connection.secrets)
        return stored

    async def get(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> Connection | None:
        if self.hide_next_get:
            self.hide_next_get = False
            return None
        found = self.find(environment_id, integration_id, connection_id)
        return found[0] if found else None

    def _stored(
        self, connection: Connection, secrets: EncryptedConnectionSecrets
    ) -> StoredConnection:
        integration = self.integrations.rows[(connection.environment_id, connection.integration_id)]
        return StoredConnection(
            connection, secrets, integration.provider, dict(integration.integration_config)
        )

    async def get_with_secrets(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> StoredConnection | None:
        found = self.find(environment_id, integration_id, connection_id)
        return self._stored(*found) if found else None

    async def list_stale(self, verified_before: datetime, limit: int) -> list[StoredConnection]:
        stale = [
            (c, s)
            for c, s in self.rows.values()
            if c.verification.verify_time is None or c.verification.verify_time < verified_before
        ]
        stale.sort(
            key=lambda row: row[0].verification.verify_time or datetime.min.replace(tzinfo=UTC)
        )
        return [self._stored(c, s) for c, s in stale[:limit]]

    async def record_verification(
        self, environment_id: UUID, id: UUID, record: VerificationRecord
    ) -> Connection | None:
        found = self.rows.get(id)
        if found is None or found[0].environment_id != environment_id:
            return None
        connection, secrets = found
        failures = (
            0
            if record.state in (VerificationState.VERIFIED, VerificationState.UNVERIFIED)
            else connection.verification.consecutive_failures + 1
        )
        connection = dataclasses.replace(
            connection, verification=dataclasses.replace(record, consecutive_failures=failures)
        )
        self.rows[id] = (connection, secrets)
        return connection

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
        rows = sorted(
            (
                c
                for c, _ in self.rows.values()
                if c.environment_id == environment_id
                and (integration_id is None or c.integration_id == integration_id)
                and (not integration_ids or c.integration_id in integration_ids)
                and (connection_id is None or c.connection_id == connection_id)
                and (search is None or _searched(search, c))
                and (
                    end_user_id is None or (c.end_user is not None and c.end_user.id == end_user_id)
                )
                and (
                    organization_id is None
                    or (c.organization is not None and c.organization.id == organization_id)
                )
                and all(c.tags.get(k) == v for k, v in tags.items())
                and (verification_state is None or c.verification.state is verification_state)
            ),
            key=lambda c: (c.integration_id, c.connection_id),
        )
        if after is not None:
            rows = [c for c in rows if (c.integration_id, c.connection_id) > after]
        return rows[:limit]

    async def update(
        self,
        environment_id: UUID,
        id: UUID,
        changes: ConnectionChanges,
        *,
        expected_version: int | None,
        event: ConnectionEventType | None = None,
    ) -> Connection | None:
        if self.before_update is not None:
            hook, self.before_update = self.before_update, None
            hook()
        self.updates.append((id, changes, expected_version))
        found = self.rows.get(id)
        if found is None or found[0].environment_id != environment_id:
            return None
        connection, secrets = found
        if expected_version is not None and connection.version != expected_version:
            return None
        secrets = EncryptedConnectionSecrets(
            credentials=changes.credentials
            if changes.credentials is not None
            else secrets.credentials,
            connection_config=changes.connection_config
            if changes.connection_config is not None
            else secrets.connection_config,
        )
        connection = dataclasses.replace(
            connection,
            metadata=dict(changes.metadata)
            if changes.metadata is not None
            else connection.metadata,
            tags=dict(changes.tags) if changes.tags is not None else connection.tags,
            connection_config_keys=changes.connection_config_keys
            if changes.connection_config_keys is not None
            else connection.connection_config_keys,
            verification=changes.verification
            if changes.verification is not None
            else connection.verification,
            version=connection.version + 1,
            update_time=datetime.now(UTC),
        )
        self.rows[id] = (connection, secrets)
        return connection

    async def update_metadata(
        self,
        environment_id: UUID,
        integration_id: str,
        connection_ids: Sequence[str],
        compute: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> Sequence[Connection] | None:
        found = [self.find(environment_id, integration_id, c) for c in sorted(set(connection_ids))]
        if any(f is None for f in found):
            return None
        computed = [(f, dict(compute(f[0].metadata))) for f in found if f is not None]
        updated = []
        for (connection, secrets), metadata in computed:
            connection = dataclasses.replace(
                connection, metadata=metadata, version=connection.version + 1
            )
            self.rows[connection.id] = (connection, secrets)
            updated.append(connection)
        return updated

    async def record_fetches(self, fetched: Mapping[UUID, datetime]) -> None:
        self.fetches.append(dict(fetched))
        for id, when in fetched.items():
            if id in self.rows:
                connection, secrets = self.rows[id]
                self.rows[id] = (dataclasses.replace(connection, last_fetch_time=when), secrets)

    async def delete(self, environment_id: UUID, integration_id: str, connection_id: str) -> bool:
        found = self.find(environment_id, integration_id, connection_id)
        if found is None:
            return False
        del self.rows[found[0].id]
        return True


def _searched(search: str, connection: Connection) -> bool:
    end_user = connection.end_user
    texts = [connection.connection_id]
    if end_user is not None:
        texts += [end_user.id, end_user.email, end_user.display_name]
    return any(search.lower() in text.lower() for text in texts)


class FakeProbe:
    """Answers verification requests with ``result`` and records what it was asked."""

    def __init__(self) -> None:
        self.result = ProbeResult(VerificationState.VERIFIED, 200)
        self.calls: list[tuple[ResolvedAuth, Verification]] = []

    async def probe(self, auth: ResolvedAuth, verification: Verification) -> ProbeResult:
        self.calls.append((auth, verification))
        return self.result


def make_principal(name: str = "test") -> Principal:
    return Principal("k" * 16, uuid.uuid4(), name, ALL_SCOPES)


@pytest.fixture
def principal() -> Principal:
    return make_principal()


@pytest.fixture
def other_principal() -> Principal:
    """A caller in another environment."""
    return make_principal("other")


@pytest.fixture
def fake_cipher() -> FakeCipher:
    return FakeCipher()


@pytest.fixture
def integration_repo() -> FakeIntegrationRepository:
    return FakeIntegrationRepository()


@pytest.fixture
def connection_repo(integration_repo: FakeIntegrationRepository) -> FakeConnectionRepository:
    return FakeConnectionRepository(integration_repo)


@pytest.fixture
def integration_service(integration_repo: FakeIntegrationRepository) -> IntegrationService:
    return IntegrationService(integration_repo, default_catalog())


@pytest.fixture
def fake_probe() -> FakeProbe:
    return FakeProbe()


@pytest.fixture
def connection_service(
    connection_repo: FakeConnectionRepository,
    integration_service: IntegrationService,
    fake_cipher: FakeCipher,
    fake_probe: FakeProbe,
) -> ConnectionService:
    return ConnectionService(
        connection_repo,
        integration_service,
        fake_cipher,
        default_catalog(),
        CredentialVerifier(fake_probe),
    )
