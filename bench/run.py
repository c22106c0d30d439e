#!/usr/bin/env python3
"""`make bench`: credbroker under load, next to the framework's own ceiling, on this machine.

    .venv/bin/python bench/run.py            # the full run (about 7 to 12 minutes)
    .venv/bin/python bench/run.py --quick    # a 2-minute smoke run (results in bench/data/quick/)

What it does (bench/README.md has the details and the caveats):

1. Seeds two databases with N connections each (``--small`` 1,000 and ``--big`` 1,000,000 by
   default; real ciphertexts, see bench/seed.py), reused when already seeded.
2. For each group of points starts a fresh server as a subprocess: the real ``credbroker serve``
   against PostgreSQL, or bench/noop.py (the same grpc server configuration, no interceptors,
   one no-op method) for the ceiling. Flags the server grew since (``--workers``,
   ``--metrics-listen``) are used when ``credbroker serve --help`` lists them; the no-op server
   copies the real one's event loop (uvloop if the server process loaded it) and process count.
3. Drives each method with h2load (nghttp2-client) at fixed concurrency levels for a fixed time,
   after a warm-up, with a pre-encoded gRPC request frame. h2load does not read grpc-status, so
   each point is also checked: a Python gRPC call of the same request before and after (status
   OK, expected content), the response DATA bytes (every OK response carries one frame of known
   size, an error none), the audit trail (AccessCredentials: one OK row per call, no other row),
   and the server's metrics endpoint when it has one.
4. Records requests/s, p50/p99/p99.9 latency (h2load's per-request log), server, PostgreSQL and
   load-generator CPU per request (from /proc), and peak RSS per server process; writes
   bench/results/<timestamp>.json and .md, latest.json/.md/.png.
"""

# ruff: noqa: S603 - the benchmark starts its own servers and tools by design

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
import seed

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / "data"
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent

NOOP_METHOD = "/credbroker.bench.Noop/Ping"
HTTP_NOOP = "http-noop"  # GET /noop on bench/http_noop.py: the HTTP stack's ceiling
HTTP_GET = "HttpGetConnection"  # GET /connections/{id} over HTTP/1.1 keep-alive
HTTP_METHODS = frozenset({HTTP_NOOP, HTTP_GET})
HTTP_AUDIT_METHOD = "GET /connections/{connection_id}"
SERVICE = "/credbroker.v1.ConnectionService/"
PAGE_SIZE = 50
QUIET_CORES = 0.3  # CPU used by other work (between points) above which a point waits a little
NOISY_CORES = 0.3  # CPU used by other work during a point above which it is marked noisy
DEEP_OFFSET = 100  # the deep page starts this many rows before the end of the key order
STABILITY_LEVEL = 64  # in flight during the stability runs

LIST_FILTERS = {  # what ConnectionServicer.ListConnections digests into its page tokens
    "method": "ListConnections",
    "integration_id": "",
    "tags": {},
    "verification_state": 0,
}


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


# --- requests ----------------------------------------------------------------------------------


@dataclass
class Call:
    """One benchmarked request: gRPC path, serialized request, and how to check a response."""

    name: str  # noop | AccessCredentials | GetConnection | ListConnections
    variant: str  # "" or "first page" / "deep page"
    path: str
    body: bytes
    expect: dict[str, Any]

    @property
    def http(self) -> bool:
        """An HTTP/1.1 call to the HTTP listener (else a gRPC call)."""
        return self.name in HTTP_METHODS

    @property
    def title(self) -> str:
        return f"{self.name} ({self.variant})" if self.variant else self.name


def build_call(name: str, variant: str, rows: int) -> Call:
    from credbroker.v1 import connection_service_pb2 as pb

    target = rows // 2
    if name == "noop":
        return Call(name, variant, NOOP_METHOD, b"", {})
    if name == HTTP_NOOP:
        return Call(name, variant, "/noop", b"", {})
    if name == HTTP_GET:
        path = (
            f"/connections/{seed.connection_id(target)}?provider_config_key={seed.INTEGRATION_ID}"
        )
        return Call(name, variant, path, b"", {"api_key": seed.api_key(target)})
    if name == "AccessCredentials":
        access = pb.AccessCredentialsRequest(
            integration_id=seed.INTEGRATION_ID, connection_id=seed.connection_id(target)
        )
        return Call(
            name,
            variant,
            SERVICE + name,
            access.SerializeToString(),
            {"api_key": seed.api_key(target)},
        )
    if name == "GetConnection":
        get = pb.GetConnectionRequest(
            integration_id=seed.INTEGRATION_ID, connection_id=seed.connection_id(target)
        )
        return Call(
            name,
            variant,
            SERVICE + name,
            get.SerializeToString(),
            {"connection_id": seed.connection_id(target)},
        )
    if name == "ListConnections":
        from credbroker.api.paging import encode_page_token

        first = 0
        token = ""
        if variant == "deep page":
            first = max(0, rows - DEEP_OFFSET)
            cursor = (seed.INTEGRATION_ID, seed.connection_id(first - 1))
            token = encode_page_token(cursor, LIST_FILTERS) if first else ""
        page = pb.ListConnectionsRequest(page_size=PAGE_SIZE, page_token=token)
        return Call(
            name,
            variant,
            SERVICE + name,
            page.SerializeToString(),
            {"first_id": seed.connection_id(first), "count": min(PAGE_SIZE, rows - first)},
        )
    raise ValueError(name)


def check_response(call: Call, raw: bytes) -> str | None:
    """None if ``raw`` is the response the call must get, else what is wrong."""
    from credbroker.v1 import connection_service_pb2 as pb
    from credbroker.v1 import resources_pb2

    if call.name == "noop":
        return None if raw == b"" else "non-empty no-op response"
    if call.name == HTTP_NOOP:
        return None if json.loads(raw) == {} else "unexpected no-op body"
    if call.name == HTTP_GET:
        body = json.loads(raw)
        if body.get("credentials") != {"type": "API_KEY", "apiKey": call.expect["api_key"]}:
            return "GET /connections/{id} returned other credentials"
        return None
    if call.name == "AccessCredentials":
        reply = pb.AccessCredentialsResponse.FromString(raw)
        if reply.credentials.api_key.api_key != call.expect["api_key"]:
            return "AccessCredentials returned another api key"
        if reply.headers.get("authorization") != f"Bearer {call.expect['api_key']}":
            return "AccessCredentials returned unexpected headers"
        return None
    if call.name == "GetConnection":
        got = resources_pb2.Connection.FromString(raw).connection_id
        return None if got == call.expect["connection_id"] else f"got connection {got}"
    page = pb.ListConnectionsResponse.FromString(raw)
    ids = [c.connection_id for c in page.connections]
    if len(ids) != call.expect["count"] or (ids and ids[0] != call.expect["first_id"]):
        return f"page starts at {ids[:1]} with {len(ids)} items"
    return None


def sample(port: int, call: Call, token: str | None) -> tuple[bytes | None, str | None]:
    """The call made once with the Python gRPC client (HTTP calls with urllib): (raw response,
    error or None)."""
    if call.http:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{call.path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
                raw = response.read()
        except OSError as exc:
            return None, f"HTTP: {exc}"
        return raw, check_response(call, raw)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = channel.unary_unary(call.path)
        try:
            raw = stub(call.body, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return None, f"{exc.code().name}: {exc.details()}"
    return raw, check_response(call, raw)


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def _busy(times: Any) -> float:
    """Seconds all CPUs spent running something (psutil.cpu_times() of the whole machine)."""
    return sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))


def vm_hwm_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


_BACKEND = re.compile(r"\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]")


def postgres_processes(database: str) -> list[psutil.Process]:
    """PostgreSQL's auxiliary processes and the backends of ``database`` (not other databases')."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.info["name"] not in {"postgres", "postmaster"}:
                continue
            line = " ".join(process.info["cmdline"] or ())
            if _BACKEND.search(line) and f" {database} " not in line:
                continue
            found.append(process)
    return found


class Server:
    """A server subprocess in its own session: the tree's CPU and memory, and a clean stop."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.command = command
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=DATA,
        )
        self.root = psutil.Process(self.process.pid)
        self._peak: dict[int, float] = {}
        self._peak_total = 0.0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def tree(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [self.root, *self.root.children(recursive=True)]
        return []

    def alive(self) -> bool:
        return self.process.poll() is None

    def loop_kind(self) -> str:
        """uvloop if any process of the server mapped it, else the stock asyncio loop."""
        for process in self.tree():
            with contextlib.suppress(OSError):
                if "uvloop" in Path(f"/proc/{process.pid}/maps").read_text():
                    return "uvloop"
        return "asyncio"

    def vm_hwm(self) -> dict[int, float]:
        return {p.pid: v for p in self.tree() if (v := vm_hwm_mb(p.pid)) is not None}

    def start_sampling(self) -> None:
        self._peak, self._peak_total = {}, 0.0
        self._sampling.set()

        def run() -> None:
            while self._sampling.is_set():
                total = 0.0
                for process in self.tree():
                    with contextlib.suppress(psutil.Error):
                        rss = process.memory_info().rss / 2**20
                        total += rss
                        self._peak[process.pid] = max(self._peak.get(process.pid, 0.0), rss)
                self._peak_total = max(self._peak_total, total)
                time.sleep(0.2)

        self._sampler = threading.Thread(target=run, daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> tuple[float, float]:
        """(largest RSS of one process, largest sum over the tree) seen while sampling, MB."""
        self._sampling.clear()
        if self._sampler:
            self._sampler.join()
        return max(self._peak.values(), default=0.0), self._peak_total

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a crash
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


def connections_per_worker(server: Server, port: int) -> list[int]:
    """Established client connections to ``port`` held by each server process that has any."""
    counts = []
    for process in server.tree():
        with contextlib.suppress(psutil.Error):
            held = sum(
                1
                for c in process.net_connections(kind="tcp")
                if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
            )
            if held:
                counts.append(held)
    return counts


def wait_ready(server: Server, port: int, probe: Call, token: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    error: str | None = "not started"
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{tail}")
        _, error = sample(port, probe, token) if _port_open(port) else (None, "port closed")
        if error is None:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout}s: {error}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- h2load ------------------------------------------------------------------------------------


def _quiet(command: list[str]) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = subprocess.DEVNULL
    return subprocess.run(command, env=env, stdout=quiet, stderr=quiet, check=False).returncode


def ensure_h2load(install: bool) -> str:
    path: str | None = shutil.which("h2load")
    if path:
        return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        log("h2load not found: installing Debian's nghttp2-client")
        apt_install = ["apt-get", "install", "-y", "nghttp2-client"]
        if _quiet(apt_install) != 0:
            _quiet(["apt-get", "update"])
            _quiet(apt_install)
        path = shutil.which("h2load")
        if path:
            return path
    raise SystemExit(
        "bench: h2load is missing: install Debian's nghttp2-client "
        "(sudo apt-get install -y nghttp2-client) or your OS's nghttp2 package"
    )


def split_concurrency(level: int) -> tuple[int, int]:
    """level in-flight requests as (connections, streams per connection), near the square root:
    1 = 1x1, 16 = 4x4, 64 = 8x8, 256 = 16x16."""
    clients = max(d for d in range(1, math.isqrt(level) + 1) if level % d == 0)
    return clients, level // clients


@dataclass
class LoadResult:
    seconds: float
    requests: int
    succeeded: int
    failed: int
    rps: float
    data_bytes: int
    not_2xx: int  # HTTP answers other than 2xx (gRPC errors still answer 200)
    latencies_us: list[int]
    client_cpu_s: float
    command: list[str]


_NUM = r"([\d.]+)"


def h2load(
    binary: str,
    port: int,
    call: Call,
    token: str | None,
    level: int,
    seconds: float,
    body_file: Path,
    log_file: Path | None,
) -> LoadResult:
    clients, streams = split_concurrency(level)
    command = [binary, "-D", f"{round(seconds * 1000)}ms", "-t", "1"]
    if call.http:  # HTTP/1.1 keep-alive: one request in flight per connection
        command += ["--h1", "-c", str(level), "-m", "1"]
    else:
        command += [
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            "grpc-accept-encoding: identity",
            "-d",
            str(body_file),
        ]
    if token:
        command += ["-H", f"authorization: Bearer {token}"]
    if log_file is not None:
        log_file.unlink(missing_ok=True)  # h2load appends
        command += ["--log-file", str(log_file)]
    command.append(f"http://127.0.0.1:{port}{call.path}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = done.stdout
    if done.returncode != 0 or "finished in" not in out:
        raise RuntimeError(f"h2load failed ({done.returncode}): {out[-1500:]} {done.stderr[-500:]}")
    finished = re.search(rf"finished in {_NUM}s, {_NUM} req/s", out)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored",
        out,
    )
    traffic = re.search(r"traffic: .*\((\d+)\) total, .*\((\d+)\) headers.*\((\d+)\) data", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert finished and counts and traffic and codes, out
    latencies = []
    if log_file is not None:
        for line in log_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                latencies.append(int(parts[2]))
    return LoadResult(
        seconds=float(finished.group(1)),
        requests=int(counts.group(3)),
        succeeded=int(counts.group(4)),
        failed=int(counts.group(5)) + int(counts.group(6)),
        not_2xx=sum(int(codes.group(i)) for i in (2, 3, 4)),
        rps=float(finished.group(2)),
        data_bytes=int(traffic.group(3)),
        latencies_us=latencies,
        client_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        command=command,
    )


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


# --- database checks ---------------------------------------------------------------------------


def sql(dsn: str, query: str, *args: Any) -> Any:
    async def run() -> Any:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchrow(query, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


def audit_mark(dsn: str) -> int:
    return int(sql(dsn, "SELECT coalesce(max(id), 0) AS id FROM audit_events")["id"])


def audit_since(dsn: str, mark: int, method: str) -> tuple[int, int]:
    """(OK rows, other rows) of ``method`` written after ``mark``."""
    row = sql(
        dsn,
        """SELECT count(*) FILTER (WHERE outcome = 'OK') AS ok,
                  count(*) FILTER (WHERE outcome <> 'OK') AS other
           FROM audit_events WHERE id > $1 AND method = $2""",
        mark,
        method,
    )
    return int(row["ok"]), int(row["other"])


# --- metrics endpoint (when the server has one) ------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """Every ``*_total`` counter sample of the server's Prometheus endpoint, or None."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as reply:
            text = reply.read().decode("utf-8", "replace")
    except OSError:
        return None
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or not match.group(1).endswith("_total"):
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        with contextlib.suppress(ValueError):
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def metrics_delta(before: Any, after: Any, method: str) -> dict[str, Any] | None:
    """RPC outcomes of ``method`` and cache lookups between two scrapes."""
    if before is None or after is None:
        return None
    rpcs: dict[str, float] = {}
    cache: dict[str, float] = {}
    for (name, labels), value in after.items():
        delta = value - before.get((name, labels), 0.0)
        tags = dict(labels)
        code = tags.get("code") or tags.get("grpc_code")
        named = tags.get("method", "")
        if code and method in (named, named.rsplit("/", 1)[-1]):
            rpcs[code] = rpcs.get(code, 0.0) + delta
        elif "cache" in name and delta:
            cache["/".join(v for _, v in labels) or name] = delta
    return {"rpcs_by_code": rpcs, "cache_lookups": cache}


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Point:
    dataset: str
    rows: int
    server: str  # "credbroker" | "noop"
    method: str
    variant: str
    workers: int
    concurrency: int
    connections: int
    streams: int
    duration_s: float = 0.0
    requests: int = 0
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_cpu_ms_per_req: float = 0.0
    server_cpu_cores: float = 0.0
    db_cpu_ms_per_req: float = 0.0
    client_cpu_ms_per_req: float = 0.0
    peak_rss_mb: float = 0.0  # largest RSS of one server process sampled during the point
    peak_rss_total_mb: float = 0.0  # largest sum over the server's processes during the point
    vm_hwm_mb: float = 0.0  # largest VmHWM (lifetime peak) of one server process after the point
    other_cores: float = 0.0  # CPU used by everything else on the machine during the point
    waited_s: float = 0.0  # time spent waiting for the machine to be quiet before the point
    processes: int = 1
    errors: int = 0
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.dataset, self.method, self.variant, self.workers, self.concurrency)


@dataclass
class Group:
    """Points sharing one freshly started server, run in ascending concurrency."""

    dataset: seed.Dataset
    server: str
    method: str
    workers: int
    points: list[tuple[str, int]]  # (variant, concurrency)
    probe: int = 0  # random-key AccessCredentials calls with the Python client
    stability: int = 0  # >0: that many consecutive runs on this one server (no points)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.h2load = ensure_h2load(not args.no_install)
        self.credbroker = str(BIN / "credbroker")
        if not Path(self.credbroker).exists():
            raise SystemExit(f"bench: {self.credbroker} not found; run `make install` first")
        help_text = subprocess.run(
            [self.credbroker, "serve", "--help"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "CREDBROKER_LOG_LEVEL": "warning"},
        ).stdout
        self.has_workers = "--workers" in help_text
        self.has_http = "--http-listen" in help_text
        self.has_metrics = "--metrics-listen" in help_text
        self.keyring_file = seed.ensure_keyring(DATA / "keyring.json")
        self.tmp = Path(tempfile.mkdtemp(prefix="credbroker-bench-"))
        self.points: list[Point] = []
        self.probes: list[dict[str, Any]] = []
        self.stability: dict[str, Any] | None = None
        self.servers: list[dict[str, Any]] = []
        self.loop_kind = "asyncio"
        self.profile: dict[str, Any] | None = None
        self.tokens: dict[str, str] = {}
        self.quiet_budget = args.quiet_budget

    def wait_for_quiet(self) -> float:
        """Waits (within --quiet-wait per point and --quiet-budget per run) until the rest of
        the machine uses less than QUIET_CORES: other work on 2 cores skews every figure."""
        waited = 0.0
        while True:
            before = psutil.cpu_times()
            time.sleep(1.0)
            other = _busy(psutil.cpu_times()) - _busy(before)
            if other < QUIET_CORES or waited >= min(self.args.quiet_wait, self.quiet_budget):
                break
            waited += 1.0
            self.quiet_budget -= 1.0
        if waited:
            log(f"  waited {waited:.0f}s for other work on the machine to settle")
        return waited

    # -- servers --

    def server_env(self, dataset: seed.Dataset) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CREDBROKER_DATABASE_URL=dataset.dsn,
            CREDBROKER_KEYRING_FILE=str(self.keyring_file),
            CREDBROKER_VERIFY_CREDENTIALS="false",
            CREDBROKER_RECHECK_INTERVAL="0",
            CREDBROKER_LOG_LEVEL="warning",
            CREDBROKER_LOG_FORMAT="json",
            CREDBROKER_MAX_CONCURRENT_RPCS="1024",
            CREDBROKER_SHUTDOWN_GRACE="1",
        )
        env.pop("CREDBROKER_KEYRING", None)
        return env

    def start(self, group: Group) -> tuple[Server, int, int | None]:
        port = free_port()
        metrics_port = None
        if group.server == "noop":
            command = [
                sys.executable,
                str(BENCH / "noop.py"),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                str(group.workers),
                "--loop",
                self.loop_kind,
            ]
            ready = build_call("noop", "", 0)
            token = None
        elif group.server == HTTP_NOOP:
            command = [
                sys.executable,
                str(BENCH / "http_noop.py"),
                "--listen",
                f"127.0.0.1:{port}",
                "--loop",
                self.loop_kind,
            ]
            ready = build_call(HTTP_NOOP, "", 0)
            token = None
        else:
            command = [self.credbroker, "serve", "--listen", f"127.0.0.1:{port}"]
            http_port = 0
            if self.has_http:  # a free port of its own, never the default 8080
                http_port = free_port()
                command += ["--http-listen", f"127.0.0.1:{http_port}"]
            if self.has_workers:
                command += ["--workers", str(group.workers)]
            if self.has_metrics:
                metrics_port = free_port()
                command += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
            ready = build_call("GetConnection", "", group.dataset.rows)
            token = self.token(group.dataset)
        name = f"{group.server}-{group.dataset.label}-{group.method}-w{group.workers}"
        started = time.monotonic()
        server = Server(
            name, command, self.server_env(group.dataset), DATA / "logs" / f"{name}.log"
        )
        try:
            wait_ready(server, port, ready, token, timeout=90)
            if group.workers > 1:  # every worker should be up before load starts
                time.sleep(2)
        except Exception:
            server.stop()
            raise
        if group.server == "credbroker":
            self.loop_kind = server.loop_kind()
            if group.method in HTTP_METHODS:  # the group's calls go to the HTTP listener
                port = http_port
                try:
                    wait_ready(
                        server, port, build_call(HTTP_GET, "", group.dataset.rows), token, 30
                    )
                except Exception:
                    server.stop()
                    raise
        self.servers.append(
            {
                "name": name,
                "command": [Path(command[0]).name, *command[1:]],
                "start_seconds": round(time.monotonic() - started, 2),
                "processes": len(server.tree()),
                "loop": server.loop_kind(),
            }
        )
        return server, port, metrics_port

    def token(self, dataset: seed.Dataset) -> str:
        if dataset.database not in self.tokens:
            out = seed.run_cli(
                self.credbroker,
                ["keys", "create", "--environment", seed.ENVIRONMENT, "--description", "bench"],
                dataset.dsn,
                self.keyring_file,
            )
            self.tokens[dataset.database] = out.strip().splitlines()[-1].strip()
        return self.tokens[dataset.database]

    # -- points --

    def run_group(self, group: Group) -> None:
        server, port, metrics_port = self.start(group)
        token = None if group.server in ("noop", HTTP_NOOP) else self.token(group.dataset)
        log(
            f"{server.name}: up on 127.0.0.1:{port} ({len(server.tree())} process(es), "
            f"{server.loop_kind()} loop)"
        )
        try:
            if group.stability:
                self.run_stability(group, server, port, token)
                return
            if group.probe:
                self.random_probe(group, port, token)
            for variant, level in group.points:
                self.run_point(group, server, port, metrics_port, token, variant, level)
                if (
                    (self.args.profile or self.args.profile_native or self.args.profile_gil)
                    and group.server == "credbroker"
                    and group.workers == 1
                    and group.method == self.args.profile_method
                    and level == 64
                    and group.dataset.rows == self.args.small
                ):
                    self.run_profile(group, server, port, token, level)
        finally:
            server.stop()

    def run_point(
        self,
        group: Group,
        server: Server,
        port: int,
        metrics_port: int | None,
        token: str | None,
        variant: str,
        level: int,
    ) -> None:
        dataset = group.dataset
        call = build_call(group.method, variant, dataset.rows)
        clients, streams = split_concurrency(level)
        point = Point(
            dataset.label,
            dataset.rows,
            group.server,
            call.name,
            variant,
            group.workers,
            level,
            clients,
            streams,
        )
        body = self.tmp / f"{call.name}-{variant or 'x'}.bin".replace(" ", "-")
        raw, error = sample(port, call, token)
        if raw is None or error:
            raise RuntimeError(f"{call.title} on {dataset.label} fails before load: {error}")
        frame = 5 + len(raw)
        body.write_bytes(b"\x00" + len(call.body).to_bytes(4, "big") + call.body)
        audited = group.server == "credbroker" and call.name in ("AccessCredentials", HTTP_GET)
        audit_method = HTTP_AUDIT_METHOD if call.http else SERVICE + "AccessCredentials"
        mark = audit_mark(dataset.dsn) if audited else 0
        metrics_before = scrape(metrics_port)

        point.waited_s = self.wait_for_quiet()
        warm = h2load(self.h2load, port, call, token, level, self.args.warmup, body, None)
        tree = server.tree()
        pg = postgres_processes(dataset.database)
        cpu0, pg0 = cpu_seconds(tree), cpu_seconds(pg)
        system0 = psutil.cpu_times()
        server.start_sampling()
        result = h2load(
            self.h2load, port, call, token, level, self.args.duration, body, self.tmp / "h2load.log"
        )
        peak, peak_total = server.stop_sampling()
        cpu1, pg1 = cpu_seconds(server.tree()), cpu_seconds(pg)
        system1 = psutil.cpu_times()
        raw_after, error_after = sample(port, call, token)

        n = max(result.requests, 1)
        lat = sorted(result.latencies_us)
        point.duration_s = result.seconds
        point.requests = result.requests
        point.rps = result.rps
        point.latency_ms = {
            "p50": percentile(lat, 50) / 1000,
            "p99": percentile(lat, 99) / 1000,
            "p99.9": percentile(lat, 99.9) / 1000,
            "mean": (sum(lat) / len(lat) / 1000) if lat else float("nan"),
            "max": (lat[-1] / 1000) if lat else float("nan"),
        }
        server_cpu = cpu_delta(cpu0, cpu1)
        point.server_cpu_ms_per_req = 1000 * server_cpu / n
        point.server_cpu_cores = server_cpu / max(result.seconds, 1e-9)
        point.db_cpu_ms_per_req = 1000 * cpu_delta(pg0, pg1) / n
        point.client_cpu_ms_per_req = 1000 * result.client_cpu_s / n
        busy = _busy(system1) - _busy(system0)
        ours = server_cpu + cpu_delta(pg0, pg1) + result.client_cpu_s
        point.other_cores = max(0.0, busy - ours) / max(result.seconds, 1e-9)
        point.peak_rss_mb, point.peak_rss_total_mb = peak, peak_total
        point.vm_hwm_mb = max(server.vm_hwm().values(), default=0.0)
        point.processes = len(tree)

        # Correctness: h2load sees HTTP 200 for gRPC errors too, so count what it cannot.
        checks: dict[str, Any] = {"response_frame_bytes": frame}
        short = {}
        for label, run in (("warmup", warm), ("measured", result)):
            if call.http:  # bodies vary in size (timestamps); HTTP has real status codes
                short[label] = run.not_2xx + run.failed
                continue
            missing = run.requests * frame - run.data_bytes
            short[label] = max(0, math.ceil(missing / frame))
            if run.failed:
                short[label] += run.failed
        checks["responses_without_message"] = short
        checks["latency_samples"] = len(lat)
        checks["sample_after"] = error_after or ("OK" if raw_after is not None else "failed")
        errors = sum(short.values()) + (0 if error_after is None else 1)
        if audited:
            ok_rows, other_rows = audit_since(dataset.dsn, mark, audit_method)
            expected = warm.requests + result.requests + 2
            checks["audit_ok_rows"] = ok_rows
            checks["audit_other_rows"] = other_rows
            checks["audit_expected_at_least"] = expected
            errors += other_rows + max(0, expected - ok_rows)
        counted = metrics_delta(
            metrics_before, scrape(metrics_port), HTTP_AUDIT_METHOD if call.http else call.name
        )
        if counted is not None:
            checks["metrics"] = counted
            by_code = counted["rpcs_by_code"]
            if by_code:
                errors += int(sum(v for code, v in by_code.items() if code != "OK"))
        point.errors = errors
        point.checks = checks
        self.points.append(point)
        log(
            f"  {dataset.label:>4} {call.title:<30} w{group.workers} c{level:<3} "
            f"{point.rps:>8.0f} req/s  p50 {point.latency_ms['p50']:6.2f}  "
            f"p99 {point.latency_ms['p99']:6.2f}  p99.9 {point.latency_ms['p99.9']:6.2f} ms  "
            f"cpu {point.server_cpu_ms_per_req:.3f} ms/req ({point.server_cpu_cores:.2f} cores)  "
            f"db {point.db_cpu_ms_per_req:.3f}  rss {point.peak_rss_mb:.0f} MB"
            + (f"  ERRORS {errors}" if errors else "")
        )

    def run_stability(self, group: Group, server: Server, port: int, token: str | None) -> None:
        """``group.stability`` consecutive runs of the same load on one server, nothing between
        them but the quiet wait: how steady the throughput is. Each run opens new h2load
        connections, which the kernel spreads over the workers (SO_REUSEPORT hashes each
        connection), so the split per run is recorded too."""
        dataset = group.dataset
        call = build_call(group.method, "", dataset.rows)
        level = STABILITY_LEVEL
        raw, error = sample(port, call, token)
        if raw is None or error:
            raise RuntimeError(f"{call.title} fails before the stability runs: {error}")
        frame = 5 + len(raw)
        body = self.tmp / "stability.bin"
        body.write_bytes(b"\x00" + len(call.body).to_bytes(4, "big") + call.body)
        h2load(self.h2load, port, call, token, level, self.args.warmup, body, None)
        runs = []
        for index in range(group.stability):
            waited = self.wait_for_quiet()
            split: list[int] = []
            sampler = threading.Timer(
                min(1.5, self.args.stability_seconds / 2),
                lambda into=split: into.extend(connections_per_worker(server, port)),
            )
            system0 = psutil.cpu_times()
            cpu0 = cpu_seconds(server.tree())
            sampler.start()
            result = h2load(
                self.h2load, port, call, token, level, self.args.stability_seconds, body, None
            )
            sampler.join()
            system1 = psutil.cpu_times()
            server_cpu = cpu_delta(cpu0, cpu_seconds(server.tree()))
            busy = _busy(system1) - _busy(system0)
            # PostgreSQL and h2load are not separated out here: "other" is an upper bound.
            other = max(0.0, busy - server_cpu - result.client_cpu_s) / max(result.seconds, 1e-9)
            short = max(0, math.ceil((result.requests * frame - result.data_bytes) / frame))
            runs.append(
                {
                    "run": index + 1,
                    "rps": result.rps,
                    "requests": result.requests,
                    "errors": short + result.failed + result.not_2xx,
                    "connections_per_worker": sorted(split, reverse=True),
                    "server_cpu_ms_per_req": 1000 * server_cpu / max(result.requests, 1),
                    "other_cores_upper_bound": other,
                    "waited_s": waited,
                }
            )
            log(
                f"  stability run {index + 1}/{group.stability}: {result.rps:8.0f} req/s, "
                f"connections per worker {sorted(split, reverse=True)}"
            )
        _, error_after = sample(port, call, token)
        rates = sorted(r["rps"] for r in runs)
        median = statistics.median(rates)
        self.stability = {
            "method": group.method,
            "workers": group.workers,
            "concurrency": level,
            "seconds_per_run": self.args.stability_seconds,
            "runs": runs,
            "median_rps": median,
            "slowest_rps": rates[0],
            "slowest_over_median": rates[0] / median if median else float("nan"),
            "errors": sum(r["errors"] for r in runs) + (0 if error_after is None else 1),
        }
        log(
            f"  stability: slowest {rates[0]:.0f} / median {median:.0f} req/s = "
            f"{self.stability['slowest_over_median']:.2f}"
        )

    def random_probe(self, group: Group, port: int, token: str | None) -> None:
        """Sequential AccessCredentials calls on random connections with the Python client: the
        latency of cold rows, which the one-request h2load body cannot show."""
        from credbroker.v1 import connection_service_pb2 as pb
        from credbroker.v1 import connection_service_pb2_grpc as pb_grpc

        rng = random.Random(7)
        metadata = (("authorization", f"Bearer {token}"),)
        durations = []
        failures = 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ConnectionServiceStub(channel)
            for i in range(group.probe + 50):
                n = rng.randrange(group.dataset.rows)
                request = pb.AccessCredentialsRequest(
                    integration_id=seed.INTEGRATION_ID, connection_id=seed.connection_id(n)
                )
                started = time.perf_counter_ns()
                try:
                    reply = stub.AccessCredentials(request, metadata=metadata, timeout=10)
                    ok = reply.credentials.api_key.api_key == seed.api_key(n)
                except grpc.RpcError:
                    ok = False
                elapsed = (time.perf_counter_ns() - started) // 1000
                failures += not ok
                if i >= 50:  # the first 50 warm the channel
                    durations.append(elapsed)
        durations.sort()
        probe = {
            "dataset": group.dataset.label,
            "rows": group.dataset.rows,
            "calls": len(durations),
            "failures": failures,
            "p50_ms": percentile(durations, 50) / 1000,
            "p99_ms": percentile(durations, 99) / 1000,
        }
        self.probes.append(probe)
        log(
            f"  {group.dataset.label:>4} random-key probe (Python client, 1 in flight): "
            f"p50 {probe['p50_ms']:.2f} ms, p99 {probe['p99_ms']:.2f} ms, {failures} failures"
        )

    def run_profile(
        self, group: Group, server: Server, port: int, token: str | None, level: int
    ) -> None:
        py_spy = shutil.which("py-spy") or str(BIN / "py-spy")
        if not Path(py_spy).exists():
            log("  --profile: py-spy not installed (pip install py-spy); skipped")
            return
        call = build_call(group.method, "", group.dataset.rows)
        body = self.tmp / "profile.bin"
        body.write_bytes(b"\x00" + len(call.body).to_bytes(4, "big") + call.body)
        out = self.tmp / "profile.raw"
        seconds = self.args.duration
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--format",
                "raw",
                "--rate",
                "250",
                *(["--native"] if self.args.profile_native else []),
                *(["--gil"] if self.args.profile_gil else []),
                "--subprocesses",
                "--duration",
                str(int(seconds)),
                "--output",
                str(out),
                "--pid",
                str(server.root.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        result = h2load(self.h2load, port, call, token, level, seconds, body, None)
        _, err = spy.communicate(timeout=seconds + 60)
        if not out.exists():
            log(f"  --profile: py-spy failed: {err.decode(errors='replace')[-500:]}")
            return
        self.profile = summarize_profile(out.read_text(), group.method, level, result.rps)
        stamp = self.args.stamp
        (self.args.out / f"{stamp}-profile.txt").write_text(self.profile.pop("text"))
        shutil.copy(out, DATA / "profile-latest.raw")
        log(f"  profile written: {self.args.out / (stamp + '-profile.txt')}")


_PACKAGES = (  # (where the leaf frame's file is, what to call that share of the samples)
    ("credbroker/", "credbroker code"),
    ("asyncpg/", "asyncpg"),
    ("grpc/", "grpc (Python and Cython layer)"),
    ("structlog/", "logging (structlog)"),
    ("logging/", "logging (structlog)"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("cachetools/", "cachetools"),
    ("cryptography/", "cryptography"),
    ("google/protobuf", "protobuf"),
    ("_message", "protobuf"),
    ("asyncio/runners.py", "event loop and grpc core (native code under the loop)"),
    ("loop.c", "event loop and grpc core (native code under the loop)"),
    ("asyncio/", "asyncio (Python)"),
    ("threading.py", "grpc completion-queue poller thread (Cython, frames not visible)"),
    ("socketserver.py", "metrics HTTP server thread (waiting in poll)"),
    ("selectors.py", "metrics HTTP server thread (waiting in poll)"),
    ("libc.so", "system calls (libc)"),
)


def _package(frame: str) -> str:
    location = frame[frame.rfind("(") + 1 :]
    for needle, name in _PACKAGES:
        if needle in location:
            return name
    return "other Python (stdlib, uuid, json, ...)"


def summarize_profile(raw: str, method: str, level: int, rps: float) -> dict[str, Any]:
    """Self and inclusive time per function, and self time per package, from py-spy's
    collapsed stacks."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    packages: dict[str, int] = {}
    loop_packages: dict[str, int] = {}
    total = loop_total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        while frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
        package = _package(frames[-1])
        packages[package] = packages.get(package, 0) + count
        if any(frame.startswith("Runner.run ") for frame in frames):
            loop_total += count
            loop_packages[package] = loop_packages.get(package, 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count

    def top(table: dict[str, int], n: int, of: int = 0) -> list[tuple[float, str]]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:n]
        return [(round(100 * c / max(of or total, 1), 1), name) for name, c in ranked]

    self_top, inclusive_top, package_top = top(self_time, 30), top(inclusive, 60), top(packages, 20)
    loop_top = top(loop_packages, 20, loop_total)
    lines = [
        f"py-spy, {method} at {level} in flight ({rps:.0f} req/s during the profile), "
        f"{total} samples of busy threads",
        "",
        f"Event-loop thread only ({loop_total} samples), self time by package:",
    ]
    lines += [f"  {pct:5.1f}%  {name}" for pct, name in loop_top]
    lines += ["", "All threads, self time by package (% of samples, by the innermost frame):"]
    lines += [f"  {pct:5.1f}%  {name}" for pct, name in package_top]
    lines += ["", "Self time (% of samples):"]
    lines += [f"  {pct:5.1f}%  {name}" for pct, name in self_top]
    lines += ["", "Inclusive time (% of samples):"]
    lines += [f"  {pct:5.1f}%  {name}" for pct, name in inclusive_top]
    return {
        "method": method,
        "concurrency": level,
        "samples": total,
        "rps": rps,
        "packages": package_top,
        "loop_samples": loop_total,
        "loop_packages": loop_top,
        "self": self_top,
        "inclusive": inclusive_top,
        "text": "\n".join(lines) + "\n",
    }


# --- report ------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name, command in (("h2load", ["h2load", "--version"]),):
        with contextlib.suppress(OSError):
            versions[name] = subprocess.run(command, capture_output=True, text=True).stdout.strip()
    for package in ("grpcio", "protobuf", "asyncpg", "cryptography", "uvloop"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": _commit(),
        "load_avg_at_start": os.getloadavg(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def _commit() -> str | None:
    """The checked-out commit, read from .git without running git (a worktree's .git is a file
    naming its git directory; refs live in the common directory)."""
    git = ROOT / ".git"
    common = git
    with contextlib.suppress(OSError):
        if git.is_file():
            git = Path(git.read_text().split(":", 1)[1].strip())
            common = git
            if (git / "commondir").exists():
                common = (git / (git / "commondir").read_text().strip()).resolve()
    head = git / "HEAD"
    with contextlib.suppress(OSError):
        text = head.read_text().strip()
        if not text.startswith("ref: "):
            return text
        ref = text[5:]
        for base in (git, common):
            loose = base / ref
            if loose.exists():
                return loose.read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None


def _find(points: list[Point], **want: Any) -> Point | None:
    for point in points:
        if all(getattr(point, k) == v for k, v in want.items()):
            return point
    return None


def evaluate_targets(
    points: list[Point],
    small: str,
    big: str | None,
    has_workers: bool,
    stability: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, detail: str, *, info: bool = False) -> None:
        targets.append({"target": name, "met": met, "detail": detail, "info": info})

    ac64 = _find(points, dataset=small, method="AccessCredentials", concurrency=64, workers=1)
    noop64 = _find(points, dataset=small, method="noop", concurrency=64, workers=1)
    if ac64 and noop64:
        ratio = ac64.rps / noop64.rps
        add(
            "AccessCredentials throughput at 64 in flight >= 60% of the no-op ceiling "
            "(one worker; stretch 80%)",
            ratio >= 0.60,
            f"{ac64.rps:.0f} vs {noop64.rps:.0f} req/s = {100 * ratio:.0f}%"
            + (" (stretch met)" if ratio >= 0.80 else ""),
        )
    ac64w2 = _find(points, dataset=small, method="AccessCredentials", concurrency=64, workers=2)
    noop64w2 = _find(points, dataset=small, method="noop", concurrency=64, workers=2)
    if ac64w2 and noop64w2:
        ratio = ac64w2.rps / noop64w2.rps
        add(
            "AccessCredentials throughput at 64 in flight >= 60% of the no-op ceiling "
            "(two workers)",
            ratio >= 0.60,
            f"{ac64w2.rps:.0f} vs {noop64w2.rps:.0f} req/s = {100 * ratio:.0f}%",
        )
    if stability:
        splits = ", ".join(
            f"{r['rps']:.0f} {r['connections_per_worker']}" for r in stability["runs"]
        )
        add(
            f"stability: slowest of {len(stability['runs'])} consecutive AccessCredentials runs "
            f"(two workers, {stability['concurrency']} in flight, "
            f"{stability['seconds_per_run']:g} s each, one server) >= 0.85x their median",
            stability["slowest_over_median"] >= 0.85,
            f"{stability['slowest_rps']:.0f} / {stability['median_rps']:.0f} req/s = "
            f"{stability['slowest_over_median']:.2f}; runs (req/s [connections per worker]): "
            + splits,
        )
    http64 = _find(points, dataset=small, method=HTTP_GET, concurrency=64, workers=1)
    http_noop64 = _find(points, dataset=small, method=HTTP_NOOP, concurrency=64, workers=1)
    if http64 and http_noop64:
        versus = f" (AccessCredentials {ac64.rps:.0f} req/s)" if ac64 else ""
        add(
            "GET /connections/{id} over HTTP/1.1 at 64 connections >= 50% of the HTTP no-op",
            http64.rps / http_noop64.rps >= 0.5,
            f"{http64.rps:.0f} vs {http_noop64.rps:.0f} req/s = "
            f"{100 * http64.rps / http_noop64.rps:.0f}%{versus}",
        )
    details, met = [], True
    for method in ("AccessCredentials", "GetConnection"):
        p = _find(points, dataset=small, method=method, variant="", concurrency=16, workers=1)
        if p is None:
            p = _find(
                points,
                dataset=small,
                method=method,
                variant="first page",
                concurrency=16,
                workers=1,
            )
        if p:
            met &= p.latency_ms["p99"] < 5.0
            details.append(f"{method} {p.latency_ms['p99']:.2f} ms")
    if details:
        add(
            "p99 at 16 in flight < 5 ms (AccessCredentials, GetConnection)", met, ", ".join(details)
        )
    pages = _find(
        points,
        dataset=small,
        method="ListConnections",
        variant="first page",
        concurrency=16,
        workers=1,
    )
    if pages:
        add(
            "ListConnections p99 at 16 in flight (50 per page; reported)",
            None,
            f"{pages.latency_ms['p99']:.2f} ms",
            info=True,
        )
    if big:
        details, met, seen = [], True, False
        for level in (16, 64):
            a = _find(
                points, dataset=small, method="AccessCredentials", concurrency=level, workers=1
            )
            b = _find(points, dataset=big, method="AccessCredentials", concurrency=level, workers=1)
            if a and b:
                seen = True
                for q in ("p50", "p99"):
                    ratio = b.latency_ms[q] / a.latency_ms[q]
                    met &= ratio <= 1.2
                    details.append(
                        f"{q}@{level}: {b.latency_ms[q]:.2f} vs "
                        f"{a.latency_ms[q]:.2f} ms = {ratio:.2f}x"
                    )
        if seen:
            add(
                f"AccessCredentials latency with {big} connections within 1.2x of {small}",
                met,
                "; ".join(details),
            )
    for dataset in filter(None, (small, big)):
        first = _find(
            points, dataset=dataset, method="ListConnections", variant="first page", concurrency=16
        )
        deep = _find(
            points, dataset=dataset, method="ListConnections", variant="deep page", concurrency=16
        )
        if first and deep:
            r50 = deep.latency_ms["p50"] / first.latency_ms["p50"]
            r99 = deep.latency_ms["p99"] / first.latency_ms["p99"]
            add(
                f"ListConnections page time independent of depth ({dataset}, 16 in flight; "
                "deep/first within 1.2x)",
                r50 <= 1.2 and r99 <= 1.2,
                f"p50 {deep.latency_ms['p50']:.2f} vs {first.latency_ms['p50']:.2f} ms "
                f"({r50:.2f}x), p99 {deep.latency_ms['p99']:.2f} vs "
                f"{first.latency_ms['p99']:.2f} ms ({r99:.2f}x)",
            )
    at256 = [p for p in points if p.server == "credbroker" and p.concurrency == 256]
    if at256:
        worst = max(at256, key=lambda p: p.vm_hwm_mb)
        add(
            "peak RSS per server process < 150 MB at 256 in flight",
            worst.vm_hwm_mb < 150,
            f"largest VmHWM {worst.vm_hwm_mb:.0f} MB ({worst.method}); "
            + ", ".join(f"{p.method} {p.vm_hwm_mb:.0f}" for p in at256),
        )
    w1 = _find(points, dataset=small, method="AccessCredentials", concurrency=64, workers=1)
    w2 = _find(points, dataset=small, method="AccessCredentials", concurrency=64, workers=2)
    n1 = _find(points, dataset=small, method="noop", concurrency=64, workers=1)
    n2 = _find(points, dataset=small, method="noop", concurrency=64, workers=2)
    if w1 and w2:
        detail = (
            f"AccessCredentials at 64: {w1.rps:.0f} -> {w2.rps:.0f} req/s = {w2.rps / w1.rps:.2f}x"
        )
        if n1 and n2:
            detail += f" (no-op ceiling {n1.rps:.0f} -> {n2.rps:.0f} = {n2.rps / n1.rps:.2f}x)"
        add(
            "scaling from 1 to 2 workers (reported; > 1.0x counts as scaling)",
            w2.rps > w1.rps,
            detail,
        )
    elif not has_workers:
        add(
            "scaling from 1 to 2 workers",
            None,
            "not measured: `credbroker serve --help` lists no --workers",
        )
    return targets


def _fmt(value: float, digits: int = 2) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def markdown(report: dict[str, Any], points: list[Point]) -> str:
    m = report["machine"]
    cfg = report["config"]
    lines = [
        f"# credbroker benchmark, {report['timestamp']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, {m['os']}, "
        f"kernel {m['kernel']}, Python {m['python']}, grpcio {m['versions'].get('grpcio')}, "
        f"PostgreSQL {report['postgres']}. Load average at start: "
        f"{', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}. Commit: `{m['commit']}`.",
        "",
        f"Load generator: {m['versions'].get('h2load', 'h2load')} (one thread, pre-encoded gRPC "
        f"frame, C connections x M streams). {cfg['warmup_s']:g} s warm-up + "
        f"{cfg['duration_s']:g} s per point; server, PostgreSQL and h2load share the machine. "
        f"Server: {report['server']['loop']} event loop; "
        f"`--workers` {'supported' if report['server']['workers_flag'] else 'not available'}; "
        f"metrics endpoint {'scraped' if report['server']['metrics_flag'] else 'not available'}.",
        "",
        "Latencies in ms (h2load per-request log). CPU in ms per request (server = every "
        "process of the server; PG = PostgreSQL backends of the bench database and its "
        "auxiliary processes; h2load = the load generator). RSS = largest resident size of one "
        "server process sampled during the point. `vs no-op` = the same figure for the no-op "
        "RPC on the same server stack at the same concurrency and process count. `other load` "
        "= cores used meanwhile by everything else on the machine; above "
        f"{NOISY_CORES} the point is marked noisy: its figures are low by an unknown amount.",
        "",
    ]
    noop = {
        (p.method, p.workers, p.concurrency): p for p in points if p.method in ("noop", HTTP_NOOP)
    }
    for dataset in dict.fromkeys(p.dataset for p in points):
        rows = next(p.rows for p in points if p.dataset == dataset)
        lines += [
            f"## {rows:,} connections ({dataset})",
            "",
            "| method | workers | in flight | req/s | vs no-op | p50 | p99 | p99.9 | "
            "p99 vs no-op | server CPU | PG CPU | h2load CPU | server cores busy | "
            "RSS MB | other load | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in points:
            if p.dataset != dataset:
                continue
            ceiling = HTTP_NOOP if p.method in HTTP_METHODS else "noop"
            base = noop.get((ceiling, p.workers, p.concurrency))
            rel = p.rps / base.rps if base and p.method != ceiling else None
            rel99 = (
                p.latency_ms["p99"] / base.latency_ms["p99"]
                if base and p.method != ceiling
                else None
            )
            title = f"{p.method} ({p.variant})" if p.variant else p.method
            lines.append(
                f"| {title} | {p.workers} | {p.concurrency} | {p.rps:,.0f} | "
                f"{_fmt(rel * 100, 0) + '%' if rel else '—'} | {_fmt(p.latency_ms['p50'])} | "
                f"{_fmt(p.latency_ms['p99'])} | {_fmt(p.latency_ms['p99.9'])} | "
                f"{_fmt(rel99, 1) + 'x' if rel99 else '—'} | {p.server_cpu_ms_per_req:.3f} | "
                f"{p.db_cpu_ms_per_req:.3f} | {p.client_cpu_ms_per_req:.3f} | "
                f"{p.server_cpu_cores:.2f} | {p.peak_rss_mb:.0f} | {p.other_cores:.2f}"
                f"{' (noisy)' if p.other_cores > NOISY_CORES else ''} | {p.errors} |"
            )
        lines.append("")
    if report["probes"]:
        lines += [
            "## Random rows (Python client, 1 in flight)",
            "",
            "Every h2load request of a point names the same connection. These sequential "
            "calls name a random connection each (gRPC Python client, so a few hundred "
            "µs of client time are included).",
            "",
            "| dataset | calls | p50 ms | p99 ms | failures |",
            "|---|---:|---:|---:|---:|",
        ]
        for probe in report["probes"]:
            lines.append(
                f"| {probe['rows']:,} | {probe['calls']} | {probe['p50_ms']:.2f} | "
                f"{probe['p99_ms']:.2f} | {probe['failures']} |"
            )
        lines.append("")
    if report.get("stability"):
        st = report["stability"]
        lines += [
            f"## Stability ({st['method']}, {st['workers']} workers, {st['concurrency']} in "
            f"flight, {len(st['runs'])} consecutive {st['seconds_per_run']:g} s runs, one server)",
            "",
            "Each run opens new connections, which the kernel spreads over the workers "
            "(SO_REUSEPORT hashes each one): the split is sampled during each run.",
            "",
            "| run | req/s | vs median | connections per worker | server CPU ms/req | "
            "other load (upper bound) | errors |",
            "|---:|---:|---:|---|---:|---:|---:|",
        ]
        for r in st["runs"]:
            lines.append(
                f"| {r['run']} | {r['rps']:,.0f} | {r['rps'] / st['median_rps']:.2f} | "
                f"{' / '.join(map(str, r['connections_per_worker'])) or '?'} | "
                f"{r['server_cpu_ms_per_req']:.3f} | {r['other_cores_upper_bound']:.2f} | "
                f"{r['errors']} |"
            )
        lines += [
            "",
            f"Slowest / median: {st['slowest_rps']:,.0f} / {st['median_rps']:,.0f} req/s = "
            f"**{st['slowest_over_median']:.2f}**.",
            "",
        ]
    lines += ["## Targets", ""]
    for t in report["targets"]:
        verdict = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        if t.get("info"):
            verdict = "measured"
        lines.append(f"- {t['target']}: {verdict} — {t['detail']}")
    lines.append("")
    if report.get("profile"):
        prof = report["profile"]
        lines += [
            f"## Where {prof['method']} spends its time ({prof['concurrency']} in flight, "
            f"py-spy, {prof['samples']} samples)",
            "",
            "Event-loop thread, self time by package (innermost frame of each sample):",
            "",
        ]
        lines += [f"- {pct:.1f}% {name}" for pct, name in prof["loop_packages"]]
        lines += ["", "All threads, self time by package:", ""]
        lines += [f"- {pct:.1f}% {name}" for pct, name in prof["packages"]]
        lines += ["", "Self time by function:", ""]
        lines += [f"- {pct:.1f}% `{name}`" for pct, name in prof["self"][:15]]
        lines += ["", "Inclusive time:", ""]
        lines += [f"- {pct:.1f}% `{name}`" for pct, name in prof["inclusive"][:25]]
        lines.append("")
    lines += [
        "## Checks",
        "",
        "Each point: a Python gRPC call of the same request before and after the load "
        "(status OK and the expected content); response DATA bytes equal to requests x "
        "the response frame size (a gRPC error carries no message); for AccessCredentials "
        "one OK audit row per request and no other audit row (HTTP points: every answer "
        "2xx, the content of a urllib call before and after, the same audit check for "
        "GET /connections/{id})"
        + (
            "; non-OK status counters of the metrics endpoint"
            if report["server"]["metrics_flag"]
            else ""
        )
        + ". `errors` counts every shortfall; it is 0 when everything was answered OK.",
        "",
    ]
    return "\n".join(lines)


def plot(points: list[Point], small: str, paths: list[Path]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[str, list[Point]] = {}
    for p in points:
        headline = p.dataset == small and p.variant in ("", "first page")
        if p.workers != 1 and p.variant == "":
            series.setdefault(f"{p.method} ({p.dataset}, {p.workers} workers)", []).append(p)
        elif p.workers == 1 and (
            headline or (p.dataset != small and p.method == "AccessCredentials")
        ):
            series.setdefault(f"{p.method} ({p.dataset})", []).append(p)
    for name, pts in series.items():
        pts.sort(key=lambda p: p.concurrency)
        xs = [p.concurrency for p in pts]
        style = "--" if name.startswith("noop") else "-"
        marker = "s" if "workers" in name else "o"
        left.plot(xs, [p.rps for p in pts], style, marker=marker, label=name)
        right.plot(xs, [p.latency_ms["p99"] for p in pts], style, marker=marker, label=name)
    for axis, title, unit in ((left, "Throughput", "requests/s"), (right, "p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 16, 64, 256])
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel("requests in flight")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="credbroker benchmark (make bench)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 s points, 1,000/10,000 rows, results in bench/data/quick",
    )
    parser.add_argument("--small", type=int, default=1000, help="rows of the small dataset")
    parser.add_argument(
        "--big", type=int, default=1_000_000, help="rows of the big dataset (0 skips it)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per point")
    parser.add_argument("--levels", default="1,16,64,256", help="requests in flight")
    parser.add_argument(
        "--probe",
        type=int,
        default=1000,
        help="random-row AccessCredentials calls per dataset (0: none)",
    )
    parser.add_argument(
        "--methods",
        default=f"noop,AccessCredentials,GetConnection,ListConnections,{HTTP_NOOP},{HTTP_GET}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile a method (--profile-method) at 64 in flight with py-spy",
    )
    parser.add_argument(
        "--profile-method",
        default="AccessCredentials",
        help="the method --profile profiles (at 64 in flight, small dataset)",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (py-spy --gil)",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile: include native frames (grpc core, uvloop, OpenSSL)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="seconds a point may wait for other work on the machine to settle",
    )
    parser.add_argument(
        "--quiet-budget", type=float, default=120.0, help="total seconds of such waits per run"
    )
    parser.add_argument(
        "--stability-runs",
        type=int,
        default=8,
        help="consecutive AccessCredentials runs at 64 in flight on one 2-worker server (0: none)",
    )
    parser.add_argument(
        "--stability-seconds", type=float, default=6.0, help="seconds per stability run"
    )
    parser.add_argument("--reseed", action="store_true", help="seed again even if present")
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install nghttp2-client when h2load is missing",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL server (any database; bench databases are created beside it)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 1.0)
        args.big = 10_000 if args.big == 1_000_000 else args.big
        args.probe = min(args.probe, 200)
        args.stability_runs = min(args.stability_runs, 3)
        args.stability_seconds = min(args.stability_seconds, 2.0)
    args.out = args.out or (DATA / "quick" if args.quick else RESULTS)
    args.levels = [int(x) for x in args.levels.split(",")]
    args.methods = args.methods.split(",")
    args.stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return args


def plan(bench: Bench, small: seed.Dataset, big: seed.Dataset | None) -> list[Group]:
    args = bench.args
    levels = sorted(args.levels)
    mid = [x for x in levels if x in (16, 64)] or levels[:2]
    groups = []
    for method in args.methods:
        if method in HTTP_METHODS:
            continue  # below: 64 keep-alive connections only
        server = "noop" if method == "noop" else "credbroker"
        points = [("first page" if method == "ListConnections" else "", lv) for lv in levels]
        if method == "ListConnections" and 16 in levels:
            points.append(("deep page", 16))
        groups.append(
            Group(
                small,
                server,
                method,
                1,
                points,
                probe=args.probe if method == "AccessCredentials" else 0,
            )
        )
    if big is not None:
        if "AccessCredentials" in args.methods:
            groups.append(
                Group(
                    big,
                    "credbroker",
                    "AccessCredentials",
                    1,
                    [("", lv) for lv in mid],
                    probe=args.probe,
                )
            )
        if "ListConnections" in args.methods:
            groups.append(
                Group(
                    big, "credbroker", "ListConnections", 1, [("first page", 16), ("deep page", 16)]
                )
            )
    if bench.has_http and 64 in levels:
        for method in (HTTP_NOOP, HTTP_GET):
            if method in args.methods:
                server = HTTP_NOOP if method == HTTP_NOOP else "credbroker"
                groups.append(Group(small, server, method, 1, [("", 64)]))
    if bench.has_workers and 64 in levels:
        for method in ("noop", "AccessCredentials"):
            if method in args.methods:
                groups.append(
                    Group(
                        small, "noop" if method == "noop" else "credbroker", method, 2, [("", 64)]
                    )
                )
    if bench.has_workers and args.stability_runs and "AccessCredentials" in args.methods:
        groups.append(
            Group(small, "credbroker", "AccessCredentials", 2, [], stability=args.stability_runs)
        )
    return groups


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    DATA.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    log(
        f"h2load: {bench.h2load}; server flags: workers={bench.has_workers}, "
        f"metrics={bench.has_metrics}"
    )
    small = asyncio.run(
        seed.ensure_dataset(
            args.dsn, args.small, bench.keyring_file, bench.credbroker, reseed=args.reseed
        )
    )
    big = None
    if args.big:
        big = asyncio.run(
            seed.ensure_dataset(
                args.dsn, args.big, bench.keyring_file, bench.credbroker, reseed=args.reseed
            )
        )
    for dataset in filter(None, (small, big)):
        sql(dataset.dsn, "TRUNCATE audit_events")  # bench databases only: same start every run
    groups = plan(bench, small, big)
    # A real server runs first: the no-op server copies its event loop (and process count).
    real = [g for g in groups if g.server == "credbroker"]
    if real and groups[0].server == "noop":
        groups.remove(real[0])
        groups.insert(0, real[0])
    for group in groups:
        bench.run_group(group)
    # Report in a stable order: no-op first, then methods as listed, then big, then workers.
    order = {m: i for i, m in enumerate(args.methods)}
    variants = {"": 0, "first page": 1, "deep page": 2}
    bench.points.sort(
        key=lambda p: (
            p.workers,
            p.rows,
            order.get(p.method, 99),
            variants.get(p.variant, 3),
            p.concurrency,
        )
    )
    postgres = sql(small.dsn, "SHOW server_version")["server_version"]
    report = {
        "version": 1,
        "timestamp": args.stamp,
        "quick": args.quick,
        "machine": machine_info(),
        "postgres": postgres,
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "levels": args.levels,
            "page_size": PAGE_SIZE,
            "deep_page_offset_from_end": DEEP_OFFSET,
            "datasets": {
                d.label: {
                    "rows": d.rows,
                    "database": d.database,
                    "seeded_now": d.seeded_now,
                    "seed_seconds": round(d.seed_seconds, 1),
                }
                for d in filter(None, (small, big))
            },
            "load_generator": "h2load (nghttp2-client), 1 thread, -c connections x -m "
            "streams, pre-encoded gRPC frame",
        },
        "server": {
            "loop": bench.loop_kind,
            "workers_flag": bench.has_workers,
            "metrics_flag": bench.has_metrics,
            "starts": bench.servers,
            "env": {
                k: v
                for k, v in bench.server_env(small).items()
                if k.startswith("CREDBROKER_") and k != "CREDBROKER_DATABASE_URL"
            },
        },
        "points": [asdict(p) for p in bench.points],
        "probes": bench.probes,
        "stability": bench.stability,
        "targets": evaluate_targets(
            bench.points,
            small.label,
            big.label if big else None,
            bench.has_workers,
            bench.stability,
        ),
        "profile": bench.profile,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    stem = args.out / args.stamp
    text = json.dumps(report, indent=2, default=str) + "\n"
    md = markdown(report, bench.points)
    stem.with_suffix(".json").write_text(text)
    stem.with_suffix(".md").write_text(md)
    (args.out / "latest.json").write_text(text)
    (args.out / "latest.md").write_text(md)
    plot(bench.points, small.label, [stem.with_suffix(".png"), args.out / "latest.png"])
    shutil.rmtree(bench.tmp, ignore_errors=True)
    print(md)
    log(f"done in {report['elapsed_s']:.0f}s: {stem}.json, .md, .png (and latest.*)")
    failed = [p for p in bench.points if p.errors]
    if bench.stability and bench.stability["errors"]:
        log(f"the stability runs saw {bench.stability['errors']} error(s)")
        return 1
    if failed:
        log(f"{len(failed)} point(s) saw errors: see the errors column")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
