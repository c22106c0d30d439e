"""Shared-timer deadlines: a call is cancelled once its deadline passes (never before), a
disarmed call never is, and only a cancellation the deadline caused is reported as expiry."""

from __future__ import annotations

import asyncio

import pytest

from credbroker.admission.deadlines import Deadlines


async def _guarded(deadlines: Deadlines, seconds: float, work: float) -> str:
    task = asyncio.current_task()
    assert task is not None
    slot = deadlines.arm(task, seconds)
    expired = False
    try:
        try:
            await asyncio.sleep(work)
            return "done"
        finally:
            expired = deadlines.disarm(task, slot)
    except asyncio.CancelledError:
        if not expired:
            raise
        task.uncancel()
        return "expired"


async def test_a_call_past_its_deadline_is_cancelled_and_reported_expired() -> None:
    deadlines = Deadlines(resolution=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _guarded(deadlines, 0.05, 5.0) == "expired"
    assert 0.05 <= loop.time() - started < 1.0
    assert deadlines.armed == 0


async def test_a_call_that_finishes_in_time_is_not_touched() -> None:
    deadlines = Deadlines(resolution=0.01)
    results = await asyncio.gather(*(_guarded(deadlines, 0.2, 0.01) for _ in range(50)))
    assert results == ["done"] * 50
    await asyncio.sleep(0.3)  # the shared timer fires with nobody left to cancel
    assert deadlines.armed == 0


async def test_calls_in_one_slot_expire_together_and_others_do_not() -> None:
    deadlines = Deadlines(resolution=0.05)
    slow = [asyncio.create_task(_guarded(deadlines, 0.05, 5.0)) for _ in range(10)]
    fast = [asyncio.create_task(_guarded(deadlines, 5.0, 0.1)) for _ in range(10)]
    assert await asyncio.gather(*slow) == ["expired"] * 10
    assert await asyncio.gather(*fast) == ["done"] * 10


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(resolution=0.01)
    task = asyncio.create_task(_guarded(deadlines, 5.0, 5.0))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines.armed == 0


async def test_the_task_is_usable_after_an_expiry() -> None:
    deadlines = Deadlines(resolution=0.01)

    async def twice() -> tuple[str, str]:
        first = await _guarded(deadlines, 0.02, 5.0)
        await asyncio.sleep(0.01)  # no cancellation left pending
        return first, await _guarded(deadlines, 1.0, 0.01)

    assert await twice() == ("expired", "done")
