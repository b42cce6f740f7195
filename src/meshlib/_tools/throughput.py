"""Throughput at 1, 16 and 64 concurrent tasks: bare httpx against AsyncMeshClient on each pool.

Four loopback servers answer at 0 ms in a child process
(`meshlib.testing._backend.BackendProcess`), so they do not share the
client's interpreter lock; with two CPUs or more the servers are pinned to the
last one and this process to the others for the run (its affinity is restored
afterwards). In one run,
for each concurrency, each client sends `requests` GETs from that many tasks
that share one counter:

* `httpx`: a bare `httpx.AsyncClient` cycling over the four servers' URLs;
* `mesh-httpcore`: `AsyncMeshClient(services={"bench": ...})` (the default pool);
* `mesh-aiohttp`: the same with `pool="aiohttp"` (skipped when aiohttp is missing).

Clients take turns within a round (the order rotates between rounds, to cancel
drift), and the best of `rounds` is kept per client and concurrency, as
requests per second and as a ratio to bare httpx at the same concurrency,
with the client process's CPU time per request beside it (the least over
rounds; on a loaded machine it moves less than requests per second do).
Every loop is bounded in count and in time (`budget_s` per measurement).

Self-contained: `run_throughput()` returns a list of dicts, one per
(concurrency, client); `format_throughput()` renders them as a table.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ..testing._backend import BackendProcess

__all__ = ["CLIENTS", "GOALS", "format_throughput", "run_throughput"]

_SERVICE = "bench"
#: the clients measured, in table order
CLIENTS = ("httpx", "mesh-httpcore", "mesh-aiohttp")
#: the goals, as a ratio to bare httpx at the same concurrency: (client, tasks) -> at least
GOALS = {("mesh-httpcore", 16): 1.0, ("mesh-httpcore", 64): 1.0, ("mesh-aiohttp", 1): 1.5,
         ("mesh-aiohttp", 16): 2.0, ("mesh-aiohttp", 64): 4.0}


def _backend_cpu() -> int | None:
    """The CPU to pin the servers to (the last one), if there are two or more."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return cpus[-1] if len(cpus) >= 2 else None


async def _load(client: httpx.AsyncClient, urls: Sequence[str], *, tasks: int, requests: int,
                budget_s: float) -> tuple[int, int, float, float]:
    """`requests` GETs from `tasks` tasks; returns (done, errors, seconds, CPU seconds)."""
    counter = itertools.count()
    deadline = time.perf_counter() + budget_s
    errors = 0
    done = 0
    n_urls = len(urls)

    async def worker() -> None:
        nonlocal errors, done
        while True:
            i = next(counter)
            if i >= requests or time.perf_counter() > deadline:
                return
            try:
                response = await client.get(urls[i % n_urls])
                if response.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            done += 1

    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done, errors, time.perf_counter() - start, time.process_time() - cpu


async def _measure(static_url: str, urls: list[str], concurrency: Sequence[int], requests: int,
                   rounds: int, budget_s: float, clients: Sequence[str]) -> list[dict[str, Any]]:
    import meshlib

    limits = httpx.Limits(max_connections=max(100, *concurrency),
                          max_keepalive_connections=max(20, *concurrency))
    built: dict[str, tuple[httpx.AsyncClient, list[str]]] = {}
    mesh_urls = [f"http://{_SERVICE}/"]
    for name in clients:
        if name == "httpx":
            built[name] = (httpx.AsyncClient(limits=limits), [u + "/" for u in urls])
        else:
            pool = name.removeprefix("mesh-")
            built[name] = (meshlib.AsyncMeshClient(services={_SERVICE: static_url},
                                                   limits=limits, pool=pool), mesh_urls)
    rows: list[dict[str, Any]] = []
    try:
        for tasks in concurrency:
            best: dict[str, dict[str, Any]] = {}
            for client, targets in built.values():  # warm up: open the connections
                await _load(client, targets, tasks=tasks, requests=max(4 * tasks, 100),
                            budget_s=budget_s)
            order = list(built)
            for r in range(rounds):
                shift = r % len(order)
                for name in order[shift:] + order[:shift]:
                    client, targets = built[name]
                    done, errors, seconds, cpu = await _load(
                        client, targets, tasks=tasks, requests=requests, budget_s=budget_s)
                    rps = done / seconds if seconds > 0 else 0.0
                    cpu_us = round(cpu / max(done, 1) * 1e6, 1)
                    if name in best:
                        best[name]["cpu_us"] = min(best[name]["cpu_us"], cpu_us)
                    if name not in best or rps > best[name]["rps"]:
                        least = best[name]["cpu_us"] if name in best else cpu_us
                        best[name] = {"concurrency": tasks, "client": name, "requests": done,
                                      "errors": errors, "seconds": round(seconds, 4),
                                      "rps": round(rps, 1), "cpu_us": least}
            base = best.get("httpx", {}).get("rps")
            base_cpu = best.get("httpx", {}).get("cpu_us")
            for name in built:
                row = best[name]
                row["ratio"] = round(row["rps"] / base, 3) if base else None
                row["cpu_ratio"] = round(row["cpu_us"] / base_cpu, 3) if base_cpu else None
                rows.append(row)
    finally:
        for client, _ in built.values():
            await client.aclose()
    return rows


def run_throughput(concurrency: Sequence[int] = (1, 16, 64), requests: int = 3000, *,
                   rounds: int = 2, budget_s: float = 20.0,
                   clients: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Measure requests per second of bare httpx and AsyncMeshClient on each pool.

    Returns one dict per (concurrency, client) with `concurrency`, `client`
    (`"httpx"`, `"mesh-httpcore"`, `"mesh-aiohttp"`), `requests` (sent in
    the best round), `errors`, `seconds`, `rps`, `ratio` (`rps` over
    bare httpx's at the same concurrency), `cpu_us` (this process's CPU time
    per request, least over rounds: less sensitive to the machine's other load
    than `rps`) and `cpu_ratio` (over bare httpx's). When aiohttp is not installed (and
    `clients` is not given), the `mesh-aiohttp` rows say so: `skipped`
    (why) in place of the figures, as `format_throughput()` shows them.
    Each measurement stops after `budget_s` seconds even if `requests`
    were not all sent.
    """
    missing: list[dict[str, Any]] = []
    if clients is None:
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            clients = CLIENTS[:2]
            missing = [{"concurrency": c, "client": "mesh-aiohttp",
                        "skipped": "aiohttp is not installed (pip install 'httpx-mesh[aiohttp]')"}
                       for c in concurrency]
        else:
            clients = CLIENTS
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown:
        raise ValueError(f"unknown clients {unknown!r}; choose from {', '.join(CLIENTS)}")
    if not concurrency or any(c < 1 for c in concurrency):
        raise ValueError(f"concurrency must be positive task counts, not {concurrency!r}")
    server_cpu = _backend_cpu()
    mine: set[int] | None = None
    if server_cpu is not None:  # keep the client off the servers' CPU for the run
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, mine - {server_cpu})
    try:
        with BackendProcess(4, delay_ms=0.0, cpu=server_cpu) as servers:
            rows = asyncio.run(_measure(servers.static_url, servers.urls, tuple(concurrency),
                                        requests, rounds, budget_s, tuple(clients)))
            return rows + missing
    finally:
        if mine is not None:
            os.sched_setaffinity(0, mine)


def format_throughput(rows: list[dict[str, Any]]) -> str:
    """`run_throughput`'s rows as a table: requests/s (and ratio to httpx) per concurrency."""
    levels = sorted({r["concurrency"] for r in rows})
    names = [c for c in CLIENTS if any(r["client"] == c for r in rows)]
    cell = {(r["client"], r["concurrency"]): r for r in rows}
    header = ["client", *[f"{n} task{'s' if n > 1 else ''}" for n in levels]]
    table = [header]
    for name in names:
        line = [name]
        for n in levels:
            r = cell.get((name, n))
            if r is None:
                line.append("n/a")
            elif "skipped" in r:
                line.append("skipped")
            else:
                ratio = f" ({r['ratio']:.2f}x)" if r["ratio"] is not None else ""
                errors = f" [{r['errors']} errors]" if r["errors"] else ""
                line.append(f"{r['rps']:,.0f}/s{ratio}{errors}")
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    cpu = [["client CPU per request", *header[1:]]]
    for name in names:
        line = [name]
        for n in levels:
            r = cell.get((name, n))
            if r is None or "cpu_us" not in r:
                line.append("n/a")
            else:
                ratio = f" ({r['cpu_ratio']:.2f}x)" if r.get("cpu_ratio") else ""
                line.append(f"{r['cpu_us']:,.0f} us{ratio}")
        cpu.append(line)
    cpu_widths = [max(len(row[i]) for row in cpu) for i in range(len(header))]
    lines += [""] + ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, cpu_widths, strict=True)))
                     for row in cpu]
    reasons = dict.fromkeys(f"{r['client']}: {r['skipped']}" for r in rows if "skipped" in r)
    return "\n".join([*lines, *reasons])


if __name__ == "__main__":  # pragma: no cover - manual runs: python -m meshlib._tools.throughput
    print(format_throughput(run_throughput()))
