"""Running the server: one process on uvloop, or ``--workers N`` processes sharing one port.

Each worker is a full server (own pool, caches and change listener) bound with SO_REUSEPORT on
both the gRPC and the HTTP port, so the kernel spreads connections across them; caches stay
coherent through PostgreSQL change announcements. The supervising process checks the keyring
and the database once before spawning (fail closed), serves the aggregated metrics, forwards
SIGTERM/SIGINT for a graceful drain, and exits non-zero if a worker dies on its own so an
orchestrator restarts the lot. Workers stop by themselves when the supervisor dies, even of
SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from multiprocessing.connection import wait
from typing import Any

import structlog
import uvloop

from credbroker import metrics
from credbroker.app import serve
from credbroker.bootstrap import load_keyring, open_backend, verify_master_keys
from credbroker.config import Settings
from credbroker.logs import configure_logging
from credbroker.preflight import (
    FLAGS,
    ConfigurationError,
    ListenError,
    StartupError,
    check_can_listen,
)

log = structlog.get_logger("credbroker")


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Runs ``coroutine`` on a uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coroutine)


def run_server(settings: Settings, *, workers: int = 1, metrics_listen: str | None = None) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code."""
    if workers <= 1:
        if metrics_listen:
            _serve_metrics(metrics_listen, multiprocess_mode=False)
        run(serve(settings))
        return 0
    addresses = {"listen": settings.listen}
    if settings.http_listen:
        addresses["http_listen"] = settings.http_listen
    for field, address in addresses.items():
        if address.endswith(":0"):
            raise ConfigurationError(
                f"--workers {workers} needs fixed ports, not {address} ({FLAGS[field]}; workers "
                "share it with SO_REUSEPORT); give HOST:PORT or --workers 1"
            )
    for field, address in addresses.items():
        # Bound without SO_REUSEPORT: workers must not silently join another server's port.
        check_can_listen(address, FLAGS[field])
    run(_preflight(settings))
    metrics.prepare_multiprocess()
    if metrics_listen:
        _serve_metrics(metrics_listen, multiprocess_mode=True)
    return _supervise(settings.model_copy(update={"reuse_port": True}), workers)


async def _preflight(settings: Settings) -> None:
    """The fail-closed start checks, once, before any worker listens."""
    keyring = load_keyring(settings)
    backend = await open_backend(settings, pool_min=1)
    try:
        await verify_master_keys(backend.db, keyring, accept_binding_v1=settings.accept_binding_v1)
    finally:
        await backend.close()


def _serve_metrics(address: str, *, multiprocess_mode: bool) -> None:
    try:
        metrics.serve_metrics(address, multiprocess_mode=multiprocess_mode)
    except OSError as exc:  # taken between the start-up check and now
        raise ListenError(
            f"cannot listen on {address} (metrics): {exc.strerror or exc}; choose another port"
        ) from None


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHAN_POLL_SECONDS = 1.0


def _die_with_supervisor(supervisor_pid: int) -> None:
    """A worker must not outlive its supervisor: one killed with SIGKILL forwards nothing, and
    orphaned workers would keep the port. On Linux the kernel sends the worker SIGTERM (a
    graceful drain) when the supervisor dies (``PR_SET_PDEATHSIG``; the supervisor starts its
    workers from its main thread, whose exit is what the kernel watches); elsewhere a thread
    polls the parent pid. A supervisor already gone before this ran is caught by the pid
    check."""
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    if not armed:
        threading.Thread(
            target=_exit_when_orphaned, args=(supervisor_pid,), name="orphan-watch", daemon=True
        ).start()
    if os.getppid() != supervisor_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_when_orphaned(supervisor_pid: int) -> None:
    while os.getppid() == supervisor_pid:
        time.sleep(ORPHAN_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(
    values: dict[str, Any], log_format: str, log_level: str, index: int, supervisor_pid: int
) -> None:
    _die_with_supervisor(supervisor_pid)
    configure_logging(log_format, log_level)
    structlog.contextvars.bind_contextvars(worker=index)
    settings = Settings.model_validate(values)
    try:
        run(serve(settings))
    except StartupError as exc:
        print(f"credbroker: worker {index}: {exc}", file=sys.stderr)
        sys.exit(1)


def _supervise(settings: Settings, count: int) -> int:
    context = multiprocessing.get_context("spawn")
    values = settings.model_dump()
    processes = [
        context.Process(
            target=_worker,
            args=(values, settings.log_format, settings.log_level, index, os.getpid()),
            name=f"credbroker-worker-{index}",
        )
        for index in range(count)
    ]
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.start()
    log.info("workers started", workers=count, pids=[p.pid for p in processes])
    running = list(processes)
    failed = False
    while running:
        for sentinel in wait([p.sentinel for p in running]):
            process = next(p for p in running if p.sentinel == sentinel)
            process.join()
            running.remove(process)
            _mark_dead(process.pid)
            # A worker still starting when the stop signal came may die of it: that is a clean stop.
            stopped_by_us = stopping and process.exitcode in (-signal.SIGTERM, -signal.SIGINT)
            if (process.exitcode != 0 and not stopped_by_us) or not stopping:
                failed = True
                if not stopping:
                    log.error("worker exited; stopping the others", exit_code=process.exitcode)
                    stop(signal.SIGTERM, None)
    return 1 if failed else 0


def _mark_dead(pid: int | None) -> None:
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
