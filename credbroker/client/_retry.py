"""Retries on UNAVAILABLE with exponential backoff and jitter, inside one overall deadline.

``sleep`` and ``async_sleep`` are looked up on this module at every wait, so tests can replace
them (``monkeypatch.setattr(credbroker.client._retry, "sleep", ...)``).
"""

# ruff: noqa: ASYNC109 - ``timeout`` is a gRPC deadline handed to each attempt, not a wrapper
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from credbroker.client._errors import CredBrokerError

T = TypeVar("T")

sleep: Callable[[float], None] = time.sleep
async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class Backoff:
    """``retries`` extra attempts; the n-th wait (n = 0, 1, ...) is drawn uniformly from
    ``[cap / 2, cap]`` with ``cap = min(max_delay, base_delay * 2**n)``."""

    retries: int = 3
    base_delay: float = 0.1
    max_delay: float = 2.0

    def delay(self, retry: int) -> float:
        cap = min(self.max_delay, self.base_delay * 2.0**retry)
        return cap / 2 + random.uniform(0, cap / 2)


class Deadline:
    """The end of a whole call (all attempts and waits); ``None`` timeout means no deadline."""

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (at least a millisecond, so gRPC still reports the deadline itself)."""
        if self._end is None:
            return None
        return max(self._end - time.monotonic(), 0.001)

    def allows_wait(self, delay: float) -> bool:
        """Whether a retry after ``delay`` seconds would still start before the deadline."""
        return self._end is None or time.monotonic() + delay < self._end


def _next_delay(
    error: CredBrokerError, retry: int, backoff: Backoff, deadline: Deadline
) -> float | None:
    if error.code not in RETRYABLE or retry >= backoff.retries:
        return None
    delay = backoff.delay(retry)
    return delay if deadline.allows_wait(delay) else None


def call(attempt: Callable[[float | None], T], backoff: Backoff, timeout: float | None) -> T:
    """Runs ``attempt(remaining_seconds)``, retrying the CredBrokerErrors it raises that are
    retryable, until it succeeds, the retries are used up or the deadline is near."""
    deadline = Deadline(timeout)
    retry = 0
    while True:
        try:
            return attempt(deadline.remaining())
        except CredBrokerError as error:
            delay = _next_delay(error, retry, backoff, deadline)
            if delay is None:
                raise
        sleep(delay)
        retry += 1


async def async_call(
    attempt: Callable[[float | None], Awaitable[T]], backoff: Backoff, timeout: float | None
) -> T:
    """:func:`call` for coroutines."""
    deadline = Deadline(timeout)
    retry = 0
    while True:
        try:
            return await attempt(deadline.remaining())
        except CredBrokerError as error:
            delay = _next_delay(error, retry, backoff, deadline)
            if delay is None:
                raise
        await async_sleep(delay)
        retry += 1
