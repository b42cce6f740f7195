"""What a route table costs: client CPU per request with three rules against none.

One loopback server in a child process. Two sync `MeshClient`\\ s over it:
one with `services={"svc": ...}` only, one with a route table of three
rules for the host `svc` (a header match, a path prefix that does not
match, then the path prefix that does), the way a canary and an admin route
are configured:

```
routes={"svc": [Route(Match(headers={"x-canary": "1"}), to="svc-canary"),
                Route(Match(path_prefix="/admin"), to="svc-admin"),
                Route(Match(path_prefix="/api"), to="svc")]}
```

Both send sequential GETs to `http://svc/api/items`, so the routed client
evaluates every rule on every request. Rounds of the two are interleaved
(the order alternates); each round's figure is the client process's CPU
time per request (`time.process_time`), and the result is the median of
the per-round ratios. Goal: at most `ROUTES_GOAL`.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

__all__ = ["ROUTES_GOAL", "format_routes", "run_routes_cost"]

#: client CPU per request with the route table over without
ROUTES_GOAL = 1.02


def _routes() -> dict[str, Any]:
    import meshlib

    return {"svc": [
        meshlib.Route(meshlib.Match(headers={"x-canary": "1"}), to="svc-canary",
                      name="canary"),
        meshlib.Route(meshlib.Match(path_prefix="/admin"), to="svc-admin", name="admin"),
        meshlib.Route(meshlib.Match(path_prefix="/api"), to="svc", name="api"),
    ]}


def _segment(client: Any, n: int, deadline: float) -> tuple[float, int]:
    """CPU seconds per request over `n` sequential GETs, and the non-200 count."""
    gc.collect()
    bad = 0
    done = 0
    start = time.process_time()
    for _ in range(n):
        if client.get("http://svc/api/items").status_code != 200:
            bad += 1
        done += 1
        if done % 64 == 0 and time.perf_counter() > deadline:
            break
    return (time.process_time() - start) / done, bad


def run_routes_cost(*, rounds: int = 11, per_round: int = 400, budget_s: float = 30.0,
                    cpu: int | None = None) -> dict[str, Any]:
    """Client CPU per request with and without the three-rule table.

    Returns `plain_us` and `routed_us` (medians over rounds), `ratio`
    (median of per-round ratios), `ratios`, `rounds`, `errors`,
    `goal` and `ok`. Stops after `budget_s` once three rounds are done.
    """
    import meshlib

    from ..testing._backend import BackendProcess

    if rounds < 1 or per_round < 1:
        raise ValueError(f"rounds and per_round must be positive, not {rounds!r}, "
                         f"{per_round!r}")
    with BackendProcess(1, cpu=cpu) as backend:
        url = backend.static_url
        services = {"svc": url, "svc-canary": url, "svc-admin": url}
        deadline = time.perf_counter() + budget_s
        plain_times: list[float] = []
        routed_times: list[float] = []
        errors = 0
        with (meshlib.MeshClient(services={"svc": url}) as plain,
              meshlib.MeshClient(services=services, routes=_routes()) as routed):
            for client in (plain, routed):
                _segment(client, per_round, deadline)
            for i in range(rounds):
                order = [(plain, plain_times), (routed, routed_times)]
                if i % 2:
                    order.reverse()
                for client, sink in order:
                    seconds, bad = _segment(client, per_round, deadline + 5.0)
                    sink.append(seconds)
                    errors += bad
                if time.perf_counter() > deadline and len(plain_times) >= 3:
                    break
    ratios = [r / p for p, r in zip(plain_times, routed_times, strict=True)]
    ratio = statistics.median(ratios)
    return {"plain_us": round(statistics.median(plain_times) * 1e6, 1),
            "routed_us": round(statistics.median(routed_times) * 1e6, 1),
            "ratio": round(ratio, 4), "ratios": [round(r, 4) for r in ratios],
            "rounds": len(ratios), "requests_per_round": per_round, "errors": errors,
            "goal": ROUTES_GOAL, "ok": ratio <= ROUTES_GOAL}


def format_routes(result: dict[str, Any]) -> str:
    """`run_routes_cost`'s result as one line."""
    return (f"no routes {result['plain_us']:.1f} us, three rules {result['routed_us']:.1f} us "
            f"client CPU per request: {result['ratio']:.3f}x")
