"""Prometheus metrics, served on a separate HTTP port (``--metrics-listen``).

With several worker processes, each writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
and the supervising process serves their aggregate (prometheus_client's multiprocess mode), so
the directory must be set before this module is imported; :func:`prepare_multiprocess` does it.
"""

from __future__ import annotations

import bisect
import os
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

RPCS = Counter(
    "credbroker_rpcs_total", "RPCs handled, by method and status code", ["method", "code"]
)
RPC_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
RPC_SECONDS = Histogram(
    "credbroker_rpc_duration_seconds",
    "RPC latency in the server, by method",
    ["method"],
    buckets=RPC_SECONDS_BUCKETS,
)
POOL_CONNECTIONS = Gauge(
    "credbroker_db_pool_connections",
    "Database pool connections by state",
    ["state"],
    multiprocess_mode="livesum",
)
CACHE_LOOKUPS = Counter(
    "credbroker_cache_lookups_total", "Cache lookups by cache and result", ["cache", "result"]
)
AUDIT_BATCH = Histogram(
    "credbroker_audit_batch_records",
    "Audit records written per INSERT (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
VERIFICATIONS = Counter(
    "credbroker_verifications_total", "Credential checks against providers, by outcome", ["outcome"]
)
STORED_BLOBS = Gauge(
    "credbroker_stored_blobs",
    "Encrypted blobs per master key id (rotation progress)",
    ["key_id"],
    multiprocess_mode="mostrecent",
)


def prepare_multiprocess() -> str:
    """Creates the sample directory for worker processes; call before spawning them."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="credbroker-metrics-"
    )
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def serve_metrics(address: str, *, multiprocess_mode: bool) -> None:
    """Starts the HTTP endpoint (in a thread) on ``host:port``."""
    host, _, port = address.rpartition(":")
    if multiprocess_mode:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(int(port), addr=host, registry=registry)
    else:
        start_http_server(int(port), addr=host)


class HitCounts(Protocol):
    hits: int
    misses: int


def count_deltas(cache: str, stats: HitCounts) -> Callable[[], None]:
    """A sampler that publishes a cache's hit and miss growth since the previous call."""
    last = [0, 0]

    def sample() -> None:
        hits, misses = stats.hits, stats.misses
        CACHE_LOOKUPS.labels(cache, "hit").inc(hits - last[0])
        CACHE_LOOKUPS.labels(cache, "miss").inc(misses - last[1])
        last[:] = [hits, misses]

    return sample


class CallStats:
    """``credbroker_rpcs_total`` and ``credbroker_rpc_duration_seconds`` of one operation, kept
    as plain numbers on the hot path (:meth:`record`: a dict update and a bisect, about a tenth of
    a prometheus_client counter and histogram update, each of which takes a lock, and in
    multiprocess mode writes a memory-mapped file, on every call) and added to the Prometheus
    metrics by :func:`publish_call_stats`, which the server runs every few seconds and at
    shutdown. Only the event loop's thread records; publishing reads totals and remembers what it
    published, so it never loses a count."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.codes: dict[str, int] = {}
        self.buckets = [0] * (len(RPC_SECONDS_BUCKETS) + 1)  # the last one is +Inf
        self.seconds = 0.0
        self._published_codes: dict[str, int] = {}
        self._published_buckets = [0] * len(self.buckets)
        self._published_seconds = 0.0
        self._counters: dict[str, Any] = {}
        self._histogram: Any = None
        _CALL_STATS.add(self)

    def record(self, code: str, seconds: float) -> None:
        codes = self.codes
        codes[code] = codes.get(code, 0) + 1
        self.buckets[bisect.bisect_left(RPC_SECONDS_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def publish(self) -> None:
        for code, count in list(self.codes.items()):
            delta = count - self._published_codes.get(code, 0)
            if delta:
                counter = self._counters.get(code)
                if counter is None:
                    counter = self._counters[code] = RPCS.labels(self.name, code)
                counter.inc(delta)
                self._published_codes[code] = count
        buckets = list(self.buckets)
        if buckets == self._published_buckets:
            return
        if self._histogram is None:
            self._histogram = RPC_SECONDS.labels(self.name)
        # What Histogram.observe would have done for each call: its per-bucket values (not yet
        # cumulative) and its sum (prometheus_client >= 0.4; tests/unit/test_metrics.py checks
        # the exposition against observe()).
        for index, count in enumerate(buckets):
            delta = count - self._published_buckets[index]
            if delta:
                self._histogram._buckets[index].inc(delta)
        seconds = self.seconds
        self._histogram._sum.inc(seconds - self._published_seconds)
        self._published_buckets = buckets
        self._published_seconds = seconds


_CALL_STATS: weakref.WeakSet[CallStats] = weakref.WeakSet()
_PUBLISHING = threading.Lock()


def publish_call_stats() -> None:
    """Adds what every operation recorded since the previous call to the Prometheus metrics."""
    with _PUBLISHING:
        for stats in list(_CALL_STATS):
            stats.publish()
