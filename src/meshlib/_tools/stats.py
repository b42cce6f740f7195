"""Summaries of measured latencies, shared by `meshlib bench` and `meshlib demo`."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["latency_summary", "percentile"]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (`pct` in 0..100) of `values`; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of per-request latencies, in milliseconds.

    Empty input gives an empty dict. `requests` is the sample count: with
    fewer than 1,000 samples p99.9 is the maximum, and with fewer than 100
    p99 is too (the figures are then indicative only).
    """
    if not seconds:
        return {}
    ordered = sorted(seconds)
    return {
        "p50_ms": round(percentile(ordered, 50) * 1e3, 4),
        "p90_ms": round(percentile(ordered, 90) * 1e3, 4),
        "p99_ms": round(percentile(ordered, 99) * 1e3, 4),
        "p999_ms": round(percentile(ordered, 99.9) * 1e3, 4),
        "max_ms": round(ordered[-1] * 1e3, 4),
        "requests": len(ordered),
    }
