"""Master-key rotation: rewrap every stored data key under the keyring's primary master key, and
move blobs of the legacy binding (v1) to the current one.

Only the wrapped data keys change; payload bytes stay identical and plaintext never leaves the
cipher. A blob of binding v1 (written before v2 bound the connection id) is encrypted afresh
under the current binding instead, still inside the cipher. Each batch locks its rows (skipping
rows a concurrent write holds) and rewrites them in one transaction, so a concurrent update is
never lost: it either waits for the batch or, having already written under the primary key, is
no longer selected. Interrupted runs simply resume.

A blob that does not authenticate (altered, moved from another row or column, under a key the
keyring lacks) is never moved: it stays as it is, is reported as an :class:`UnreadableBlob` (its
table, row id, column and the reason, never its bytes), and the run goes on with every other
blob, the other blob of the same row included. A run visits each row once per pass and leaves
the unreadable ones out of later passes, so it always ends; it reports them each time it is run
until they are repaired or deleted (:meth:`KeyRotationService.check_all` lists them without
writing, for ``keyring status``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from credbroker.domain.connections import CONFIG_PURPOSE, CREDENTIALS_PURPOSE, binding
from credbroker.domain.errors import DataIntegrityError
from credbroker.domain.ports import Binding, Cipher
from credbroker.domain.webhooks import PREVIOUS_SECRET_PURPOSE, SECRET_PURPOSE, endpoint_binding

CONNECTIONS = "connections"
WEBHOOK_ENDPOINTS = "webhook_endpoints"
# Every encrypted column: its name and the purpose its blobs are bound to.
_CREDENTIALS = ("credentials_blob", CREDENTIALS_PURPOSE)
_CONFIG = ("config_blob", CONFIG_PURPOSE)
_SECRET = ("secret_blob", SECRET_PURPOSE)
_PREVIOUS_SECRET = ("previous_secret_blob", PREVIOUS_SECRET_PURPOSE)


@dataclass(frozen=True)
class StoredSecrets:
    id: UUID
    environment_id: UUID
    integration_id: str
    connection_id: str
    credentials: bytes
    connection_config: bytes


Rewrap = Callable[[StoredSecrets], tuple[bytes, bytes]]


@dataclass(frozen=True)
class EndpointSecrets:
    id: UUID
    environment_id: UUID
    secret: bytes
    previous_secret: bytes | None


RewrapEndpoint = Callable[[EndpointSecrets], tuple[bytes, bytes | None]]


@dataclass(frozen=True)
class Batch:
    """What one batch saw: how many rows it read, the last row id (where the next batch
    starts), and how many rows it rewrote."""

    seen: int
    last_id: UUID | None
    written: int


@dataclass(frozen=True)
class UnreadableBlob:
    """A stored blob that does not authenticate under its row's binding. Names no secret."""

    table: str
    row_id: UUID
    column: str
    reason: str

    def describe(self) -> str:
        return f"{self.table} {self.row_id} {self.column}: {self.reason}"


@dataclass
class RewrapReport:
    rewrapped: int = 0
    """Rows rewritten (at least one of their blobs moved)."""
    unreadable: list[UnreadableBlob] = field(default_factory=list)

    @property
    def skipped_rows(self) -> int:
        """Rows holding at least one unreadable blob (left as they were, for those blobs)."""
        return len({(blob.table, blob.row_id) for blob in self.unreadable})


class RewrapRepository(Protocol):
    async def rewrap_batch(
        self,
        primary_key_id: int,
        limit: int,
        rewrap: Rewrap,
        *,
        after: UUID | None,
        exclude: Collection[UUID],
        write: bool,
    ) -> Batch:
        """Reads up to ``limit`` connections with a blob not under the primary key or of an older
        binding, in id order
        after ``after`` and leaving out ``exclude``; with ``write``, locks them (skipping rows
        locked by others) and stores ``rewrap``'s result for each row it changed, in one
        transaction."""
        ...

    async def rewrap_endpoint_batch(
        self,
        primary_key_id: int,
        limit: int,
        rewrap: RewrapEndpoint,
        *,
        after: UUID | None,
        exclude: Collection[UUID],
        write: bool,
    ) -> Batch:
        """The same for webhook endpoints' signing secrets."""
        ...

    async def count_not_under(self, primary_key_id: int, *, exclude: Collection[UUID]) -> int:
        """Rows (of both tables) with a blob not under the primary key or of an older binding,
        leaving out ``exclude``."""
        ...


class KeyRotationService:
    def __init__(self, repository: RewrapRepository, cipher: Cipher, primary_key_id: int) -> None:
        self._repository = repository
        self._cipher = cipher
        self._primary_key_id = primary_key_id

    def _moved(
        self,
        found: list[UnreadableBlob],
        table: str,
        row_id: UUID,
        column: tuple[str, str],
        blob: bytes,
        bound: Binding,
    ) -> bytes:
        """``blob`` of ``column`` (its name and purpose) rewrapped, or unchanged and recorded in
        ``found`` if it does not authenticate."""
        name, purpose = column
        try:
            return self._cipher.rewrap(blob, purpose=purpose, binding=bound)
        except DataIntegrityError as exc:
            found.append(UnreadableBlob(table, row_id, name, exc.message))
            return blob

    def _connection_rewrap(self, found: list[UnreadableBlob]) -> Rewrap:
        def rewrap(row: StoredSecrets) -> tuple[bytes, bytes]:
            bound = binding(row.environment_id, row.integration_id, row.connection_id, row.id)
            return (
                self._moved(found, CONNECTIONS, row.id, _CREDENTIALS, row.credentials, bound),
                self._moved(found, CONNECTIONS, row.id, _CONFIG, row.connection_config, bound),
            )

        return rewrap

    def _endpoint_rewrap(self, found: list[UnreadableBlob]) -> RewrapEndpoint:
        def rewrap(row: EndpointSecrets) -> tuple[bytes, bytes | None]:
            bound = endpoint_binding(row.environment_id, row.id)
            previous = row.previous_secret
            if previous is not None:
                previous = self._moved(
                    found, WEBHOOK_ENDPOINTS, row.id, _PREVIOUS_SECRET, previous, bound
                )
            secret = self._moved(found, WEBHOOK_ENDPOINTS, row.id, _SECRET, row.secret, bound)
            return secret, previous

        return rewrap

    async def _pass(
        self,
        report: RewrapReport,
        batch_size: int,
        *,
        write: bool,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        """One walk over both tables in id order; rows already found unreadable are left out."""
        found: list[UnreadableBlob] = []
        connection_rewrap = self._connection_rewrap(found)
        endpoint_rewrap = self._endpoint_rewrap(found)
        key_id = self._primary_key_id
        repository = self._repository
        walks: tuple[Callable[[UUID | None, list[UUID]], Awaitable[Batch]], ...] = (
            lambda after, exclude: repository.rewrap_batch(
                key_id, batch_size, connection_rewrap, after=after, exclude=exclude, write=write
            ),
            lambda after, exclude: repository.rewrap_endpoint_batch(
                key_id, batch_size, endpoint_rewrap, after=after, exclude=exclude, write=write
            ),
        )
        for walk in walks:
            after: UUID | None = None
            while True:
                batch = await walk(after, _unreadable_rows(report))
                report.unreadable.extend(found)
                found.clear()
                report.rewrapped += batch.written
                if batch.written and on_batch is not None:
                    on_batch(batch.written)
                if batch.seen < batch_size or batch.last_id is None:
                    break
                after = batch.last_id

    async def rewrap_all(
        self,
        *,
        batch_size: int = 500,
        on_batch: Callable[[int], None] | None = None,
        locked_row_wait: float = 0.2,
        max_waits: int = 300,
    ) -> RewrapReport:
        """Rewraps until every blob is under the primary key and the current binding, or
        unreadable; rows locked by concurrent writes are retried after ``locked_row_wait``
        seconds (TimeoutError after ``max_waits`` rounds that found nothing to do)."""
        report = RewrapReport()
        waits = 0
        while True:
            before = report.rewrapped
            await self._pass(report, batch_size, write=True, on_batch=on_batch)
            remaining = await self._repository.count_not_under(
                self._primary_key_id, exclude=_unreadable_rows(report)
            )
            if remaining == 0:
                return report
            if report.rewrapped > before:
                continue
            waits += 1
            if waits > max_waits:
                raise TimeoutError("rows stayed locked; run the rewrap again later")
            await asyncio.sleep(locked_row_wait)

    async def check_all(self, *, batch_size: int = 500) -> list[UnreadableBlob]:
        """The blobs a rewrap would have to move but cannot (nothing is locked or written)."""
        report = RewrapReport()
        await self._pass(report, batch_size, write=False, on_batch=None)
        return report.unreadable


def _unreadable_rows(report: RewrapReport) -> list[UUID]:
    return sorted({blob.row_id for blob in report.unreadable})
