"""Call counts and latencies are recorded as plain numbers per call and published later: what
the metrics endpoint shows must be exactly what prometheus_client's own counter and histogram
updates would have shown (this also guards the histogram internals that publishing uses)."""

from __future__ import annotations

import itertools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from credbroker import metrics

_names = itertools.count()

# Bucket bounds themselves, values between them, below the first and above the last.
LATENCIES = [0.0, 0.0005, 0.0004, 0.001, 0.0011, 0.003, 0.01, 0.7, 2.5, 10.0, 11.0, 99.0]


def _reference(observations: list[tuple[str, float]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("credbroker_rpcs", "", ["method", "code"], registry=registry)
    histogram = Histogram(
        "credbroker_rpc_duration_seconds",
        "",
        ["method"],
        buckets=metrics.RPC_SECONDS_BUCKETS,
        registry=registry,
    )
    for code, seconds in observations:
        counter.labels("m", code).inc()
        histogram.labels("m").observe(seconds)
    return registry


def _samples(registry: CollectorRegistry, method: str) -> dict[tuple[str, str, str], float]:
    found = {}
    for family in registry.collect():
        if family.name not in ("credbroker_rpcs", "credbroker_rpc_duration_seconds"):
            continue
        for sample in family.samples:
            if sample.labels.get("method") != method or sample.name.endswith("_created"):
                continue
            key = (sample.name, sample.labels.get("code", ""), sample.labels.get("le", ""))
            found[key] = sample.value
    return found


def test_published_figures_equal_prometheus_own_updates() -> None:
    name = f"test-op-{next(_names)}"
    stats = metrics.CallStats(name)
    observations = [("OK", s) for s in LATENCIES] + [("NOT_FOUND", 0.002), ("OK", 0.02)]
    for code, seconds in observations[:5]:
        stats.record(code, seconds)
    metrics.publish_call_stats()
    metrics.publish_call_stats()  # nothing new: publishing again adds nothing
    for code, seconds in observations[5:]:
        stats.record(code, seconds)
    assert _samples(REGISTRY, name) != _samples(_reference(observations), "m")  # not yet
    metrics.publish_call_stats()
    published = _samples(REGISTRY, name)
    expected = _samples(_reference(observations), "m")
    assert published == expected
    assert published[("credbroker_rpcs_total", "OK", "")] == len(LATENCIES) + 1
    assert published[("credbroker_rpc_duration_seconds_bucket", "", "0.001")] == 4
    assert published[("credbroker_rpc_duration_seconds_bucket", "", "+Inf")] == len(observations)


def test_stats_of_a_finished_server_are_dropped() -> None:
    name = f"test-op-{next(_names)}"
    stats = metrics.CallStats(name)
    stats.record("OK", 0.001)
    assert stats in set(metrics._CALL_STATS)
    del stats
    assert all(s.name != name for s in metrics._CALL_STATS)
