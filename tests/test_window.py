"""The golden-signal window: counts, rates and percentiles of the last 60 s in fixed
memory, with a synthetic clock (no sleeping)."""

from __future__ import annotations

import random

import pytest

import meshlib
from conftest import BackendFactory
from meshlib._window import BUCKET_SECONDS, BUCKETS, Window


def test_counts_rate_and_success_over_the_window() -> None:
    window = Window(now=1000.0)
    for i in range(600):  # 10 per second for 60 s, every tenth one failing
        window.record(1000.0 + i / 10, ok=i % 10 != 0, latency_s=0.020)
    snap = window.snapshot(1059.95)  # the ring covers the last 55-60 s
    assert snap["requests"] == 600
    assert snap["success_rate"] == pytest.approx(0.9)
    assert snap["rps"] == pytest.approx(10.0, rel=0.1)
    assert snap["latency_ms"]["p50"] == pytest.approx(20.0, rel=0.1)


def test_old_buckets_fall_out_and_are_reused() -> None:
    window = Window(now=0.0)
    window.record(1.0, ok=True, latency_s=0.5)
    assert window.snapshot(2.0)["requests"] == 1
    later = 1.0 + BUCKETS * BUCKET_SECONDS  # the same slot, one turn of the ring later
    assert window.snapshot(later)["requests"] == 0
    assert window.snapshot(later)["success_rate"] is None
    window.record(later, ok=False, latency_s=None)
    snap = window.snapshot(later)
    assert snap["requests"] == 1 and snap["success_rate"] == 0.0
    assert snap["latency_ms"] == {"p50": None, "p95": None, "p99": None}  # old bins cleared


def test_percentiles_within_a_bin_width() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(-4.0, 1.0) for _ in range(5000)]  # ~18 ms median
    window = Window(now=0.0)
    for i, s in enumerate(samples):
        window.record(i * 0.01, ok=True, latency_s=s)
    snap = window.snapshot(50.0)
    ordered = sorted(samples)
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        exact = ordered[int(q * len(ordered)) - 1] * 1000
        assert snap["latency_ms"][name] == pytest.approx(exact, rel=0.1), name


def test_extremes_land_in_the_end_bins() -> None:
    window = Window(now=0.0)
    window.record(1.0, ok=True, latency_s=0.0)
    window.record(1.0, ok=True, latency_s=10_000.0)
    snap = window.snapshot(1.0)
    assert snap["latency_ms"]["p50"] < 0.2 and snap["latency_ms"]["p99"] > 50_000


def test_snapshot_windows_per_service_route_and_endpoint(backends: BackendFactory) -> None:
    """Real requests: the service, its route and its endpoints each report their window;
    failed-fast requests count against the route's success rate."""
    b = backends(2, delay_ms=5)
    with meshlib.MeshClient(services={"svc": b.static_url}) as client:
        for _ in range(30):
            assert client.get("http://svc/users/1").status_code == 200
        snap = client.snapshot()["services"]["svc"]
    assert snap["window"]["requests"] == 30 and snap["window"]["success_rate"] == 1.0
    assert snap["window"]["latency_ms"]["p50"] >= 4.0
    route = snap["routes"]["GET /users"]["window"]
    assert route["requests"] == 30 and route["success_rate"] == 1.0
    assert sum(e["window"]["requests"] for e in snap["endpoints"]) == 30
