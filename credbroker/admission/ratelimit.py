"""Failed authentication, limited per client address, so forged keys cost no database work.

Every failed authentication from an address takes a token from that address's bucket
(``burst`` tokens, refilled at ``per_second``). While the bucket is empty, a key from that address
is accepted only if it resolves from the cache without the database (a valid key in use keeps
working, even behind a NAT shared with an attacker); anything else is refused with
RESOURCE_EXHAUSTED (``AUTHENTICATION_RATE_LIMITED``, with the seconds until the next token: a
``RetryInfo`` over gRPC, ``Retry-After`` with HTTP 429), whether the key id exists or not, so the
limit is no existence oracle either. Both transports pass the client's address, so they share
one budget per address. Together with the negative cache of unknown key ids
(``credbroker.storage.cache``), a flood of forged well-formed keys costs at most ``burst`` plus
``per_second`` database lookups a second per address. Memory is bounded: at most ``max_peers``
addresses are tracked (least recently failed dropped first).
"""

from __future__ import annotations

import contextvars
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from credbroker.admission.limits import peer_address
from credbroker.domain.errors import ResourceExhaustedError
from credbroker.domain.models import Principal

# The address of the caller being authenticated (set by the admission path per call).
current_peer: contextvars.ContextVar[str] = contextvars.ContextVar("credbroker_peer", default="")


@dataclass(frozen=True)
class FailureBudget:
    per_second: float = 20.0
    burst: float = 200.0
    max_peers: int = 10_000


class FailedAuthLimiter:
    def __init__(self, budget: FailureBudget, *, clock: Callable[[], float] = time.monotonic):
        self._budget = budget
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, time

    def _tokens(self, peer: str) -> float:
        entry = self._buckets.get(peer)
        if entry is None:
            return self._budget.burst
        tokens, at = entry
        return min(self._budget.burst, tokens + (self._clock() - at) * self._budget.per_second)

    def exhausted(self, peer: str) -> bool:
        return self._tokens(peer) < 1.0

    def retry_after(self, peer: str) -> int:
        """Whole seconds until ``peer`` has a token again (at least 1)."""
        missing = 1.0 - self._tokens(peer)
        return max(1, math.ceil(missing / self._budget.per_second))

    def charge(self, peer: str) -> None:
        self._buckets[peer] = (max(self._tokens(peer) - 1.0, 0.0), self._clock())
        self._buckets.move_to_end(peer)
        while len(self._buckets) > self._budget.max_peers:
            self._buckets.popitem(last=False)


def rate_limited(retry_after: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        "too many failed authentications from this address; retry later",
        reason="AUTHENTICATION_RATE_LIMITED",
        retry_after_seconds=retry_after,
    )


class GuardedAuthenticator:
    """Wraps ``authenticate`` (database allowed) and ``authenticate_cached`` (memory only)."""

    def __init__(
        self,
        authenticate: Callable[[str], Awaitable[Principal | None]],
        authenticate_cached: Callable[[str], Principal | None],
        limiter: FailedAuthLimiter,
    ) -> None:
        self._authenticate = authenticate
        self._cached = authenticate_cached
        self._limiter = limiter

    async def __call__(self, token: str) -> Principal | None:
        peer = peer_address(current_peer.get())
        if peer and self._limiter.exhausted(peer):
            principal = self._cached(token)
            if principal is None:
                raise rate_limited(self._limiter.retry_after(peer))
            return principal
        principal = await self._authenticate(token)
        if principal is None and peer:
            self._limiter.charge(peer)
        return principal
