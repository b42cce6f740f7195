"""Request cost at 1,000 warm endpoints against 4: does the mesh's cost grow with the set?

Servers run in a child process (`meshlib.testing._backend.BackendProcess`).
For each size, a sync `MeshClient` (p2c-ewma, the default) warms every
endpoint first (a pooled connection and a latency sample each; keep-alive is
raised to 120 s so that connections do not expire between two visits), then
sends `requests` sequential GETs, `rounds` times; the figure is the
client's CPU time per request (`time.process_time`: the servers' work and
the machine's other load are not counted), best round. Goal: at most 1.03x
at 1,000 endpoints of the cost at 4.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from .goals import mark

__all__ = ["LARGE_SET_GOAL", "format_large_set", "run_large_set"]

#: the goal: cost per request at the large size over the cost at the small one
LARGE_SET_GOAL = 1.03


def _cost(n: int, requests: int, rounds: int, budget_s: float) -> dict[str, Any]:
    import meshlib

    from ..testing._backend import BackendProcess
    from .throughput import _backend_cpu

    backend = BackendProcess(n, cpu=_backend_cpu()).start()
    try:
        # keep-alive long enough that 1,000 endpoints at this rate stay connected: the
        # default 5 s expiry would measure reconnects, not the mesh
        limits = httpx.Limits(keepalive_expiry=120.0)
        with meshlib.MeshClient(services={"svc": backend.static_url}, limits=limits) as client:
            deadline = time.perf_counter() + budget_s
            # warm every endpoint: round robin reaches each one (p2c-ewma need not, on a
            # small set it avoids one measured slow by chance), then p2c-ewma learns
            with meshlib.policy(balancer="round-robin"):
                for _ in range(n):
                    client.get("http://svc/")
                    if time.perf_counter() > deadline:
                        break
            for _ in range(2 * n):
                client.get("http://svc/")
                if time.perf_counter() > deadline:
                    break
            runtime = client.mesh_transport.mesh.runtimes["svc"]
            warm = sum(1 for s in runtime.states.values() if s.pool is not None)
            best = float("inf")
            errors = 0
            for _ in range(rounds):
                start = time.process_time()
                done = 0
                for _ in range(requests):
                    if client.get("http://svc/").status_code != 200:
                        errors += 1
                    done += 1
                    if done % 64 == 0 and time.perf_counter() > deadline:
                        break
                best = min(best, (time.process_time() - start) / done)
            return {"endpoints": n, "cpu_us": round(best * 1e6, 1), "warm_endpoints": warm,
                    "errors": errors}
    finally:
        backend.stop()


def run_large_set(small: int = 4, large: int = 1000, *, requests: int = 2000,
                  rounds: int = 3, budget_s: float = 60.0) -> dict[str, Any]:
    """Client CPU microseconds per request at `small` and `large` warm endpoints.

    Returns `small` and `large` (each `endpoints`, `cpu_us`,
    `warm_endpoints`: how many had a pool after the warm-up, `errors`),
    `ratio` (large over small), `goal` and `ok`. Each size stops after
    `budget_s` seconds even if not every request was sent.
    """
    if small < 1 or large <= small:
        raise ValueError(f"need 1 <= small < large, not small={small!r}, large={large!r}")
    if requests < 1 or rounds < 1:
        raise ValueError(f"requests and rounds must be positive, not {requests!r}, {rounds!r}")
    low = _cost(small, requests, rounds, budget_s)
    high = _cost(large, requests, rounds, budget_s)
    ratio = high["cpu_us"] / low["cpu_us"]
    return {"small": low, "large": high, "ratio": round(ratio, 3), "goal": LARGE_SET_GOAL,
            "ok": ratio <= LARGE_SET_GOAL}


def format_large_set(result: dict[str, Any]) -> str:
    """`run_large_set`'s result as two lines and the ratio."""
    low, high = result["small"], result["large"]
    verdict = f"goal <= {result['goal']:.2f}x: {mark(result['ok'])}"
    return (f"{low['endpoints']:>5,} endpoints: {low['cpu_us']:8.1f} us client CPU per request\n"
            f"{high['endpoints']:>5,} endpoints: {high['cpu_us']:8.1f} us client CPU per request\n"
            f"ratio: {result['ratio']:.3f}x ({verdict})")
