#!/usr/bin/env python3
"""CPU per call: a figure that survives a busy machine, for work between quiet benchmark runs.

    .venv/bin/python bench/cpu.py                       # noop, AccessCredentials, GetConnection
    .venv/bin/python bench/cpu.py --methods AccessCredentials --calls 40000 --repeat 5
    .venv/bin/python bench/cpu.py --http                # also the HTTP routes (h2load --h1)

Throughput taken while other work shares the cores is noise; the CPU time the server spends per
call is much less so. For each method this starts the same server ``make bench`` starts (the
real ``credbroker serve`` on the 1,000-row bench dataset, or bench/noop.py), sends a fixed number
of calls with h2load at a fixed concurrency (``--level``, default 64), and reads utime + stime of
every server process, of PostgreSQL (the bench database's backends and the auxiliary
processes) and of h2load from /proc before and after. Each method is measured ``--repeat`` times
on one server; the report gives the median and the smallest of the repeats, in microseconds per
call, and the ratio of each to the no-op's. ``loop thread`` is the CPU time of the processes'
main threads, which run the event loop: with one worker, its inverse bounds the throughput.
The figures include the server's background work (audit group commit, caches), so they are
what one call really costs.

Wall-clock figures (req/s) are printed too, but only as a sanity check: on a shared machine they
mean little. Results go to bench/data/cpu/<timestamp>.json.
"""

# ruff: noqa: S603 - the benchmark starts its own servers and tools by design

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import run
import seed

PERF = shutil.which("perf") or "/usr/bin/perf"  # Debian's linux-perf


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="noop,AccessCredentials,GetConnection")
    parser.add_argument("--calls", type=int, default=20000, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--level", type=int, default=64, help="calls in flight")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument(
        "--http",
        action="store_true",
        help="also the HTTP no-op and GET /connections/{id} (h2load --h1, --level connections)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also py-spy the server during an extra run of each method (self/inclusive time)",
    )
    parser.add_argument("--native", action="store_true", help="with --profile: native frames")
    parser.add_argument(
        "--perf",
        action="store_true",
        help="also `perf record -e cpu-clock` the server during an extra run (native code by "
        "shared object and symbol: grpc core, uvloop, libpython, OpenSSL)",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    # What run.Bench reads.
    args.no_install = False
    args.quiet_wait = 0.0
    args.quiet_budget = 0.0
    args.methods = args.methods.split(",")
    if args.http:
        args.methods += [m for m in (run.HTTP_NOOP, run.HTTP_GET) if m not in args.methods]
    return args


def _h2load(binary: str, argv: list[str]) -> float:
    before = psutil.Process().cpu_times()
    done = subprocess.run([binary, *argv], capture_output=True, text=True, check=False, timeout=600)
    after = psutil.Process().cpu_times()
    if done.returncode != 0 or "succeeded" not in done.stdout:
        raise RuntimeError(f"h2load failed: {done.stdout[-800:]} {done.stderr[-400:]}")
    counts = done.stdout.split("requests: ", 1)[1].split("\n", 1)[0]
    if " 0 failed, 0 errored" not in counts:
        raise RuntimeError(f"h2load saw failures: {counts}")
    return (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def loop_threads(server: run.Server) -> dict[int, tuple[int, int]]:
    """(ns on a CPU, ns waiting for one) of each server process's main thread, which runs its
    event loop (/proc/PID/task/PID/schedstat)."""
    times = {}
    for process in server.tree():
        try:
            fields = Path(f"/proc/{process.pid}/task/{process.pid}/schedstat").read_text().split()
        except OSError:
            continue
        times[process.pid] = (int(fields[0]), int(fields[1]))
    return times


def context_switches(server: run.Server) -> int:
    """Voluntary and involuntary context switches of every thread of the server so far."""
    total = 0
    for process in server.tree():
        for task in Path(f"/proc/{process.pid}/task").glob("*"):
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                        total += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return total


def loop_share(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], wall: float
) -> tuple[float, float]:
    """The busiest event-loop thread's (share of the wall time on a CPU, share wanting one:
    on a CPU or runnable). A loop wanting the CPU nearly all the time is CPU-bound; much less
    means its calls wait on something (the database, a lock, a batch)."""
    best = (0.0, 0.0)
    for pid, (run_ns, wait_ns) in after.items():
        run0, wait0 = before.get(pid, (0, 0))
        running = (run_ns - run0) / 1e9 / wall
        wanting = running + (wait_ns - wait0) / 1e9 / wall
        best = max(best, (running, wanting))
    return best


def measure(
    bench: run.Bench,
    server: run.Server,
    dataset: seed.Dataset,
    argv: list[str],
    calls: int,
    repeat: int,
) -> dict[str, Any]:
    """``repeat`` runs of ``calls`` calls: CPU per call of the server, PostgreSQL and h2load."""
    _h2load(bench.h2load, ["-n", str(max(calls // 10, 500)), *argv])  # warm-up
    rows = []
    for _ in range(repeat):
        tree, pg = server.tree(), run.postgres_processes(dataset.database)
        cpu0, pg0 = run.cpu_seconds(tree), run.cpu_seconds(pg)
        loop0 = loop_threads(server)
        switches0 = context_switches(server)
        started = time.perf_counter()
        client = _h2load(bench.h2load, ["-n", str(calls), *argv])
        wall = time.perf_counter() - started
        cpu1, pg1 = run.cpu_seconds(server.tree()), run.cpu_seconds(pg)
        loop1 = loop_threads(server)
        switches = context_switches(server) - switches0
        loop_running, loop_wanting = loop_share(loop0, loop1, wall)
        loop_ns = sum(loop1[pid][0] - loop0.get(pid, (0, 0))[0] for pid in loop1)
        rows.append(
            {
                "server_us": 1e6 * run.cpu_delta(cpu0, cpu1) / calls,
                "loop_us": loop_ns / 1e3 / calls,
                "switches": switches / calls,
                "pg_us": 1e6 * run.cpu_delta(pg0, pg1) / calls,
                "client_us": 1e6 * client / calls,
                "rps": calls / wall,
                "loop_on_cpu": loop_running,
                "loop_wants_cpu": loop_wanting,
            }
        )
    return {
        key: {
            "median": statistics.median(r[key] for r in rows),
            "min": min(r[key] for r in rows),
        }
        for key in rows[0]
    }


def profile(
    bench: run.Bench, server: run.Server, argv: list[str], method: str, args: argparse.Namespace
) -> None:
    """py-spy over ``args.calls`` more calls; the summary goes to bench/data/cpu/."""
    py_spy = str(run.BIN / "py-spy")
    raw = bench.tmp / "profile.raw"
    command = [py_spy, "record", "--format", "raw", "--rate", "500", "--subprocesses"]
    command += ["--nonblocking", "--output", str(raw), "--pid", str(server.root.pid)]
    if args.native:
        command.append("--native")
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    started = time.perf_counter()
    _h2load(bench.h2load, ["-n", str(args.calls), *argv])
    rps = args.calls / (time.perf_counter() - started)
    spy.send_signal(2)
    _, err = spy.communicate(timeout=60)
    if not raw.exists():
        run.log(f"py-spy failed: {err.decode(errors='replace')[-400:]}")
        return
    summary = run.summarize_profile(raw.read_text(), method, args.level, rps)
    out = run.DATA / "cpu"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{method}-profile.txt"
    path.write_text(summary["text"])
    (out / f"{method}-profile.raw").write_text(raw.read_text())
    run.log(f"profile: {path}")


def perf_profile(
    bench: run.Bench, server: run.Server, argv: list[str], method: str, args: argparse.Namespace
) -> None:
    """perf (software clock, so it works without hardware counters) over ``args.calls`` calls:
    self time by shared object and by symbol, written to bench/data/cpu/<method>-perf.txt."""
    data = bench.tmp / "perf.data"
    pids = ",".join(str(p.pid) for p in server.tree())
    command = [PERF, "record", "-e", "cpu-clock", "-F", "1999", "-o", str(data), "-p", pids]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    _h2load(bench.h2load, ["-n", str(args.calls), *argv])
    spy.send_signal(2)
    spy.communicate(timeout=60)
    out = run.DATA / "cpu"
    out.mkdir(parents=True, exist_ok=True)
    text = []
    for sort in ("dso", "dso,sym"):
        report = subprocess.run(
            [PERF, "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        lines = [line for line in report.splitlines() if line and not line.startswith("#")]
        text += [f"== perf self time by {sort}", *lines[:60], ""]
    path = out / f"{method}-perf.txt"
    path.write_text("\n".join(text))
    run.log(f"perf: {path}")


def grpc_argv(call: run.Call, token: str | None, level: int, port: int, body: Path) -> list[str]:
    clients, streams = run.split_concurrency(level)
    body.write_bytes(b"\x00" + len(call.body).to_bytes(4, "big") + call.body)
    argv = ["-c", str(clients), "-m", str(streams), "-t", "1"]
    argv += ["-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body)]
    if token:
        argv += ["-H", f"authorization: Bearer {token}"]
    return [*argv, f"http://127.0.0.1:{port}{call.path}"]


def main() -> int:
    args = _args()
    bench = run.Bench(args)
    dataset = asyncio.run(
        seed.ensure_dataset(args.dsn, args.rows, bench.keyring_file, bench.credbroker)
    )
    results: dict[str, Any] = {}
    methods = list(args.methods)
    # The no-op copies the real server's event loop: start a real one first.
    real = [m for m in methods if m != "noop"]
    if real and methods[0] == "noop":
        methods.remove(real[0])
        methods.insert(0, real[0])
    for method in methods:
        kind = method if method in ("noop", run.HTTP_NOOP) else "credbroker"
        group = run.Group(dataset, kind, method, args.workers, [])
        server, port, _ = bench.start(group)
        try:
            token = None if kind != "credbroker" else bench.token(dataset)
            call = run.build_call(method, "first page" if method == "ListConnections" else "", 0)
            call = run.build_call(call.name, call.variant, dataset.rows)
            if call.http:
                argv = ["--h1", "-c", str(args.level), "-m", "1", "-t", "1"]
                if token:
                    argv += ["-H", f"authorization: Bearer {token}"]
                argv.append(f"http://127.0.0.1:{port}{call.path}")
            else:
                argv = grpc_argv(call, token, args.level, port, bench.tmp / "body.bin")
            results[method] = measure(bench, server, dataset, argv, args.calls, args.repeat)
            run.log(f"{method}: {_line(results[method])}")
            if args.profile:
                profile(bench, server, argv, method, args)
            if args.perf:
                perf_profile(bench, server, argv, method, args)
        finally:
            server.stop()
    ceilings = {m: results.get(run.HTTP_NOOP if m in run.HTTP_METHODS else "noop") for m in results}
    print(
        f"\nCPU per call, µs ({args.calls} calls x {args.repeat}, {args.level} in flight, "
        f"{args.workers} worker(s)); median (min); x = vs no-op"
    )
    for method, figures in results.items():
        ratio = ""
        noop = ceilings[method]
        if noop and method not in ("noop", run.HTTP_NOOP):
            ratio = f"  server {figures['server_us']['median'] / noop['server_us']['median']:.2f}x"
            ratio += f", loop {figures['loop_us']['median'] / noop['loop_us']['median']:.2f}x"
        print(f"  {method:<20} {_line(figures)}{ratio}")
    out = run.DATA / "cpu"
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"{stamp}.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=2, default=str)
    )
    return 0


def _line(figures: dict[str, Any]) -> str:
    def cell(key: str) -> str:
        return f"{figures[key]['median']:7.1f} ({figures[key]['min']:6.1f})"

    return (
        f"server {cell('server_us')}  loop thread {cell('loop_us')}  pg {cell('pg_us')}  "
        f"h2load {cell('client_us')}  "
        f"switches {figures['switches']['median']:.2f}/call  "
        f"loop on CPU {figures['loop_on_cpu']['median']:.0%}, wanting it "
        f"{figures['loop_wants_cpu']['median']:.0%}  [{figures['rps']['median']:,.0f} req/s, noise]"
    )


if __name__ == "__main__":
    sys.exit(main())
