"""Admission limits that keep unauthenticated peers from holding server resources.

grpc-python counts ``maximum_concurrent_rpcs`` when a call's headers arrive, before any
interceptor or authentication, and receives a unary request message before calling the handler
with no deadline of its own (the server deadline only starts in the handler). So headers that
never get a message, or Health/Watch streams that never end, fill the cap and lock everyone out.
This module moves the protection after authentication (grpcio 1.85, ``server.pyx.pxi``;
used by :mod:`credbroker.admission.gate` and the gRPC adapter ``credbroker.api.handlers``):

* every unary method is served as a request-streaming one (same wire format), so the
  interceptor runs on the headers: a call without a valid key is refused at once, before any
  message; a caller then has ``first_message_seconds`` to send it (:func:`first_message`);
* ``max_concurrent_rpcs`` counts authenticated calls only, after their message arrived
  (:meth:`Limits.admitted`): that is the concurrency that reaches the database;
* Health calls (no key) are limited per peer address while they wait for their message or
  run (:meth:`Limits.unauthenticated`), Health/Watch streams have a global and a per-peer cap
  (:meth:`Limits.watch`); streams of authenticated callers (WatchConnections, reflection) have a
  per-peer cap of their own (:meth:`Limits.authenticated_stream`; WatchConnections also per key
  and in total, in :mod:`credbroker.domain.events`); every stream ends after
  ``watch_max_age_seconds`` (:func:`aged`), and a stream of a key that stopped admitting (revoked,
  expired) ends at its next message;
* grpc's own ``maximum_concurrent_rpcs`` stays as a high memory backstop
  (``max_open_rpcs``), well above what the caps above let anyone hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from credbroker.domain.errors import InvalidArgumentError, ResourceExhaustedError


class FirstMessageTimeout(TimeoutError):
    """The caller sent headers but no request message in time (DEADLINE_EXCEEDED)."""


@dataclass(frozen=True)
class LimitSettings:
    max_concurrent_rpcs: int = 256
    first_message_seconds: float = 5.0
    max_unauthenticated_per_peer: int = 16
    max_watch_streams: int = 256
    max_watch_streams_per_peer: int = 16
    max_streams_per_peer: int = 16
    watch_max_age_seconds: float = 600.0


def peer_address(peer: str) -> str:
    """The IP of a grpc peer string (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``); the whole
    string for other transports (unix sockets)."""
    kind, _, rest = peer.partition(":")
    if kind not in {"ipv4", "ipv6"}:
        return peer
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


class _PeerCounter:
    """In-flight counts per peer under a cap; entries vanish at zero (bounded memory)."""

    def __init__(
        self, per_peer: int, total: int | None = None, *, reason: str = "TOO_MANY_REQUESTS"
    ) -> None:
        self._per_peer = per_peer
        self._total = total
        self._reason = reason
        self._counts: Counter[str] = Counter()
        self.in_flight = 0

    @contextlib.contextmanager
    def hold(self, peer: str, what: str) -> Iterator[None]:
        if self._counts[peer] >= self._per_peer or (
            self._total is not None and self.in_flight >= self._total
        ):
            if self._counts[peer] == 0:
                del self._counts[peer]
            raise ResourceExhaustedError(
                f"too many {what} at once; retry later", reason=self._reason
            )
        self._counts[peer] += 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._counts[peer] -= 1
            if self._counts[peer] <= 0:
                del self._counts[peer]


class Limits:
    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self._authenticated = 0
        self._unauthenticated = _PeerCounter(settings.max_unauthenticated_per_peer)
        self._watch = _PeerCounter(settings.max_watch_streams_per_peer, settings.max_watch_streams)
        self._streams = _PeerCounter(settings.max_streams_per_peer, reason="TOO_MANY_WATCH_STREAMS")

    @property
    def authenticated_in_flight(self) -> int:
        return self._authenticated

    @property
    def stream_max_age(self) -> float:
        return self.settings.watch_max_age_seconds

    @property
    def watch_streams(self) -> int:
        return self._watch.in_flight

    @property
    def authenticated_streams(self) -> int:
        return self._streams.in_flight

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """A slot of ``max_concurrent_rpcs`` for an authenticated call; RESOURCE_EXHAUSTED at
        once when all are taken (no queue to sit in)."""
        self.take_admitted()
        try:
            yield
        finally:
            self.release_admitted()

    def take_admitted(self) -> None:
        """:meth:`admitted` without the context manager (the per-call path pairs it with
        :meth:`release_admitted` in a ``finally``)."""
        if self._authenticated >= self.settings.max_concurrent_rpcs:
            raise ResourceExhaustedError(
                "the server is serving its maximum of concurrent calls; retry with backoff",
                reason="CONCURRENCY_LIMIT",
            )
        self._authenticated += 1

    def release_admitted(self) -> None:
        self._authenticated -= 1

    def unauthenticated(self, peer: str) -> contextlib.AbstractContextManager[None]:
        return self._unauthenticated.hold(peer_address(peer), "unauthenticated calls")

    def watch(self, peer: str) -> contextlib.AbstractContextManager[None]:
        return self._watch.hold(peer_address(peer), "health watch streams")

    def authenticated_stream(self, peer: str) -> contextlib.AbstractContextManager[None]:
        return self._streams.hold(peer_address(peer), "streams from this address")

    async def first_message(self, requests: AsyncIterator[Any]) -> Any:
        """The one request message of a unary call served as request-streaming; refuses a call
        whose message does not arrive within ``first_message_seconds``."""
        try:
            async with asyncio.timeout(self.settings.first_message_seconds):
                return await anext(aiter(requests))
        except StopAsyncIteration:
            raise InvalidArgumentError.single("request", "is missing (no message)") from None
        except TimeoutError:
            raise FirstMessageTimeout(
                f"no request message within {self.settings.first_message_seconds:g} s"
            ) from None


async def aged(
    result: Any,
    max_age: float | None,
    still_admitted: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[Any]:
    """Runs a streaming behavior (an async generator, or a coroutine that writes with
    ``context.write``) until it ends or ``max_age`` seconds pass; then the stream ends with OK
    (clients such as health watchers simply start a new one). Each step runs under its own
    timeout, so the clock never fires while the transport is writing a response.

    ``still_admitted``, when given, runs before each response is handed on, at most once per
    ``RECHECK_SECONDS``; it raises (ending the stream) when the caller no longer admits."""
    loop = asyncio.get_running_loop()
    deadline = None if max_age is None else loop.time() + max_age
    if inspect.isawaitable(result):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await result
        return
    checked = loop.time()
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await anext(result)
            except (StopAsyncIteration, TimeoutError):
                return
            if still_admitted is not None and loop.time() - checked >= RECHECK_SECONDS:
                await still_admitted()
                checked = loop.time()
            yield response
    finally:
        await result.aclose()


# How often a long stream checks that its caller's key still admits (at its next message).
RECHECK_SECONDS = 1.0
