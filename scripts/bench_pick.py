"""Micro-benchmark: the cost of one endpoint pick at 4 and 1,000 warm endpoints.

    .venv/bin/python scripts/bench_pick.py

Prints microseconds per ``ServiceRuntime.pick`` for each balancer, with every
breaker closed and with one endpoint's breaker open. Not a test: speed is
measured, never asserted (STYLE.md).
"""

from __future__ import annotations

import time

from meshlib._balancer import FAILURE_PENALTY
from meshlib._discovery._static import StaticDiscovery
from meshlib._endpoint import Endpoint
from meshlib._policy import Breaker, Policy
from meshlib._service import Service, ServiceRuntime


def runtime(n: int) -> ServiceRuntime:
    endpoints = tuple(Endpoint("127.0.0.1", 10000 + i) for i in range(n))
    url = "static://127.0.0.1:1"
    rt = ServiceRuntime("svc", Service(url), StaticDiscovery(url),
                        Policy(breaker=Breaker(max_ejection_percent=100)), clock=time.monotonic)
    rt.apply(endpoints, time.monotonic())
    now = time.monotonic()
    for i, state in enumerate(rt.states.values()):
        state.observe(0.001 + (i % 7) * 0.0001, now, failed=False, penalty=FAILURE_PENALTY)
    return rt


def per_pick(rt: ServiceRuntime, balancer: str, rounds: int) -> float:
    b = rt.balancer(balancer)
    empty: frozenset[str] = frozenset()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            rt.pick(b, empty, time.monotonic())
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1e6


def main() -> None:
    print(f"{'balancer':<14} {'open':>5} {'n=4 us':>8} {'n=1000 us':>10}")
    for balancer in ("p2c-ewma", "least-request", "round-robin", "random"):
        for opened in (False, True):
            cells = []
            for n in (4, 1000):
                rt = runtime(n)
                if opened:
                    first = next(iter(rt.states.values()))
                    for _ in range(5):
                        first.breaker.record(False, time.monotonic())
                cells.append(per_pick(rt, balancer, 20000))
            print(f"{balancer:<14} {'1' if opened else '0':>5} {cells[0]:>8.2f} {cells[1]:>10.2f}")


if __name__ == "__main__":
    main()
