"""Background duties (the change listener, webhook dispatch, the periodic housekeeping rounds)
outlive every failure of a round, a lost database connection above all.

A failure is logged once per outage, by its type only (an exception's text may quote a
statement's parameters), the duty waits a growing delay before its next try, and the first
round that works again is logged. A duty's task that ends anyway (a bug) is logged at once
instead of going silent until shutdown.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("credbroker.background")


class Outage:
    """The failure state of one duty: logs the first failed round of an outage and the
    recovery, and gives the delay before the next try (exponential, capped, with jitter)."""

    def __init__(self, duty: str, *, first_delay: float = 1.0, max_delay: float = 30.0) -> None:
        self.duty = duty
        self._first_delay = first_delay
        self._max_delay = max(max_delay, first_delay)
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Records a failed round; returns the seconds to wait before the next one."""
        self.failures += 1
        if self.failures == 1:
            log.warning(
                "background duty failed; retrying", duty=self.duty, error_type=type(exc).__name__
            )
        delay = min(self._max_delay, self._first_delay * 2.0 ** min(self.failures - 1, 30))
        return delay * random.uniform(0.75, 1.0)

    def recovered(self) -> None:
        """Records a round that worked; logs the end of an outage."""
        if self.failures:
            log.info("background duty recovered", duty=self.duty, failed_rounds=self.failures)
            self.failures = 0


async def every(seconds: float, duty: str, run_round: Callable[[], Awaitable[object]]) -> None:
    """Runs ``run_round`` every ``seconds`` until cancelled; a failed round is retried at the
    next interval."""
    outage = Outage(duty)
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_round()
        except Exception as exc:  # noqa: BLE001 - any failure of a round is retried
            outage.failed(exc)
        else:
            outage.recovered()


def start(duty: str, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Runs a duty in a task of its own; reports the task ending other than by cancellation."""
    task = asyncio.create_task(coroutine, name=f"credbroker: {duty}")
    task.add_done_callback(_report_end)
    return task


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()  # retrieved here, so asyncio does not complain about it later
    log.error(
        "background duty stopped",
        duty=task.get_name(),
        error_type=type(exc).__name__ if exc is not None else None,
    )
