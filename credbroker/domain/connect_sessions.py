"""Connect sessions: an app's backend asks for one, hands its token to the end user's browser,
and the browser stores the end user's credentials with it (through the hosted connect page or
the reference frontend SDK), so the key never passes through the app's servers.

Token format: ``cbcs_<secret><checksum>``: 43 base62 characters encoding 256 random bits and a
6-character CRC32 checksum (like secret keys), so malformed tokens are refused without a query
and scanners recognise leaked ones. Only ``SHA-256(domain ‖ token)`` is stored.

A session is bound to one environment, expires after its TTL, admits at most
``max_attempts`` failed submissions (a brute-force guard), one submission at a time, and is
consumed by the first successful one. Its ``allowed_integrations`` (empty: all) and
``allowed_origins`` bound what and from where the browser may submit. A reconnect session can
only replace the credentials of its one connection, keeping its config, metadata and tags.
Connections are made through :class:`~credbroker.domain.connections.ConnectionService`, so
they are validated and verified with the provider exactly like CreateConnection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from credbroker.domain.connections import ConnectionDraft, ConnectionService
from credbroker.domain.errors import (
    AlreadyExistsError,
    ConflictError,
    DomainError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from credbroker.domain.integrations import IntegrationService
from credbroker.domain.models import (
    Connection,
    ConnectSession,
    Credentials,
    EndUser,
    Integration,
    Organization,
    Page,
    Principal,
    ReconnectTarget,
)
from credbroker.domain.ports import ConnectSessionRepository
from credbroker.domain.providers import Provider, ProviderCatalog
from credbroker.domain.secret_keys import base62, checksum
from credbroker.domain.validation import (
    MAX_TAGS,
    Violations,
    check_connection_config,
    check_connection_id,
    check_integration_id,
    check_page_size,
    check_tags,
    has_control_chars,
)

PREFIX = "cbcs_"
SECRET_LENGTH = 43
CHECKSUM_LENGTH = 6
TOKEN_LENGTH = len(PREFIX) + SECRET_LENGTH + CHECKSUM_LENGTH
_TOKEN_PATTERN = re.compile(rf"cbcs_[0-9A-Za-z]{{{SECRET_LENGTH + CHECKSUM_LENGTH}}}")
_HASH_DOMAIN = b"credbroker/connect-session/v1\x00"

DEFAULT_TTL = timedelta(minutes=30)
MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(hours=24)
DEFAULT_MAX_ATTEMPTS = 5
ATTEMPT_LEASE_MARGIN = timedelta(seconds=5)
"""Added to the server's deadline per call to make a submission's lease (clocks, clean-up)."""
MAX_ALLOWED_INTEGRATIONS = 50
MAX_ALLOWED_ORIGINS = 20
MAX_LISTED_INTEGRATIONS = 100
MAX_END_USER_FIELD = 255
SESSION_NOT_FOUND = "connect session not found"


def generate_token() -> str:
    body = PREFIX + base62(int.from_bytes(secrets.token_bytes(32), "big"), SECRET_LENGTH)
    return body + checksum(body, CHECKSUM_LENGTH)


def token_hash(token: str) -> bytes | None:
    """The stored form of a well-formed token; None when malformed (no query needed)."""
    if len(token) != TOKEN_LENGTH or not _TOKEN_PATTERN.fullmatch(token):
        return None
    if not hmac.compare_digest(
        checksum(token[:-CHECKSUM_LENGTH], CHECKSUM_LENGTH), token[-CHECKSUM_LENGTH:]
    ):
        return None
    return hashlib.sha256(_HASH_DOMAIN + token.encode("ascii")).digest()


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in lowercase without a default port; None if not an origin."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme not in {"http", "https"}
        or not parts.hostname
        or parts.path not in {"", "/"}
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default_port else "")


@dataclass(frozen=True)
class SessionDraft:
    """What a backend asks for; ``None`` fields were not provided."""

    end_user: EndUser | None = None
    organization: Organization | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    allowed_integrations: Sequence[str] = ()
    allowed_origins: Sequence[str] = ()
    integrations_config_defaults: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    ttl: timedelta | None = None
    reconnect: ReconnectTarget | None = None


@dataclass(frozen=True)
class IntegrationChoice:
    """An integration a session's page offers, with its provider's form."""

    integration: Integration
    provider: Provider
    preset_config: frozenset[str]
    """Config fields the session fixes (its ``integrations_config_defaults``)."""


@dataclass(frozen=True)
class SessionView:
    session: ConnectSession
    integrations: list[IntegrationChoice]
    allowed_origins: tuple[str, ...]


def _check_text(v: Violations, path: str, value: str, *, required: bool) -> None:
    if required and not value:
        v.add(path, "is required")
    elif len(value) > MAX_END_USER_FIELD:
        v.add(path, f"must be at most {MAX_END_USER_FIELD} characters")
    elif has_control_chars(value):
        v.add(path, "must not contain control characters")


def _check_people(v: Violations, end_user: EndUser | None, org: Organization | None) -> None:
    if end_user is not None:
        _check_text(v, "end_user.id", end_user.id, required=True)
        _check_text(v, "end_user.display_name", end_user.display_name, required=False)
        if end_user.email and not re.fullmatch(r"[^@\s]+@[^@\s]+", end_user.email):
            v.add("end_user.email", "must be an email address")
        elif len(end_user.email) > 254:
            v.add("end_user.email", "must be at most 254 characters")
    if org is not None:
        _check_text(v, "organization.id", org.id, required=True)
        _check_text(v, "organization.display_name", org.display_name, required=False)


def connection_tags(session: ConnectSession) -> dict[str, str]:
    """The tags a session's connection gets: the session's, plus ``end_user_id``,
    ``end_user_email`` and ``organization_id`` unless the session's tags set them."""
    derived: dict[str, str] = {}
    if session.end_user is not None:
        derived["end_user_id"] = session.end_user.id
        if session.end_user.email:
            derived["end_user_email"] = session.end_user.email
    if session.organization is not None:
        derived["organization_id"] = session.organization.id
    return {**derived, **session.tags}


class ConnectSessionService:
    def __init__(
        self,
        repository: ConnectSessionRepository,
        integrations: IntegrationService,
        connections: ConnectionService,
        catalog: ProviderCatalog,
        *,
        public_url: str,
        allowed_origins: Sequence[str] = (),
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        call_deadline: timedelta = timedelta(seconds=60),
    ) -> None:
        """``call_deadline`` is the longest a submission can run (the server's deadline per
        call): a submission claims its session for that long plus :data:`ATTEMPT_LEASE_MARGIN`,
        so a second one never runs beside it, and after a server died mid-submission the end
        user can try again as soon as the dead one can no longer be running."""
        self._repository = repository
        self._integrations = integrations
        self._connections = connections
        self._catalog = catalog
        self._configured_origins = tuple(allowed_origins)
        self._max_attempts = max_attempts
        self._attempt_lease = call_deadline + ATTEMPT_LEASE_MARGIN
        self.set_public_url(public_url)

    def set_public_url(self, public_url: str) -> None:
        """The HTTP listener's base URL (known once it is bound): links use it, and its
        origin may always use sessions (the hosted page)."""
        self.public_url = public_url
        own = normalize_origin(public_url) if public_url else None
        origins = (normalize_origin(o) for o in (*self._configured_origins, own) if o)
        self._global_origins = tuple(dict.fromkeys(o for o in origins if o is not None))

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    # --- the backend's side

    async def create(self, principal: Principal, draft: SessionDraft) -> tuple[ConnectSession, str]:
        """Creates a session; returns it and its token (shown once, never stored)."""
        v = Violations()
        _check_people(v, draft.end_user, draft.organization)
        check_tags(v, "tags", draft.tags)
        origins = self._check_origins(v, draft.allowed_origins)
        ttl = draft.ttl if draft.ttl is not None else DEFAULT_TTL
        if not MIN_TTL <= ttl <= MAX_TTL:
            v.add("ttl", "must be between 1 minute and 24 hours")
        allowed = list(dict.fromkeys(draft.allowed_integrations))
        if len(allowed) != len(draft.allowed_integrations):
            v.add("allowed_integrations", "must not repeat an integration")
        if len(allowed) > MAX_ALLOWED_INTEGRATIONS:
            v.add("allowed_integrations", f"must have at most {MAX_ALLOWED_INTEGRATIONS} entries")
        for index, integration_id in enumerate(allowed):
            check_integration_id(v, f"allowed_integrations[{index}]", integration_id)
        if draft.reconnect is not None:
            check_integration_id(v, "reconnect.integration_id", draft.reconnect.integration_id)
            check_connection_id(v, "reconnect.connection_id", draft.reconnect.connection_id)
            if allowed and allowed != [draft.reconnect.integration_id]:
                v.add("allowed_integrations", "a reconnect session allows only its integration")
            if draft.integrations_config_defaults:
                v.add("integrations_config_defaults", "a reconnect keeps the connection's config")
        for key, config in draft.integrations_config_defaults.items():
            path = f"integrations_config_defaults[{key}]"
            check_integration_id(v, path, key)
            if allowed and key not in allowed:
                v.add(path, "is not one of allowed_integrations")
            check_connection_config(v, f"{path}.connection_config", config)
        v.raise_if_any()
        await self._check_integrations_exist(principal, allowed, draft)
        connection_id = str(uuid.uuid4())
        if draft.reconnect is not None:
            await self._connections.get(
                principal, draft.reconnect.integration_id, draft.reconnect.connection_id
            )
            allowed = [draft.reconnect.integration_id]
            connection_id = draft.reconnect.connection_id
        now = datetime.now(UTC)
        session = ConnectSession(
            id=uuid.uuid4(),
            environment_id=principal.environment_id,
            environment_name=principal.environment_name,
            end_user=draft.end_user,
            organization=draft.organization,
            tags=dict(draft.tags),
            allowed_integrations=tuple(allowed),
            allowed_origins=origins,
            integrations_config_defaults={
                k: dict(c) for k, c in draft.integrations_config_defaults.items()
            },
            reconnect=draft.reconnect,
            connection_id=connection_id,
            created_by=principal.key_id,
            create_time=now,
            expire_time=now + ttl,
        )
        if draft.reconnect is None and len(connection_tags(session)) > MAX_TAGS:
            raise InvalidArgumentError.single(
                "tags", f"with end_user_id, end_user_email and organization_id: at most {MAX_TAGS}"
            )
        token = generate_token()
        hashed = token_hash(token)
        assert hashed is not None
        await self._repository.create(session, hashed)
        return session, token

    @staticmethod
    def _check_origins(v: Violations, values: Sequence[str]) -> tuple[str, ...]:
        if len(values) > MAX_ALLOWED_ORIGINS:
            v.add("allowed_origins", f"must have at most {MAX_ALLOWED_ORIGINS} entries")
            return ()
        origins: list[str] = []
        for index, value in enumerate(values):
            origin = normalize_origin(value)
            if origin is None:
                v.add(f"allowed_origins[{index}]", "must be an origin: https://host[:port]")
            elif origin not in origins:
                origins.append(origin)
        return tuple(origins)

    async def _check_integrations_exist(
        self, principal: Principal, allowed: list[str], draft: SessionDraft
    ) -> None:
        v = Violations()
        named = [(f"allowed_integrations[{i}]", key) for i, key in enumerate(allowed)]
        named += [
            (f"integrations_config_defaults[{k}]", k) for k in draft.integrations_config_defaults
        ]
        for path, integration_id in named:
            try:
                await self._integrations.get(principal, integration_id)
            except NotFoundError:
                v.add(path, "is not an integration of this environment")
        v.raise_if_any()

    def connect_url(self, token: str) -> str:
        """Where the end user opens the hosted connect page ('' without an HTTP listener)."""
        return f"{self.public_url}/connect?session_token={token}" if self.public_url else ""

    async def get(self, principal: Principal, session_id: str) -> ConnectSession:
        session = await self._repository.get(principal.environment_id, _parse_id(session_id))
        if session is None:
            raise NotFoundError(SESSION_NOT_FOUND, reason="CONNECT_SESSION_NOT_FOUND")
        return session

    async def list(
        self, principal: Principal, *, page_size: int, after: tuple[datetime, uuid.UUID] | None
    ) -> Page[ConnectSession]:
        v = Violations()
        limit = check_page_size(v, "page_size", page_size)
        v.raise_if_any()
        rows = await self._repository.list(principal.environment_id, after=after, limit=limit + 1)
        items = rows[:limit]
        cursor = None
        if len(rows) > limit and items:
            cursor = (items[-1].create_time.isoformat(), str(items[-1].id))
        return Page(items, cursor)

    async def delete(self, principal: Principal, session_id: str) -> None:
        if not await self._repository.delete(principal.environment_id, _parse_id(session_id)):
            raise NotFoundError(SESSION_NOT_FOUND, reason="CONNECT_SESSION_NOT_FOUND")

    # --- the browser's side

    async def authenticate(self, token: str) -> Principal | None:
        """The session behind a token, as a principal; None for an unknown or malformed token.
        A known session that no longer admits anyone raises, saying why (the holder of its
        token may know: expired, already used, too many failed attempts)."""
        hashed = token_hash(token)
        if hashed is None:
            return None
        session = await self._repository.get_by_token_hash(hashed)
        if session is None:
            return None
        self._check_admits(session)
        return Principal(
            f"connect_session:{session.id}",
            session.environment_id,
            session.environment_name,
            frozenset(),
            session,
        )

    async def session_by_hash(self, hashed: bytes) -> ConnectSession | None:
        """The session stored under a token hash, whatever its state (never admits)."""
        return await self._repository.get_by_token_hash(hashed)

    def _check_admits(self, session: ConnectSession) -> None:
        if session.consume_time is not None:
            raise UnauthenticatedError(
                "this connect session was already used; ask the app for a new one",
                reason="SESSION_CONSUMED",
            )
        if session.is_expired(datetime.now(UTC)):
            raise UnauthenticatedError(
                "this connect session has expired; ask the app for a new one",
                reason="SESSION_EXPIRED",
            )
        if session.failed_attempts >= self._max_attempts:
            raise ResourceExhaustedError(
                "too many failed attempts with this connect session; ask the app for a new one",
                reason="TOO_MANY_ATTEMPTS",
            )

    def allowed_origins(self, session: ConnectSession) -> tuple[str, ...]:
        """Origins a browser may use the session from: the session's, the server's
        (``CREDBROKER_CONNECT_ALLOWED_ORIGINS``) and the server's own."""
        return tuple(dict.fromkeys((*session.allowed_origins, *self._global_origins)))

    def framing_origins(self, session: ConnectSession | None) -> tuple[str, ...]:
        """Origins that may frame the connect page: the server's and, with a session, its own."""
        return self.allowed_origins(session) if session is not None else self._global_origins

    def own_origin(self) -> str | None:
        return normalize_origin(self.public_url) if self.public_url else None

    def origin_allowed(self, session: ConnectSession | None, origin: str) -> bool:
        allowed = self.allowed_origins(session) if session is not None else self._global_origins
        return normalize_origin(origin) in allowed

    async def view(self, principal: Principal) -> SessionView:
        """What the connect page needs: the session and each integration it may connect."""
        session = _session_of(principal)
        if session.allowed_integrations:
            integrations = []
            for integration_id in session.allowed_integrations:
                try:
                    integrations.append(await self._integrations.get(principal, integration_id))
                except NotFoundError:
                    continue  # deleted since the session was made
        else:
            page = await self._integrations.list(
                principal, page_size=MAX_LISTED_INTEGRATIONS, after=None
            )
            integrations = page.items
        choices = []
        for integration in integrations:
            provider = self._catalog.get(integration.provider)
            if provider is not None:
                preset = session.integrations_config_defaults.get(integration.integration_id, {})
                choices.append(IntegrationChoice(integration, provider, frozenset(preset)))
        return SessionView(session, choices, self.allowed_origins(session))

    async def end(self, principal: Principal) -> None:
        """Ends the session (the browser's DELETE /connect/session)."""
        session = _session_of(principal)
        await self._repository.delete(session.environment_id, session.id)

    async def submit(
        self,
        principal: Principal,
        integration_id: str,
        credentials: Credentials,
        params: Mapping[str, str],
        *,
        origin: str | None,
    ) -> Connection:
        """Stores the end user's credentials under the session: a new connection with a
        server-generated id, or for a reconnect session new credentials on its connection."""
        session = _session_of(principal)
        if origin is not None and not self.origin_allowed(session, origin):
            raise PermissionDeniedError(
                "this page's origin may not use this connect session", reason="ORIGIN_NOT_ALLOWED"
            )
        if not session.allows_integration(integration_id):
            raise InvalidArgumentError.single(
                "integration_id",
                "is not allowed by this connect session",
                reason="INTEGRATION_NOT_ALLOWED",
            )
        if session.reconnect is not None and params:
            raise InvalidArgumentError.single(
                "params", "a reconnect keeps the connection's config", reason="INVALID_QUERY_PARAMS"
            )
        claimed = await self._repository.begin_attempt(
            session.id,
            until=datetime.now(UTC) + self._attempt_lease,
            max_attempts=self._max_attempts,
        )
        if claimed is None:
            await self._refuse_unclaimed(session)
        try:
            connection = await self._store(principal, session, integration_id, credentials, params)
        except AlreadyExistsError:
            # Another submission of this session made the connection first.
            await self._repository.consume(session.id, integration_id)
            raise UnauthenticatedError(
                "this connect session was already used", reason="SESSION_CONSUMED"
            ) from None
        except BaseException as exc:
            await self._repository.end_attempt(session.id, failed=isinstance(exc, DomainError))
            raise
        await self._repository.consume(session.id, integration_id)
        return connection

    async def _refuse_unclaimed(self, session: ConnectSession) -> None:
        current = await self._repository.get(session.environment_id, session.id)
        if current is None:
            raise UnauthenticatedError("this connect session has ended", reason="SESSION_ENDED")
        self._check_admits(current)
        raise ConflictError(
            "another submission with this connect session is in progress",
            reason="SUBMISSION_IN_PROGRESS",
        )

    async def _store(
        self,
        principal: Principal,
        session: ConnectSession,
        integration_id: str,
        credentials: Credentials,
        params: Mapping[str, str],
    ) -> Connection:
        if session.reconnect is not None:
            return await self._connections.replace_credentials(
                principal, integration_id, session.connection_id, credentials
            )
        defaults = session.integrations_config_defaults.get(integration_id, {})
        draft = ConnectionDraft(
            integration_id=integration_id,
            connection_id=session.connection_id,
            credentials=credentials,
            metadata=None,
            connection_config={**params, **defaults},  # the session's defaults win
            tags=connection_tags(session),
            end_user=session.end_user,
            organization=session.organization,
        )
        return await self._connections.create(principal, draft)

    async def purge_expired(self, older_than: timedelta) -> int:
        return await self._repository.purge_expired(datetime.now(UTC) - older_than)


def _session_of(principal: Principal) -> ConnectSession:
    if principal.connect_session is None:  # a route misconfigured with another credential
        raise PermissionDeniedError("needs a connect session", reason="CONNECT_SESSION_REQUIRED")
    return principal.connect_session


def _parse_id(session_id: str) -> uuid.UUID:
    try:
        if len(session_id) != 36:
            raise ValueError
        return uuid.UUID(session_id)
    except ValueError:
        raise InvalidArgumentError.single("session_id", "is not a connect session id") from None
