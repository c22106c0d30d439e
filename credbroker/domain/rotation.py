"""Master-key rotation: rewrap every stored data key under the keyring's primary master key.

Only the wrapped data keys change; payload bytes stay identical and plaintext never leaves the
cipher. Each batch locks its rows (skipping rows a concurrent write holds) and rewrites them in
one transaction, so a concurrent update is never lost: it either waits for the batch or, having
already written under the primary key, is no longer selected. Interrupted runs simply resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from credbroker.domain.connections import CONFIG_PURPOSE, CREDENTIALS_PURPOSE, binding
from credbroker.domain.ports import Cipher
from credbroker.domain.webhooks import PREVIOUS_SECRET_PURPOSE, SECRET_PURPOSE, endpoint_binding


@dataclass(frozen=True)
class StoredSecrets:
    id: UUID
    environment_id: UUID
    integration_id: str
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


class RewrapRepository(Protocol):
    async def rewrap_batch(self, primary_key_id: int, limit: int, rewrap: Rewrap) -> int:
        """Locks up to ``limit`` rows not under the primary key (skipping locked ones), replaces
        their blobs with ``rewrap``'s result in one transaction; returns how many it rewrote."""
        ...

    async def rewrap_endpoint_batch(
        self, primary_key_id: int, limit: int, rewrap: RewrapEndpoint
    ) -> int:
        """The same for webhook endpoints' signing secrets."""
        ...

    async def count_not_under(self, primary_key_id: int) -> int: ...


class KeyRotationService:
    def __init__(self, repository: RewrapRepository, cipher: Cipher, primary_key_id: int) -> None:
        self._repository = repository
        self._cipher = cipher
        self._primary_key_id = primary_key_id

    def _rewrap(self, row: StoredSecrets) -> tuple[bytes, bytes]:
        bound = binding(row.environment_id, row.integration_id, row.id)
        return (
            self._cipher.rewrap(row.credentials, purpose=CREDENTIALS_PURPOSE, binding=bound),
            self._cipher.rewrap(row.connection_config, purpose=CONFIG_PURPOSE, binding=bound),
        )

    def _rewrap_endpoint(self, row: EndpointSecrets) -> tuple[bytes, bytes | None]:
        bound = endpoint_binding(row.environment_id, row.id)
        previous = None
        if row.previous_secret is not None:
            previous = self._cipher.rewrap(
                row.previous_secret, purpose=PREVIOUS_SECRET_PURPOSE, binding=bound
            )
        return self._cipher.rewrap(row.secret, purpose=SECRET_PURPOSE, binding=bound), previous

    async def rewrap_all(
        self,
        *,
        batch_size: int = 500,
        on_batch: Callable[[int], None] | None = None,
        locked_row_wait: float = 0.2,
        max_waits: int = 300,
    ) -> int:
        """Rewraps until no row is under another key; returns the number of rows rewritten.
        Rows locked by concurrent writes are retried after ``locked_row_wait`` seconds."""
        total = 0
        waits = 0
        while True:
            done = await self._repository.rewrap_batch(
                self._primary_key_id, batch_size, self._rewrap
            ) + await self._repository.rewrap_endpoint_batch(
                self._primary_key_id, batch_size, self._rewrap_endpoint
            )
            total += done
            if done and on_batch is not None:
                on_batch(done)
            if done:
                continue
            if await self._repository.count_not_under(self._primary_key_id) == 0:
                return total
            waits += 1
            if waits > max_waits:
                raise TimeoutError("rows stayed locked; run the rewrap again later")
            await asyncio.sleep(locked_row_wait)
