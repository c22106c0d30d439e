"""Environments and secret keys: creating them (CLI) and authenticating callers (every RPC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from credbroker.domain import secret_keys
from credbroker.domain.errors import FailedPreconditionError, NotFoundError
from credbroker.domain.models import ALL_SCOPES, Environment, Principal, Scope, SecretKeyRecord
from credbroker.domain.ports import EnvironmentRepository, SecretKeyRepository
from credbroker.domain.validation import check_environment_name

_MAX_PRINCIPALS = 10_000


def parse_scopes(text: str) -> frozenset[Scope]:
    """Parses ``a,b,c`` scope lists; raises ValueError naming the unknown scope."""
    scopes = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            scopes.add(Scope(item))
        except ValueError:
            valid = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {item!r} (valid: {valid})") from None
    return frozenset(scopes)


class KeyService:
    def __init__(self, environments: EnvironmentRepository, keys: SecretKeyRepository) -> None:
        self._environments = environments
        self._keys = keys
        # key id -> last successful authentication, flushed in batches by flush_last_used().
        self._last_used: dict[str, datetime] = {}
        # key id -> (the record a Principal was built from, that Principal): built once per
        # record rather than per call (a cached record is the same object until it changes).
        self._principals: dict[str, tuple[SecretKeyRecord, Principal]] = {}

    async def create_environment(self, name: str) -> Environment:
        check_environment_name(name)
        return await self._environments.create(name)

    async def list_environments(self) -> list[Environment]:
        return await self._environments.list()

    async def environment(self, name: str) -> Environment:
        environment = await self._environments.get_by_name(name)
        if environment is None:
            raise NotFoundError(f"environment {name!r} not found", reason="ENVIRONMENT_NOT_FOUND")
        return environment

    async def create_key(
        self,
        environment_name: str,
        scopes: frozenset[Scope] = ALL_SCOPES,
        *,
        expire_time: datetime | None = None,
        description: str = "",
    ) -> tuple[str, SecretKeyRecord]:
        """Creates a key; returns the secret key (shown once, never stored) and its record."""
        environment = await self.environment(environment_name)
        token, parsed = secret_keys.generate_key()
        record = SecretKeyRecord(
            key_id=parsed.key_id,
            environment_id=environment.id,
            environment_name=environment.name,
            scopes=scopes,
            secret_hash=secret_keys.hash_secret(parsed),
            create_time=datetime.now(UTC),
            expire_time=expire_time,
            description=description,
        )
        await self._keys.create(record)
        return token, record

    async def list_keys(self, environment_name: str) -> list[SecretKeyRecord]:
        environment = await self.environment(environment_name)
        return await self._keys.list(environment.id)

    async def revoke_key(self, key_id: str) -> None:
        if not secret_keys.KEY_ID_PATTERN.fullmatch(key_id) or not await self._keys.revoke(key_id):
            raise NotFoundError(f"key {key_id!r} not found", reason="KEY_NOT_FOUND")

    async def roll_key(self, key_id: str, grace: timedelta) -> tuple[str, SecretKeyRecord]:
        """Creates a successor with the same environment and scopes; the old key keeps working
        for ``grace`` (or until its own earlier expiry), then stops."""
        old = await self._keys.get(key_id) if secret_keys.KEY_ID_PATTERN.fullmatch(key_id) else None
        now = datetime.now(UTC)
        if old is None:
            raise NotFoundError(f"key {key_id!r} not found", reason="KEY_NOT_FOUND")
        if not old.is_active(now):
            raise FailedPreconditionError(
                f"key {key_id!r} is revoked or expired", reason="KEY_INACTIVE"
            )
        token, record = await self.create_key(
            old.environment_name,
            old.scopes,
            expire_time=old.expire_time,
            description=old.description or f"rolled from {key_id}",
        )
        await self._keys.expire_by(key_id, now + grace)
        return token, record

    async def flush_last_used(self) -> None:
        """Writes the last-use times gathered since the previous flush in one statement."""
        used, self._last_used = self._last_used, {}
        try:
            await self._keys.record_last_used(used)
        except BaseException:
            for key_id, time in used.items():  # kept for the next flush; later uses win
                self._last_used.setdefault(key_id, time)
            raise

    async def authenticate(self, token: str) -> Principal | None:
        """The caller behind a presented key, or None. All failures look the same to callers."""
        parsed = secret_keys.parse_key(token)
        if parsed is None:
            return None
        return self._principal(parsed, await self._keys.get(parsed.key_id))

    def authenticate_cached(self, token: str) -> Principal | None:
        """Like :meth:`authenticate`, from the repository's cache only (no database work); None
        when the key is not cached, or not valid."""
        parsed = secret_keys.parse_key(token)
        peek = getattr(self._keys, "peek", None)
        if parsed is None or peek is None:
            return None
        record = peek(parsed.key_id)
        return self._principal(parsed, record) if record is not None else None

    def _principal(
        self, parsed: secret_keys.ParsedKey, record: SecretKeyRecord | None
    ) -> Principal | None:
        if not secret_keys.secret_matches(parsed, record.secret_hash if record else None):
            return None
        assert record is not None
        now = datetime.now(UTC)
        if not record.is_active(now):
            return None
        self._last_used[record.key_id] = now
        known = self._principals.get(record.key_id)
        if known is not None and known[0] is record:
            return known[1]
        principal = Principal(
            record.key_id, record.environment_id, record.environment_name, record.scopes
        )
        if len(self._principals) >= _MAX_PRINCIPALS:
            self._principals.clear()
        self._principals[record.key_id] = (record, principal)
        return principal
