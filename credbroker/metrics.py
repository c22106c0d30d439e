"""Prometheus metrics, served on a separate HTTP port (``--metrics-listen``).

With several worker processes, each writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
and the supervising process serves their aggregate (prometheus_client's multiprocess mode), so
the directory must be set before this module is imported; :func:`prepare_multiprocess` does it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Protocol

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
RPC_SECONDS = Histogram(
    "credbroker_rpc_duration_seconds",
    "RPC latency in the server, by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
