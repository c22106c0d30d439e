"""Per-process caches in front of the hot reads: secret keys (every RPC) and stored connections
(AccessCredentials and GetConnection).

They hold what the database holds (key hashes, ciphertexts), never plaintext. An entry lives at
most ``ttl`` seconds and is dropped as soon as the database announces a change to its row
(:mod:`credbroker.storage.changes`), so a revoked key or an updated credential takes effect on
every server within the announcement delay (milliseconds), and within ``ttl`` at worst. While the
announcement listener is down, the caches are bypassed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from cachetools import TTLCache

from credbroker.domain.events import ConnectionEventType
from credbroker.domain.models import (
    Connection,
    Integration,
    SecretKeyRecord,
    VerificationRecord,
    VerificationState,
)
from credbroker.domain.ports import (
    ConnectionChanges,
    ConnectionRepository,
    IntegrationRepository,
    NewConnection,
    SecretKeyRepository,
    StoredConnection,
)
from credbroker.storage.changes import ChangeListener

ConnectionKey = tuple[str, str, str]  # (environment id, integration id, connection id)
K = TypeVar("K")
V = TypeVar("V")


class CacheStats:
    """Hit and miss counts, read by the metrics endpoint."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0


class CoherentCache(Generic[K, V]):
    """A TTL cache that a change listener keeps coherent with the database.

    It counts invalidations so that a read racing with one is not stored: a change announced
    while the database read was in flight would otherwise be overwritten by the stale result.
    """

    def __init__(self, listener: ChangeListener, *, ttl: float, size: int) -> None:
        self._listener = listener
        # key -> (value, monotonic expiry). A plain dict: a lookup is one dict get and one
        # comparison (cachetools' TTLCache costs a few µs a lookup, on every call). When full,
        # the oldest insertion goes (dicts keep insertion order).
        self._entries: dict[K, tuple[V, float]] = {}
        self._ttl = ttl
        self._size = size
        self._invalidations = 0
        self.stats = CacheStats()

    @property
    def invalidations(self) -> int:
        return self._invalidations

    def cached(self, key: K) -> V | None:
        """The live cached value, if any (no load, no counting)."""
        entry = self._entries.get(key)
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    def hit(self, key: K) -> V | None:
        """The live cached value, counted as a hit; None (not counted) when absent or expired,
        for the caller to load. The caller checks the listener's health first."""
        entry = self._entries.get(key)
        if entry is not None and entry[1] > time.monotonic():
            self.stats.hits += 1
            return entry[0]
        return None

    def clear(self) -> None:
        self._invalidations += 1
        self._entries.clear()

    def forget(self, key: K) -> None:
        self._invalidations += 1
        self._entries.pop(key, None)

    def forget_where(self, matches: Callable[[K], bool]) -> None:
        self._invalidations += 1
        for key in [k for k in self._entries if matches(k)]:
            self._entries.pop(key, None)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value, else ``load()``'s (cached unless None); bypassed entirely while the
        listener is down, since announcements may be missed then."""
        if not self._listener.healthy:
            return await load()
        entry = self._entries.get(key)
        if entry is not None:
            if entry[1] > time.monotonic():
                self.stats.hits += 1
                return entry[0]
            del self._entries[key]
        self.stats.misses += 1
        before = self._invalidations
        value = await load()
        if value is not None and before == self._invalidations:
            self._store(key, value)
        return value

    def _store(self, key: K, value: V) -> None:
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self._size:
            del entries[next(iter(entries))]
        entries[key] = (value, time.monotonic() + self._ttl)


class CachingSecretKeyRepository:
    """Caches ``get`` by key id; writes pass through and drop the entry. Unknown ids are cached
    too (negatively, in a bounded cache of their own), so a forged key presented again costs
    no database work and answers as fast as a known id with a wrong secret (no existence
    oracle). A key created anywhere (another server, the CLI) is announced like a changed one
    (migration 0011), which drops the id's negative entry on every server, so an id presented
    before its key existed is not refused for the cache's lifetime."""

    def __init__(
        self, inner: SecretKeyRepository, listener: ChangeListener, *, ttl: float, size: int
    ) -> None:
        self._inner = inner
        self._listener = listener
        self._cache: CoherentCache[str, SecretKeyRecord] = CoherentCache(
            listener, ttl=ttl, size=size
        )
        self._unknown: TTLCache[str, bool] = TTLCache(maxsize=size, ttl=ttl)
        self.stats = self._cache.stats
        self.unknown_hits = 0
        listener.subscribe(self._on_change, self._reset)

    def _reset(self) -> None:
        self._cache.clear()
        self._unknown.clear()

    def _on_change(self, parts: list[str]) -> None:
        if parts[0] == "k" and len(parts) == 2:
            self._cache.forget(parts[1])
            self._unknown.pop(parts[1], None)

    def peek(self, key_id: str) -> SecretKeyRecord | None:
        """The cached record, without any database work (None if not cached or untrusted)."""
        if not self._listener.healthy:
            return None
        return self._cache.cached(key_id)

    async def get(self, key_id: str) -> SecretKeyRecord | None:
        healthy = self._listener.healthy
        if healthy:
            # A known key first: one dict lookup on every call (the negative cache's TTLCache
            # costs a few µs a lookup, and only forged or deleted ids are in it).
            record = self._cache.hit(key_id)
            if record is not None:
                return record
            if key_id in self._unknown:
                self.unknown_hits += 1
                return None
        before = self._cache.invalidations
        record = await self._cache.get_or_load(key_id, lambda: self._inner.get(key_id))
        if record is None and healthy and before == self._cache.invalidations:
            self._unknown[key_id] = True
        return record

    async def create(self, record: SecretKeyRecord) -> None:
        self._unknown.pop(record.key_id, None)
        await self._inner.create(record)

    async def list(self, environment_id: UUID) -> list[SecretKeyRecord]:
        return await self._inner.list(environment_id)

    async def revoke(self, key_id: str) -> bool:
        revoked = await self._inner.revoke(key_id)
        self._cache.forget(key_id)
        return revoked

    async def expire_by(self, key_id: str, expire_time: datetime) -> None:
        await self._inner.expire_by(key_id, expire_time)
        self._cache.forget(key_id)

    async def record_last_used(self, used: Mapping[str, datetime]) -> None:
        await self._inner.record_last_used(used)


class CachingConnectionRepository:
    """Caches ``get_with_secrets`` (and serves ``get`` from it); every write drops the entry."""

    def __init__(
        self, inner: ConnectionRepository, listener: ChangeListener, *, ttl: float, size: int
    ) -> None:
        self._inner = inner
        self._cache: CoherentCache[ConnectionKey, StoredConnection] = CoherentCache(
            listener, ttl=ttl, size=size
        )
        self.stats = self._cache.stats
        listener.subscribe(self._on_change, self._cache.clear)

    def _on_change(self, parts: list[str]) -> None:
        if parts[0] == "c" and len(parts) == 4:
            self._cache.forget((parts[1], parts[2], parts[3]))
        elif parts[0] == "i" and len(parts) == 3:
            self._forget_integration(parts[1], parts[2])

    def _forget(self, environment_id: UUID, integration_id: str, connection_id: str) -> None:
        self._cache.forget((str(environment_id), integration_id, connection_id))

    def _forget_integration(self, environment_id: str, integration_id: str) -> None:
        # An integration's config feeds every cached connection of it.
        self._cache.forget_where(lambda key: key[0] == environment_id and key[1] == integration_id)

    def forget_integration(self, environment_id: UUID, integration_id: str) -> None:
        """Drops every cached connection of an integration this process changed or deleted."""
        self._forget_integration(str(environment_id), integration_id)

    async def get_with_secrets(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> StoredConnection | None:
        return await self._cache.get_or_load(
            (str(environment_id), integration_id, connection_id),
            lambda: self._inner.get_with_secrets(environment_id, integration_id, connection_id),
        )

    async def get(
        self, environment_id: UUID, integration_id: str, connection_id: str
    ) -> Connection | None:
        stored = await self.get_with_secrets(environment_id, integration_id, connection_id)
        return stored.connection if stored is not None else None

    async def create(self, connection: NewConnection) -> Connection:
        return await self._inner.create(connection)

    async def update(
        self,
        environment_id: UUID,
        id: UUID,
        changes: ConnectionChanges,
        *,
        expected_version: int | None,
        event: ConnectionEventType | None = None,
    ) -> Connection | None:
        updated = await self._inner.update(
            environment_id, id, changes, expected_version=expected_version, event=event
        )
        if updated is not None:
            self._forget(environment_id, updated.integration_id, updated.connection_id)
        return updated

    async def record_verification(
        self, environment_id: UUID, id: UUID, record: VerificationRecord
    ) -> Connection | None:
        updated = await self._inner.record_verification(environment_id, id, record)
        if updated is not None:
            self._forget(environment_id, updated.integration_id, updated.connection_id)
        return updated

    async def delete(self, environment_id: UUID, integration_id: str, connection_id: str) -> bool:
        deleted = await self._inner.delete(environment_id, integration_id, connection_id)
        self._forget(environment_id, integration_id, connection_id)
        return deleted

    async def list_stale(self, verified_before: datetime, limit: int) -> list[StoredConnection]:
        return await self._inner.list_stale(verified_before, limit)

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
        return await self._inner.list(
            environment_id,
            integration_id=integration_id,
            tags=tags,
            verification_state=verification_state,
            after=after,
            limit=limit,
            integration_ids=integration_ids,
            connection_id=connection_id,
            search=search,
            end_user_id=end_user_id,
            organization_id=organization_id,
        )

    async def update_metadata(
        self,
        environment_id: UUID,
        integration_id: str,
        connection_ids: Sequence[str],
        compute: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> Sequence[Connection] | None:
        updated = await self._inner.update_metadata(
            environment_id, integration_id, connection_ids, compute
        )
        for connection_id in connection_ids:
            self._forget(environment_id, integration_id, connection_id)
        return updated

    async def record_fetches(self, fetched: Mapping[UUID, datetime]) -> None:
        await self._inner.record_fetches(fetched)


class InvalidatingIntegrationRepository:
    """Integration writes of this process drop the integration's cached connections in the
    write path (the announcement tells the other processes), so the next call this process
    serves sees the new config, or that the integration and its connections are gone."""

    def __init__(self, inner: IntegrationRepository, connections: CachingConnectionRepository):
        self._inner = inner
        self._connections = connections

    async def create(self, integration: Integration) -> Integration:
        return await self._inner.create(integration)

    async def get(self, environment_id: UUID, integration_id: str) -> Integration | None:
        return await self._inner.get(environment_id, integration_id)

    async def list(
        self, environment_id: UUID, *, after: str | None, limit: int
    ) -> list[Integration]:
        return await self._inner.list(environment_id, after=after, limit=limit)

    async def update(
        self,
        environment_id: UUID,
        integration_id: str,
        *,
        display_name: str | None,
        integration_config: Mapping[str, str] | None,
    ) -> Integration | None:
        try:
            return await self._inner.update(
                environment_id,
                integration_id,
                display_name=display_name,
                integration_config=integration_config,
            )
        finally:
            self._connections.forget_integration(environment_id, integration_id)

    async def delete(self, environment_id: UUID, integration_id: str, *, force: bool) -> bool:
        try:
            return await self._inner.delete(environment_id, integration_id, force=force)
        finally:
            self._connections.forget_integration(environment_id, integration_id)
