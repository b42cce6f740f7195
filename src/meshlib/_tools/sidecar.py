"""Slow replica and outage: bare httpx, an Envoy sidecar and AsyncMeshClient, side by side.

Each scenario runs loopback servers in a child process and the same load
through each client in turn: `tasks` asyncio tasks sharing one counter
send `requests` GETs in all (bounded in time too).

* `httpx`: a bare `httpx.AsyncClient` cycling over the servers' URLs
  (round robin, what a DNS name with several A records gives);
* `envoy`: the same `httpx.AsyncClient` sending every request to an Envoy
  sidecar in front of the servers (`.envoy`), when a binary is found;
* `meshlib`: `AsyncMeshClient(services={"svc": ...})` with its defaults.

What the servers received is counted on the servers, so attempts (retries
included) are counted the same way for every client.

`slow_replica`: three servers, one at 10x the others' latency. Figures:
p50, p99, p99.9 and the share of requests the slow one received. Goals:
meshlib's p99 at most `SLOW_P99_GOAL` times Envoy's, and at most
`SLOW_SHARE_GOAL` of the requests to the slow one.

`outage`: five servers, all answering 503. Figures: attempts per request,
p50, and the client process's CPU time per request (`time.process_time`:
the servers' and Envoy's work is not counted; Envoy's own CPU is reported
beside it). Goals: meshlib's attempts per request at most
`OUTAGE_ATTEMPTS_GOAL` and at most Envoy's, its p50 at most Envoy's,
its CPU per request under `OUTAGE_CPU_GOAL_MS`.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import Callable
from typing import Any

import httpx

from ..testing import Fleet
from .envoy import HOW_TO_GET, EnvoySidecar
from .stats import latency_summary

__all__ = ["OUTAGE_ATTEMPTS_GOAL", "OUTAGE_CPU_GOAL_MS", "SIDES", "SLOW_P99_GOAL",
           "SLOW_SHARE_GOAL", "run_outage", "run_slow_replica"]

#: the clients, in table order
SIDES = ("httpx", "envoy", "meshlib")
SLOW_P99_GOAL = 0.5
SLOW_SHARE_GOAL = 0.01
OUTAGE_ATTEMPTS_GOAL = 1.3
OUTAGE_CPU_GOAL_MS = 1.0
_SERVICE = "svc"


async def _load(client: httpx.AsyncClient, urls: list[str], *, tasks: int, requests: int,
                budget_s: float, latencies: list[float]) -> dict[str, Any]:
    """`requests` GETs from `tasks` tasks; latencies appended; counts and CPU returned."""
    counter = itertools.count()
    deadline = time.perf_counter() + budget_s
    ok = 0
    errors = 0
    n_urls = len(urls)
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal ok, errors
        while True:
            i = next(counter)
            if i >= requests or clock() > deadline:
                return
            start = clock()
            try:
                response = await client.get(urls[i % n_urls])
            except httpx.HTTPError:
                errors += 1
            else:
                ok += response.status_code < 400
                errors += response.status_code >= 400
            latencies.append(clock() - start)

    gc.collect()
    cpu = time.process_time()
    start = clock()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    seconds = clock() - start
    cpu = time.process_time() - cpu
    done = ok + errors
    return {"requests": done, "ok": ok, "errors": errors, "seconds": round(seconds, 4),
            "cpu_ms_per_request": round(cpu / done * 1e3, 4) if done else float("nan")}


def _side(fleet: Fleet, name: str, envoy: EnvoySidecar | None, *, tasks: int, requests: int,
          budget_s: float, samples: dict[str, list[float]]) -> dict[str, Any]:
    import meshlib

    latencies = samples.setdefault(name, [])

    async def main() -> dict[str, Any]:
        client: httpx.AsyncClient
        if name == "meshlib":
            client = meshlib.AsyncMeshClient(services={_SERVICE: fleet.url})
            urls = [f"http://{_SERVICE}/"]
        else:
            client = httpx.AsyncClient(timeout=10.0)
            urls = [f"{envoy.url}/"] if envoy else [f"http://{e}/" for e in fleet.endpoints]
        async with client:
            return await _load(client, urls, tasks=tasks, requests=requests,
                               budget_s=budget_s, latencies=latencies)

    fleet.reset_hits()
    envoy_cpu = envoy.cpu_seconds() if envoy else 0.0
    row = asyncio.run(main())
    if envoy is not None:
        row["sidecar_cpu_ms_per_request"] = round(
            (envoy.cpu_seconds() - envoy_cpu) / max(row["requests"], 1) * 1e3, 4)
    row["hits"] = [len(h) for h in fleet.hits()]
    row["attempts_per_request"] = (round(sum(row["hits"]) / row["requests"], 3)
                                   if row["requests"] else float("nan"))
    row.update(latency_summary(latencies))
    return row


def _run(fleet: Fleet, envoy_binary: str | None, *, tasks: int, requests: int,
         budget_s: float, samples: dict[str, list[float]]) -> dict[str, Any]:
    """Every side over `fleet`; `envoy` holds why it was skipped without a binary."""
    rows: dict[str, Any] = {}
    for name in SIDES:
        if name == "envoy":
            if envoy_binary is None:
                rows[name] = {"skipped": HOW_TO_GET}
                continue
            with EnvoySidecar(envoy_binary, fleet.endpoints) as envoy:
                rows[name] = _side(fleet, name, envoy, tasks=tasks, requests=requests,
                                   budget_s=budget_s, samples=samples)
        else:
            rows[name] = _side(fleet, name, None, tasks=tasks, requests=requests,
                               budget_s=budget_s, samples=samples)
    return rows


def _goal(check: Callable[[], bool], *needs: dict[str, Any]) -> bool | None:
    """`check()`, or `None` when a side it compares with was skipped."""
    return None if any("skipped" in side for side in needs) else check()


def run_slow_replica(envoy_binary: str | None, *, base_ms: float = 5.0, tasks: int = 4,
                     requests: int = 600, budget_s: float = 30.0, cpu: int | None = None,
                     samples: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Three servers, the second at 10x `base_ms`; each side sends `requests` GETs.

    Returns `sides` (per client: p50/p99/p99.9, `share_to_slow`, counts;
    or `skipped`), the goals and `p99_ok` / `share_ok` (`None` when
    Envoy, the comparison, was not run).
    """
    samples = {} if samples is None else samples
    with Fleet(3, latency=base_ms / 1e3, process=True, cpu=cpu) as fleet:
        fleet.set(1, latency=base_ms * 10 / 1e3)
        sides = _run(fleet, envoy_binary, tasks=tasks, requests=requests, budget_s=budget_s,
                     samples=samples)
    for row in sides.values():
        if "hits" in row:
            row["share_to_slow"] = round(row["hits"][1] / max(sum(row["hits"]), 1), 4)
    mesh, envoy = sides["meshlib"], sides["envoy"]
    return {"servers": {"count": 3, "base_ms": base_ms, "slow_ms": base_ms * 10},
            "tasks": tasks, "sides": sides,
            "p99_goal": SLOW_P99_GOAL, "share_goal": SLOW_SHARE_GOAL,
            "p99_ok": _goal(lambda: mesh["p99_ms"] <= SLOW_P99_GOAL * envoy["p99_ms"], envoy),
            "share_ok": mesh["share_to_slow"] <= SLOW_SHARE_GOAL}


def run_outage(envoy_binary: str | None, *, tasks: int = 4, requests: int = 1000,
               budget_s: float = 30.0, cpu: int | None = None,
               samples: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Five servers answering 503; each side sends `requests` GETs.

    Returns `sides` (per client: `attempts_per_request` counted on the
    servers, p50/p99/p99.9, `cpu_ms_per_request` of this process, and for
    Envoy `sidecar_cpu_ms_per_request`; or `skipped`), the goals and
    `attempts_ok`, `p50_ok`, `cpu_ok` (`None` where Envoy was needed
    and not run).
    """
    samples = {} if samples is None else samples
    with Fleet(5, process=True, cpu=cpu, error_rate=1.0, status=503) as fleet:
        sides = _run(fleet, envoy_binary, tasks=tasks, requests=requests, budget_s=budget_s,
                     samples=samples)
    mesh, envoy = sides["meshlib"], sides["envoy"]
    limit = OUTAGE_ATTEMPTS_GOAL
    if "skipped" not in envoy:
        limit = min(limit, envoy["attempts_per_request"])
    return {"servers": {"count": 5, "status": 503}, "tasks": tasks, "sides": sides,
            "attempts_goal": OUTAGE_ATTEMPTS_GOAL, "cpu_goal_ms": OUTAGE_CPU_GOAL_MS,
            "attempts_ok": mesh["attempts_per_request"] <= limit,
            "p50_ok": _goal(lambda: mesh["p50_ms"] <= envoy["p50_ms"], envoy),
            "cpu_ok": mesh["cpu_ms_per_request"] < OUTAGE_CPU_GOAL_MS}
