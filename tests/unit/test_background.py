"""Background duties (credbroker.background): a failing round is logged once per outage by its
type only, never its text; the delay grows and is capped; recovery is logged; a duty's task that
ends anyway is reported at once."""

from __future__ import annotations

import asyncio

import structlog

from credbroker import background

SECRET_TEXT = "cbsk_0123456789abcdef_notarealsecretbutlookslikeone password=hunter2"


def test_an_outage_is_logged_once_by_type_and_its_recovery_once() -> None:
    outage = background.Outage("the duty", first_delay=1.0, max_delay=8.0)
    with structlog.testing.capture_logs() as logs:
        delays = [outage.failed(ConnectionResetError(SECRET_TEXT)) for _ in range(6)]
        outage.recovered()
        outage.recovered()
        outage.failed(TimeoutError(SECRET_TEXT))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("background duty failed; retrying", "warning"),
        ("background duty recovered", "info"),
        ("background duty failed; retrying", "warning"),
    ]
    assert logs[0]["duty"] == "the duty" and logs[0]["error_type"] == "ConnectionResetError"
    assert logs[1]["failed_rounds"] == 6
    assert "hunter2" not in repr(logs) and "cbsk_" not in repr(logs)
    # 1, 2, 4, 8, 8, 8 s, each with up to 25 % jitter below.
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert nominal * 0.75 <= delay <= nominal


async def test_every_survives_failing_rounds() -> None:
    rounds: list[int] = []

    async def run_round() -> None:
        rounds.append(len(rounds))
        if len(rounds) <= 3:
            raise RuntimeError(SECRET_TEXT)

    with structlog.testing.capture_logs() as logs:
        task = background.start("flaky", background.every(0.01, "flaky", run_round))
        for _ in range(500):
            if len(rounds) >= 6:
                break
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(rounds) >= 6
    events = [e["event"] for e in logs]
    assert events == ["background duty failed; retrying", "background duty recovered"]
    assert "hunter2" not in repr(logs)


async def test_a_duty_that_ends_is_reported() -> None:
    async def broken() -> None:
        raise KeyError(SECRET_TEXT)

    with structlog.testing.capture_logs() as logs:
        task = background.start("broken duty", broken())
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert [(e["event"], e["log_level"], e["error_type"]) for e in logs] == [
        ("background duty stopped", "error", "KeyError")
    ]
    assert "broken duty" in logs[0]["duty"] and "hunter2" not in repr(logs)
