"""Connection use cases. Secrets are encrypted here, before storage, and decrypted only by
access (AccessCredentials)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from credbroker.domain.destinations import destination_changes, require_credentials_read
from credbroker.domain.errors import (
    AlreadyExistsError,
    ConflictError,
    DataIntegrityError,
    DomainError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from credbroker.domain.etags import check_etag, parse_etag
from credbroker.domain.events import ConnectionEventType
from credbroker.domain.injection import check_config, resolve_auth, verification_for
from credbroker.domain.integrations import IntegrationService
from credbroker.domain.models import (
    UNVERIFIED,
    ApiKeyCredentials,
    AuthMode,
    BasicCredentials,
    Connection,
    Credentials,
    EncryptedConnectionSecrets,
    EndUser,
    Organization,
    Page,
    Principal,
    RevealedCredentials,
    Scope,
    VerificationRecord,
    VerificationState,
    auth_mode_of,
)
from credbroker.domain.ports import (
    Binding,
    Cipher,
    ConnectionChanges,
    ConnectionRepository,
    NewConnection,
    StoredConnection,
)
from credbroker.domain.providers import Provider, ProviderCatalog
from credbroker.domain.validation import (
    CONNECTION_ID_PATTERN,
    INTEGRATION_ID_PATTERN,
    Violations,
    check_connection_config,
    check_connection_id,
    check_credentials,
    check_integration_id,
    check_metadata,
    check_page_size,
    check_search,
    check_tags,
)
from credbroker.domain.verification import CredentialVerifier

log = structlog.get_logger("credbroker.connections")

CONNECTION_NOT_FOUND = "connection not found"
MAX_METADATA_TARGETS = 1000
CREDENTIALS_PURPOSE = "connection.credentials"
CONFIG_PURPOSE = "connection.connection_config"
UPDATABLE_PATHS = frozenset({"credentials", "metadata", "connection_config", "tags"})


@dataclass(frozen=True)
class ConnectionDraft:
    """A connection as submitted by a caller; ``None`` fields were not provided."""

    integration_id: str
    connection_id: str
    credentials: Credentials | None
    metadata: Mapping[str, Any] | None
    connection_config: Mapping[str, str] | None
    tags: Mapping[str, str] | None
    end_user: EndUser | None = None
    organization: Organization | None = None

    def __repr__(self) -> str:
        return f"ConnectionDraft({self.integration_id!r}, {self.connection_id!r}, <redacted>)"


@dataclass(frozen=True)
class FetchedConnection:
    """A connection read by a backend: its provider and, when revealed, its secrets."""

    connection: Connection
    provider: str
    revealed: RevealedCredentials | None = None


def _not_found() -> NotFoundError:
    return NotFoundError(CONNECTION_NOT_FOUND, reason="CONNECTION_NOT_FOUND")


def binding(
    environment_id: uuid.UUID, integration_id: str, connection_id: str, id: uuid.UUID
) -> Binding:
    """The immutable identity of a row owning a ciphertext: every id it is found by (a blob
    moved elsewhere, or a row given another environment, integration or connection id, fails
    to decrypt); binding v1 had the row id but not the connection id."""
    environment, row = environment_id.bytes, id.bytes
    return Binding(
        (environment, integration_id, connection_id, row), (environment, integration_id, row)
    )


def connection_binding(connection: Connection | NewConnection) -> Binding:
    return binding(
        connection.environment_id,
        connection.integration_id,
        connection.connection_id,
        connection.id,
    )


def _serialize_credentials(credentials: Credentials) -> bytes:
    if isinstance(credentials, ApiKeyCredentials):
        document: dict[str, str] = {"api_key": credentials.api_key}
    else:
        document = {"username": credentials.username, "password": credentials.password}
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _deserialize_credentials(auth_mode: AuthMode, plaintext: bytes) -> Credentials:
    document = json.loads(plaintext.decode("utf-8"))  # str: skips json's encoding detection
    if auth_mode is AuthMode.API_KEY:
        return ApiKeyCredentials(document["api_key"])
    return BasicCredentials(document["username"], document["password"])


class ConnectionService:
    def __init__(
        self,
        repository: ConnectionRepository,
        integrations: IntegrationService,
        cipher: Cipher,
        catalog: ProviderCatalog,
        verifier: CredentialVerifier,
    ) -> None:
        self._repository = repository
        self._integrations = integrations
        self._cipher = cipher
        self._catalog = catalog
        self._verifier = verifier
        # row id -> last read, written in batches by flush_fetches() (no write per read).
        self._fetched: dict[uuid.UUID, datetime] = {}

    def _note_fetch(self, connection: Connection) -> None:
        self._fetched[connection.id] = datetime.now(UTC)

    async def flush_fetches(self) -> None:
        """Writes the read times gathered since the previous flush in one statement."""
        fetched, self._fetched = self._fetched, {}
        if not fetched:
            return
        try:
            await self._repository.record_fetches(fetched)
        except BaseException:
            for connection_id, time in fetched.items():  # kept for the next flush
                self._fetched.setdefault(connection_id, time)
            raise

    def _provider(self, name: str) -> Provider:
        provider = self._catalog.get(name)
        if provider is None:
            raise FailedPreconditionError(
                f"provider {name!r} is no longer in the catalog", reason="PROVIDER_NOT_IN_CATALOG"
            )
        return provider

    def _decrypt(self, stored: StoredConnection) -> tuple[Credentials, dict[str, str]]:
        connection = stored.connection
        bound = connection_binding(connection)
        credentials_plain = self._cipher.decrypt(
            stored.secrets.credentials, purpose=CREDENTIALS_PURPOSE, binding=bound
        )
        config_plain = self._cipher.decrypt(
            stored.secrets.connection_config, purpose=CONFIG_PURPOSE, binding=bound
        )
        try:
            credentials = _deserialize_credentials(connection.auth_mode, credentials_plain)
            config = {} if config_plain == b"{}" else json.loads(config_plain.decode("utf-8"))
        except (ValueError, KeyError, TypeError):
            raise DataIntegrityError("stored credentials are unreadable") from None
        return credentials, config

    async def _stored(
        self, principal: Principal, integration_id: str, connection_id: str
    ) -> StoredConnection:
        _check_ids(integration_id, connection_id)
        stored = await self._repository.get_with_secrets(
            principal.environment_id, integration_id, connection_id
        )
        if stored is None:
            raise _not_found()
        return stored

    def _encrypt(
        self, plaintext: bytes, purpose: str, connection: NewConnection | Connection
    ) -> bytes:
        return self._cipher.encrypt(
            plaintext,
            purpose=purpose,
            binding=connection_binding(connection),
        )

    def _validate_draft(
        self, draft: ConnectionDraft, *, creating: bool, paths: frozenset[str]
    ) -> None:
        v = Violations()
        check_integration_id(v, "connection.integration_id", draft.integration_id)
        if draft.connection_id or not creating:
            check_connection_id(v, "connection.connection_id", draft.connection_id)
        if creating or "credentials" in paths:
            check_credentials(v, "connection.credentials", draft.credentials)
        if draft.metadata is not None and "metadata" in paths:
            check_metadata(v, "connection.metadata", draft.metadata)
        if draft.connection_config is not None and "connection_config" in paths:
            check_connection_config(v, "connection.connection_config", draft.connection_config)
        if draft.tags is not None and "tags" in paths:
            check_tags(v, "connection.tags", draft.tags)
        v.raise_if_any()

    @staticmethod
    def _check_auth_mode(expected: AuthMode, credentials: Credentials | None) -> None:
        if credentials is not None and auth_mode_of(credentials) is not expected:
            raise InvalidArgumentError.single(
                "connection.credentials",
                f"the integration takes {expected.value} credentials",
                reason="CREDENTIALS_AUTH_MODE_MISMATCH",
            )

    async def create(
        self, principal: Principal, draft: ConnectionDraft, *, skip_verification: bool = False
    ) -> Connection:
        """Stores a connection. Unless ``skip_verification``, the provider must accept the
        credentials first (nothing is stored otherwise)."""
        self._validate_draft(draft, creating=True, paths=UPDATABLE_PATHS)
        integration = await self._integrations.get(principal, draft.integration_id)
        self._check_auth_mode(integration.auth_mode, draft.credentials)
        assert draft.credentials is not None
        provider = self._provider(integration.provider)
        config = dict(draft.connection_config or {})
        _check_provider_config(provider, config)
        verification = UNVERIFIED
        if not skip_verification:
            verification = await self._verifier.before_storing(
                provider, integration.integration_config, draft.credentials, config
            )
        row = NewConnection(
            id=uuid.uuid4(),
            environment_id=principal.environment_id,
            integration_id=integration.integration_id,
            connection_id=draft.connection_id or str(uuid.uuid4()),
            auth_mode=integration.auth_mode,
            secrets=EncryptedConnectionSecrets(b"", b""),
            metadata=dict(draft.metadata or {}),
            tags=dict(draft.tags or {}),
            connection_config_keys=tuple(sorted(config)),
            verification=verification,
            end_user=draft.end_user,
            organization=draft.organization,
        )
        secrets = EncryptedConnectionSecrets(
            credentials=self._encrypt(
                _serialize_credentials(draft.credentials), CREDENTIALS_PURPOSE, row
            ),
            connection_config=self._encrypt(_serialize_config(config), CONFIG_PURPOSE, row),
        )
        return await self._repository.create(dataclasses.replace(row, secrets=secrets))

    async def get(
        self, principal: Principal, integration_id: str, connection_id: str
    ) -> Connection:
        _check_ids(integration_id, connection_id)
        connection = await self._repository.get(
            principal.environment_id, integration_id, connection_id
        )
        if connection is None:
            raise _not_found()
        self._note_fetch(connection)
        return connection

    async def fetch(
        self, principal: Principal, integration_id: str, connection_id: str, *, reveal: bool
    ) -> FetchedConnection:
        """One connection as a backend reads it, with its secrets and ready-to-use auth when
        ``reveal`` (the caller checks the scope and audits the reveal)."""
        stored = await self._stored(principal, integration_id, connection_id)
        self._note_fetch(stored.connection)
        revealed = self._reveal(stored) if reveal else None
        return FetchedConnection(stored.connection, stored.provider, revealed)

    async def list(
        self,
        principal: Principal,
        *,
        integration_id: str,
        tags: Mapping[str, str],
        page_size: int,
        after: tuple[str, str] | None,
        verification_state: VerificationState | None = None,
        integration_ids: Sequence[str] = (),
        connection_id: str = "",
        search: str = "",
        end_user_id: str = "",
        organization_id: str = "",
    ) -> Page[Connection]:
        """One page in (integration id, connection id) order. Filters combine with AND:
        ``integration_id`` or any of ``integration_ids``, the exact ``connection_id``, a
        case-insensitive ``search`` within connection ids and end users' ids, emails and
        display names, the exact ``end_user_id`` and ``organization_id``, and every tag."""
        v = Violations()
        if integration_id:
            check_integration_id(v, "integration_id", integration_id)
        for index, item in enumerate(integration_ids):
            check_integration_id(v, f"integration_ids[{index}]", item)
        if connection_id:
            check_connection_id(v, "connection_id", connection_id)
        check_search(v, "search", search)
        check_search(v, "end_user_id", end_user_id)
        check_search(v, "organization_id", organization_id)
        check_tags(v, "tags", tags)
        limit = check_page_size(v, "page_size", page_size)
        v.raise_if_any()
        rows = await self._repository.list(
            principal.environment_id,
            integration_id=integration_id or None,
            tags=tags,
            verification_state=verification_state,
            after=after,
            limit=limit + 1,
            integration_ids=tuple(integration_ids),
            connection_id=connection_id or None,
            search=search or None,
            end_user_id=end_user_id or None,
            organization_id=organization_id or None,
        )
        items = rows[:limit]
        more = len(rows) > limit
        cursor = (items[-1].integration_id, items[-1].connection_id) if more and items else None
        return Page(items, cursor)

    async def update(
        self,
        principal: Principal,
        draft: ConnectionDraft,
        paths: frozenset[str],
        *,
        etag: str,
        allow_missing: bool,
        skip_verification: bool = False,
    ) -> Connection:
        """Replaces the fields in ``paths``. New credentials or config are verified against
        the provider (with the stored other half) unless ``skip_verification``."""
        unknown = sorted(paths - UPDATABLE_PATHS)
        if unknown:
            raise InvalidArgumentError.single(
                "update_mask", f"unknown or read-only field {unknown[0]}"
            )
        if not paths:
            raise InvalidArgumentError.single("update_mask", "names no field to update")
        expected_version = parse_etag(etag)
        self._validate_draft(draft, creating=False, paths=paths)
        stored = await self._repository.get_with_secrets(
            principal.environment_id, draft.integration_id, draft.connection_id
        )
        if stored is None:
            if not allow_missing or expected_version is not None:
                raise _not_found()
            try:
                return await self.create(principal, draft, skip_verification=skip_verification)
            except AlreadyExistsError:  # created concurrently: update it instead
                stored = await self._stored(principal, draft.integration_id, draft.connection_id)
        current = stored.connection
        check_etag(etag, current.id)
        if "credentials" in paths:
            self._check_auth_mode(current.auth_mode, draft.credentials)
        else:
            self._check_may_redirect(principal, stored, draft, paths)
        verification = None
        if paths & {"credentials", "connection_config"}:
            verification = await self._verify_replacement(stored, draft, paths, skip_verification)
        changes = self._changes(current, draft, paths, verification)
        replaced = "credentials" in paths
        updated = await self._repository.update(
            principal.environment_id,
            current.id,
            changes,
            expected_version=expected_version,
            event=ConnectionEventType.CREDENTIALS_REPLACED if replaced else None,
        )
        if updated is not None:
            return updated
        if expected_version is not None and await self._repository.get(
            principal.environment_id, draft.integration_id, draft.connection_id
        ):
            raise ConflictError(
                "the connection changed since the etag was read", reason="ETAG_MISMATCH"
            )
        raise _not_found()

    def _check_may_redirect(
        self,
        principal: Principal,
        stored: StoredConnection,
        draft: ConnectionDraft,
        paths: frozenset[str],
    ) -> None:
        """Config that moves where the stored credentials go needs credentials:read (see
        :mod:`credbroker.domain.destinations`); checked before anything is verified or sent."""
        if "connection_config" not in paths or Scope.CREDENTIALS_READ in principal.scopes:
            return
        provider = self._provider(stored.provider)
        connection = stored.connection
        try:
            before: dict[str, str] | None = json.loads(
                self._cipher.decrypt(
                    stored.secrets.connection_config,
                    purpose=CONFIG_PURPOSE,
                    binding=connection_binding(connection),
                )
            )
        except (DataIntegrityError, ValueError):
            before = None  # unreadable: any destination counts as a change
        after = dict(draft.connection_config or {})
        if destination_changes(provider, "connection_config", before, after):
            require_credentials_read(principal, "connection_config")

    async def replace_credentials(
        self,
        principal: Principal,
        integration_id: str,
        connection_id: str,
        credentials: Credentials,
    ) -> Connection:
        """Replaces only the credentials of an existing connection (verified with its stored
        config); its config, metadata, tags and end user stay as they are."""
        draft = ConnectionDraft(integration_id, connection_id, credentials, None, None, None)
        return await self.update(
            principal, draft, frozenset({"credentials"}), etag="", allow_missing=False
        )

    async def _verify_replacement(
        self,
        stored: StoredConnection,
        draft: ConnectionDraft,
        paths: frozenset[str],
        skip_verification: bool,
    ) -> VerificationRecord:
        """Checks the credentials and config the connection will hold after the update. The
        stored half is decrypted only when the check needs it, so replacing both halves (or
        skipping the check) also repairs a row whose ciphertext no longer authenticates."""
        provider = self._provider(stored.provider)
        if "connection_config" in paths:
            _check_provider_config(provider, dict(draft.connection_config or {}))
        if skip_verification or verification_for(provider, stored.integration_config) is None:
            return UNVERIFIED
        if paths >= {"credentials", "connection_config"}:
            credentials: Credentials | None = None
            config: dict[str, str] = {}
        else:
            credentials, config = self._decrypt(stored)
        if "credentials" in paths:
            credentials = draft.credentials
        if "connection_config" in paths:
            config = dict(draft.connection_config or {})
        assert credentials is not None
        return await self._verifier.before_storing(
            provider, stored.integration_config, credentials, config
        )

    def _changes(
        self,
        current: Connection,
        draft: ConnectionDraft,
        paths: frozenset[str],
        verification: VerificationRecord | None,
    ) -> ConnectionChanges:
        credentials = config = None
        config_keys = None
        if "credentials" in paths:
            assert draft.credentials is not None
            credentials = self._encrypt(
                _serialize_credentials(draft.credentials), CREDENTIALS_PURPOSE, current
            )
        if "connection_config" in paths:
            new_config = dict(draft.connection_config or {})
            config = self._encrypt(_serialize_config(new_config), CONFIG_PURPOSE, current)
            config_keys = tuple(sorted(new_config))
        return ConnectionChanges(
            credentials=credentials,
            connection_config=config,
            connection_config_keys=config_keys,
            metadata=dict(draft.metadata or {}) if "metadata" in paths else None,
            tags=dict(draft.tags or {}) if "tags" in paths else None,
            verification=verification,
        )

    async def set_metadata(
        self,
        principal: Principal,
        integration_id: str,
        connection_ids: Sequence[str],
        metadata: Mapping[str, Any],
        *,
        merge: bool,
    ) -> Sequence[Connection]:
        """Replaces (or, with ``merge``, shallow-merges: top-level keys of ``metadata`` win)
        the metadata of one or several connections of an integration, atomically: if any id
        is unknown, or any result is too large, nothing changes."""
        v = Violations()
        check_integration_id(v, "provider_config_key", integration_id)
        if not connection_ids:
            v.add("connection_id", "is required")
        elif len(connection_ids) > MAX_METADATA_TARGETS:
            v.add("connection_id", f"must name at most {MAX_METADATA_TARGETS} connections")
        for index, connection_id in enumerate(connection_ids):
            field = "connection_id" if len(connection_ids) == 1 else f"connection_id[{index}]"
            check_connection_id(v, field, connection_id)
        check_metadata(v, "metadata", metadata)
        v.raise_if_any()

        def compute(current: Mapping[str, Any]) -> Mapping[str, Any]:
            result = {**current, **metadata} if merge else dict(metadata)
            checked = Violations()
            check_metadata(checked, "metadata", result)
            checked.raise_if_any()
            return result

        updated = await self._repository.update_metadata(
            principal.environment_id, integration_id, connection_ids, compute
        )
        if updated is None:
            raise _not_found()
        return updated

    async def delete(self, principal: Principal, integration_id: str, connection_id: str) -> None:
        _check_ids(integration_id, connection_id)
        if not await self._repository.delete(
            principal.environment_id, integration_id, connection_id
        ):
            raise _not_found()

    async def access(
        self, principal: Principal, integration_id: str, connection_id: str
    ) -> RevealedCredentials:
        stored = await self._stored(principal, integration_id, connection_id)
        revealed = self._reveal(stored)
        self._note_fetch(stored.connection)
        return revealed

    def _reveal(self, stored: StoredConnection) -> RevealedCredentials:
        credentials, config = self._decrypt(stored)
        auth = resolve_auth(
            self._provider(stored.provider), stored.integration_config, credentials, config
        )
        return RevealedCredentials(
            stored.connection, credentials, config, auth.base_url, auth.headers, auth.query_params
        )

    async def verify(
        self, principal: Principal, integration_id: str, connection_id: str
    ) -> Connection:
        """Checks the stored credentials against the provider now and records the outcome."""
        stored = await self._stored(principal, integration_id, connection_id)
        provider = self._provider(stored.provider)
        connection = await self._check_stored(stored, provider)
        if connection is None:
            raise FailedPreconditionError(
                f"{provider.display_name} has no verification request",
                reason="VERIFICATION_NOT_AVAILABLE",
            )
        return connection

    async def _check_stored(
        self, stored: StoredConnection, provider: Provider
    ) -> Connection | None:
        """Probes and records; None when the provider has no verification request."""
        credentials, config = self._decrypt(stored)
        result = await self._verifier.probe(
            provider, stored.integration_config, credentials, config
        )
        if result is None:
            return None
        record = VerificationRecord(result.state, datetime.now(UTC), result.http_status)
        connection = stored.connection
        updated = await self._repository.record_verification(
            connection.environment_id, connection.id, record
        )
        if updated is None:
            raise _not_found()
        return updated

    async def recheck_stale(self, max_age: timedelta, limit: int) -> int:
        """Re-verifies up to ``limit`` connections (of every environment) not verified within
        ``max_age``; returns how many were checked. Connections whose provider cannot verify
        are stamped UNVERIFIED so they are not picked again before ``max_age``."""
        stale = await self._repository.list_stale(datetime.now(UTC) - max_age, limit)
        for stored in stale:
            connection = stored.connection
            try:
                provider = self._provider(stored.provider)
                if await self._check_stored(stored, provider) is None:
                    await self._repository.record_verification(
                        connection.environment_id,
                        connection.id,
                        VerificationRecord(VerificationState.UNVERIFIED, datetime.now(UTC)),
                    )
            except (DomainError, OSError) as exc:
                # Recorded as ERROR with a time, so it does not head every later batch and
                # starve the other connections of re-checks.
                log.warning(
                    "re-check failed",
                    connection_id=connection.connection_id,
                    error_type=type(exc).__name__,
                )
                with contextlib.suppress(DomainError, OSError):
                    await self._repository.record_verification(
                        connection.environment_id,
                        connection.id,
                        VerificationRecord(VerificationState.ERROR, datetime.now(UTC)),
                    )
        return len(stale)


def _check_provider_config(provider: Provider, config: Mapping[str, str]) -> None:
    v = Violations()
    check_config(v, "connection.connection_config", provider.connection_config, config)
    v.raise_if_any()


def _serialize_config(config: Mapping[str, str]) -> bytes:
    return json.dumps(dict(config), separators=(",", ":"), sort_keys=True).encode("utf-8")


def _check_ids(integration_id: str, connection_id: str) -> None:
    if INTEGRATION_ID_PATTERN.fullmatch(integration_id) and CONNECTION_ID_PATTERN.fullmatch(
        connection_id
    ):
        return  # the common case (the patterns bound the lengths too), without a Violations
    v = Violations()
    check_integration_id(v, "integration_id", integration_id)
    check_connection_id(v, "connection_id", connection_id)
    v.raise_if_any()
