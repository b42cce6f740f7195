"""The balancer's pick cost at 10, 100 and 1,000 warm endpoints.

Times `meshlib._service.ServiceRuntime.pick()` (choose an endpoint and ask
its breaker for admission: what every attempt does before it sends) in this
process, with no network: a runtime over `n` static endpoints whose states
are warm (each has a latency sample, so p2c-ewma compares real scores), once
with every breaker closed and once with one endpoint's breaker open. The
figure is the best of `repeats` timed loops of `picks` picks, in
microseconds per pick (the best, because on a shared machine only slower
loops are noise). Goal: at most 5 us at 1,000 endpoints in CPython (Finagle's
p2c on the JVM: about 1.7 us).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["BALANCERS", "PICK_GOAL_US", "format_pick", "run_pick_cost"]

#: the goal for one pick at 1,000 endpoints, in microseconds
PICK_GOAL_US = 5.0
#: the balancers measured, in table order
BALANCERS = ("p2c-ewma", "least-request", "round-robin", "random")


def _runtime(n: int) -> Any:
    """A service runtime over `n` warm static endpoints (no traffic, no discovery task)."""
    from .._balancer import FAILURE_PENALTY
    from .._discovery._static import StaticDiscovery
    from .._endpoint import Endpoint
    from .._policy import Breaker, Policy
    from .._service import Service, ServiceRuntime

    url = "static://127.0.0.1:1"
    rt = ServiceRuntime("bench", Service(url), StaticDiscovery(url),
                        Policy(breaker=Breaker(max_ejection_percent=100)), clock=time.monotonic)
    rt.apply(tuple(Endpoint("127.0.0.1", 10000 + i) for i in range(n)), time.monotonic())
    now = time.monotonic()
    for i, state in enumerate(rt.states.values()):  # varied latencies: p2c has real choices
        state.observe(0.001 + (i % 7) * 0.0001, now, failed=False, penalty=FAILURE_PENALTY)
    return rt


def _open_one(rt: Any) -> None:
    """Open one endpoint's breaker (failures until it trips); raises if it will not open."""
    first = next(iter(rt.states.values()))
    for _ in range(1000):
        if not first.breaker.closed:
            return
        first.breaker.record(False, time.monotonic())
    raise RuntimeError("the benchmark could not open a breaker")


def _per_pick(rt: Any, balancer: str, picks: int, repeats: int) -> float:
    """Best of `repeats` loops, microseconds per pick."""
    b = rt.balancer(balancer)
    pick = rt.pick
    clock = time.monotonic
    empty: frozenset[str] = frozenset()
    best = float("inf")
    gc.collect()
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(picks):
            pick(b, empty, clock())
        best = min(best, (time.perf_counter() - start) / picks)
    return best * 1e6


def run_pick_cost(sizes: Sequence[int] = (10, 100, 1000), *,
                  balancers: Sequence[str] = BALANCERS, picks: int = 20000,
                  repeats: int = 5) -> list[dict[str, Any]]:
    """Time one pick per balancer and endpoint count, breakers all closed and one open.

    Returns one dict per (balancer, endpoints, open breaker) with `balancer`,
    `endpoints`, `open_breakers` (0 or 1), `us` (microseconds per pick,
    best loop) and `picks` (per loop).
    """
    if not sizes or any(n < 2 for n in sizes):
        raise ValueError(f"sizes must be endpoint counts of at least 2, not {sizes!r}")
    if picks < 1 or repeats < 1:
        raise ValueError(f"picks and repeats must be positive, not {picks!r}, {repeats!r}")
    rows: list[dict[str, Any]] = []
    for balancer in balancers:
        for opened in (0, 1):
            for n in sizes:
                rt = _runtime(n)
                if opened:
                    _open_one(rt)
                rows.append({"balancer": balancer, "endpoints": n, "open_breakers": opened,
                             "us": round(_per_pick(rt, balancer, picks, repeats), 3),
                             "picks": picks})
    return rows


def format_pick(rows: list[dict[str, Any]]) -> str:
    """`run_pick_cost`'s rows as a table: microseconds per pick by endpoint count."""
    sizes = sorted({r["endpoints"] for r in rows})
    cell = {(r["balancer"], r["open_breakers"], r["endpoints"]): r["us"] for r in rows}
    keys = list(dict.fromkeys((r["balancer"], r["open_breakers"]) for r in rows))
    header = ["balancer", "breakers", *[f"{n:,} endpoints" for n in sizes]]
    table = [header]
    for balancer, opened in keys:
        line = [balancer, "one open" if opened else "all closed"]
        for n in sizes:
            us = cell.get((balancer, opened, n))
            line.append("n/a" if us is None else f"{us:.2f} us")
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     for row in table)
