"""The tail scenario: a healthy, a slow and a failing server, round robin against p2c-ewma.

Three loopback servers: one healthy, one slow (10x the base delay) and one
failing 20% of requests with 503. A round-robin client (a plain
`httpx.Client` cycling over the three URLs, what a DNS name with three A
records gives) against a `MeshClient` with the `p2c-ewma` balancer and
default retries: p50, p99, p99.9, success rate and attempts per request.
Goals: meshlib's p99 at most `TAIL_P99_GOAL` times round robin's, and
a success rate of at least `TAIL_SUCCESS_GOAL`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Literal

import httpx

from ..testing import Fleet
from .stats import latency_summary, percentile

__all__ = ["TAIL_P99_GOAL", "TAIL_SUCCESS_GOAL", "run_tail", "servers"]

#: meshlib's p99 over round robin's
TAIL_P99_GOAL = 0.5
#: meshlib's share of successful requests
TAIL_SUCCESS_GOAL = 0.999
_SERVICE = "bench"


def servers(mode: Literal["process", "thread"], n: int, latency: float = 0.0,
            **kwargs: Any) -> Fleet:
    """Loopback endpoints in a child process (default) or in a thread of this one."""
    if mode == "thread":
        kwargs.pop("cpu", None)
    return Fleet(n, latency=latency, process=mode == "process", **kwargs)


def _stats(latencies: list[float], ok: int, attempts: int, by_backend: dict[str, int],
           elapsed: float) -> dict[str, Any]:
    n = len(latencies)
    return {
        "requests": n,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "p999_ms": percentile(latencies, 99.9) * 1e3,
        "mean_ms": (statistics.fmean(latencies) * 1e3) if latencies else float("nan"),
        "success_rate": ok / n if n else float("nan"),
        "attempts": attempts,
        "attempts_per_request": attempts / n if n else float("nan"),
        "answered_by": dict(sorted(by_backend.items())),
        "seconds": elapsed,
    }


def _round_robin(urls: list[str], n: int, budget_s: float,
                 latencies: list[float]) -> dict[str, Any]:
    ok = 0
    by_backend: dict[str, int] = {}
    start = time.perf_counter()
    deadline = start + budget_s
    with httpx.Client(timeout=10.0) as client:
        for i in range(n):
            t0 = time.perf_counter()
            try:
                r = client.get(urls[i % len(urls)] + "/tail")
            except httpx.HTTPError:
                pass
            else:
                ok += r.status_code < 400
                who = r.headers.get("x-backend", "?")
                by_backend[who] = by_backend.get(who, 0) + 1
            latencies.append(time.perf_counter() - t0)
            if time.perf_counter() > deadline:
                break
    return _stats(latencies, ok, len(latencies), by_backend, time.perf_counter() - start)


def _mesh(static_url: str, n: int, budget_s: float, latencies: list[float]) -> dict[str, Any]:
    import meshlib

    ok = 0
    attempts = 0
    by_backend: dict[str, int] = {}
    start = time.perf_counter()
    deadline = start + budget_s
    policy = meshlib.Policy(balancer="p2c-ewma", timeout=10.0)
    with meshlib.MeshClient(services={_SERVICE: static_url}, policy=policy) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                r = client.get(f"http://{_SERVICE}/tail")
            except httpx.HTTPError:
                attempts += 1
            else:
                ok += r.status_code < 400
                info = r.extensions.get("meshlib") or {}
                attempts += int(info.get("attempts", 1))
                who = r.headers.get("x-backend", "?")
                by_backend[who] = by_backend.get(who, 0) + 1
            latencies.append(time.perf_counter() - t0)
            if time.perf_counter() > deadline:
                break
    return _stats(latencies, ok, attempts, by_backend, time.perf_counter() - start)


def run_tail(*, n: int, base_delay_ms: float, budget_s: float,
             mode: Literal["process", "thread"],
             samples: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Round robin against `MeshClient` over the three servers; `n` requests each.

    `samples` receives per-request latencies (seconds) under `"baseline"`
    and `"mesh"`. Each side stops after `budget_s / 2` seconds.
    """
    samples = {} if samples is None else samples
    samples.setdefault("baseline", [])
    samples.setdefault("mesh", [])
    delays = [base_delay_ms, base_delay_ms * 10, base_delay_ms]
    with servers(mode, 3, latency=base_delay_ms / 1000.0, seed=1234) as fleet:
        fleet.set(1, latency=delays[1] / 1000.0)
        fleet.set(2, error_rate=0.2)
        roles = dict(zip(fleet.endpoints, ["healthy", "slow", "failing-20%"], strict=True))
        baseline = _round_robin([f"http://{e}" for e in fleet.endpoints], n, budget_s / 2,
                                samples["baseline"])
        mesh = _mesh(fleet.url, n, budget_s / 2, samples["mesh"])
    for side in (baseline, mesh):
        side["answered_by"] = {roles.get(k, k): v for k, v in side["answered_by"].items()}
    p99_ratio = mesh["p99_ms"] / baseline["p99_ms"]
    return {
        "servers": {"healthy_ms": delays[0], "slow_ms": delays[1], "failing_pct": 20},
        "baseline": baseline,
        "mesh": mesh,
        "p50_ratio": mesh["p50_ms"] / baseline["p50_ms"],
        "p99_ratio": p99_ratio,
        "p99_goal": TAIL_P99_GOAL,
        "p99_ok": p99_ratio <= TAIL_P99_GOAL,
        "success_goal": TAIL_SUCCESS_GOAL,
        "success_ok": mesh["success_rate"] >= TAIL_SUCCESS_GOAL,
        "latency": {k: latency_summary(v) for k, v in samples.items()},
    }
