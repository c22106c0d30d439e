"""Retries (UNAVAILABLE only, exponential backoff with jitter, at most ``retries`` extra attempts,
inside the call's deadline) and default deadlines, for both client flavours."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from credbroker.client import (
    CredBroker,
    CredBrokerError,
    DeadlineExceeded,
    NotFound,
    Unavailable,
    _async,
    _errors,
    _retry,
    _sync,
)

Invoke = Callable[..., Awaitable[Any]]
KEY = "cbsk_unused"  # nothing checks it: no server answers


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[grpc.StatusCode]:
    """Counts failed attempts: every one goes through the error mapping once."""
    seen: list[grpc.StatusCode] = []

    def sync_mapping(error: grpc.RpcError) -> CredBrokerError:
        mapped = _errors.from_sync_error(error)
        seen.append(mapped.code)
        return mapped

    def aio_mapping(error: grpc.aio.AioRpcError) -> CredBrokerError:
        mapped = _errors.from_aio_error(error)
        seen.append(mapped.code)
        return mapped

    monkeypatch.setattr(_sync, "from_sync_error", sync_mapping)
    monkeypatch.setattr(_async, "from_aio_error", aio_mapping)
    return seen


@pytest.mark.parametrize("retries", [0, 1, 3, 5])
async def test_unavailable_is_retried_then_raised(
    invoke: Invoke,
    dead_target: str,
    waits: list[float],
    attempts: list[grpc.StatusCode],
    retries: int,
) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await invoke(KEY, "get_integration", "x", target=dead_target, options={"retries": retries})
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert attempts == [grpc.StatusCode.UNAVAILABLE] * (retries + 1)
    assert len(waits) == retries
    for n, wait in enumerate(waits):  # exponential, jittered within [cap / 2, cap]
        cap = min(2.0, 0.1 * 2**n)
        assert cap / 2 <= wait <= cap, (n, wait)
    assert time.monotonic() - started < 5


async def test_default_retries_with_real_waits_are_bounded(
    invoke: Invoke, dead_target: str, attempts: list[grpc.StatusCode]
) -> None:
    """Three retries wait 0.05-0.1, 0.1-0.2 and 0.2-0.4 seconds: 0.35 to 0.7 s in all."""
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await invoke(KEY, "list_connections", target=dead_target)
    elapsed = time.monotonic() - started
    assert len(attempts) == 4
    assert 0.35 <= elapsed < 3.0


async def test_the_deadline_bounds_the_retries(
    invoke: Invoke, dead_target: str, attempts: list[grpc.StatusCode]
) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await invoke(
            KEY, "get_provider", "openai", target=dead_target, options={"retries": 100}, timeout=1
        )
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert 2 <= len(attempts) < 20  # waits of 0.05-0.1, 0.1-0.2, 0.2-0.4, ... within 1 s


async def test_other_errors_are_not_retried(
    invoke: Invoke, tenant: Any, waits: list[float], attempts: list[grpc.StatusCode]
) -> None:
    with pytest.raises(NotFound):
        await invoke(tenant.key, "get_integration", "missing", options={"retries": 5})
    assert attempts == [grpc.StatusCode.NOT_FOUND]
    assert waits == []


async def test_every_call_has_a_deadline_by_default(
    invoke: Invoke, silent_target: str, waits: list[float]
) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        await invoke(KEY, "get_integration", "x", target=silent_target, options={"timeout": 0.3})
    assert 0.25 <= time.monotonic() - started < 3
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert waits == []  # DEADLINE_EXCEEDED is not retried


async def test_a_call_can_override_the_deadline(invoke: Invoke, silent_target: str) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await invoke(
            KEY, "access_credentials", "i", "c", target=silent_target, timeout=0.3
        )  # the client's default is 5 s
    assert time.monotonic() - started < 3


def test_the_default_deadline_is_five_seconds() -> None:
    with CredBroker("127.0.0.1:1", KEY) as client:
        assert client._settings.call_timeout(None) == 5.0
        assert client._settings.call_timeout(0.5) == 0.5
        assert client._settings.backoff == _retry.Backoff(retries=3, base_delay=0.1, max_delay=2.0)


def test_backoff_grows_exponentially_up_to_two_seconds() -> None:
    backoff = _retry.Backoff(retries=20)
    for retry in range(20):
        cap = min(2.0, 0.1 * 2**retry)
        delays = [backoff.delay(retry) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert max(backoff.delay(30) for _ in range(50)) <= 2.0


def test_a_retry_can_succeed(waits: list[float]) -> None:
    outcomes: list[Exception | str] = [
        Unavailable("down"),
        Unavailable("still down"),
        "answer",
    ]
    deadlines: list[float | None] = []

    def attempt(remaining: float | None) -> str:
        deadlines.append(remaining)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert _retry.call(attempt, _retry.Backoff(retries=3), 10.0) == "answer"
    assert len(waits) == 2
    assert all(d is not None and 0 < d <= 10.0 for d in deadlines)
    assert deadlines == sorted(deadlines, key=lambda d: -(d or 0))  # one deadline for all


async def test_an_async_retry_can_succeed(waits: list[float]) -> None:
    outcomes: list[Exception | str] = [Unavailable("down"), "answer"]

    async def attempt(remaining: float | None) -> str:
        assert remaining is None  # timeout=None: no deadline
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert await _retry.async_call(attempt, _retry.Backoff(retries=1), None) == "answer"
    assert len(waits) == 1
