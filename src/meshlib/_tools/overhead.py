"""Sequential overhead: MeshClient against httpx.Client (and the async twins), one server.

Sequential keep-alive GETs to one fast loopback server. After a warm-up,
rounds of each client are interleaved (the order alternates between rounds)
to cancel drift; the time per request is the median over rounds and the
ratio the median of per-round ratios. Every request's latency is kept for
p50, p99 and p99.9, and the CPU time the client's thread spent on each
(`time.thread_time`: what the request cost the client, without the time
it waited for a CPU, so a loaded machine's scheduling does not make its
tail). With `envoy_url` (a sidecar in front of the same server), the sync
run adds a third side: a bare `httpx.Client` through it.

Goals: the time per request at most `OVERHEAD_GOAL` times bare httpx's;
p50 at most `P50_GOAL_US` microseconds above bare; p99 at most
`P99_GOAL` times bare's (and, with a sidecar, at most its p99).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from typing import Any

import httpx

from .stats import latency_summary

__all__ = ["OVERHEAD_GOAL", "P50_GOAL_US", "P99_GOAL", "run_overhead_async",
           "run_overhead_sync"]

#: time per request, meshlib over bare httpx
OVERHEAD_GOAL = 1.05
#: p50 above bare httpx's, in microseconds
P50_GOAL_US = 50.0
#: p99, meshlib over bare httpx
P99_GOAL = 1.05
_SERVICE = "bench"


def _deltas(start: float, stamps: list[float]) -> list[float]:
    """Per-request latencies from the end time of each request (one clock read each)."""
    return [b - a for a, b in zip([start, *stamps], stamps, strict=False)]


def _sync_segment(client: httpx.Client, url: str, n: int, deadline: float,
                  sink: list[float] | None = None,
                  cpu_sink: list[float] | None = None) -> tuple[float, int]:
    """Send up to `n` sequential GETs; return (seconds per request, non-200 count).

    With `sink`, each request's latency is appended to it (seconds); with
    `cpu_sink`, the CPU time this thread spent on each (`time.thread_time`).
    """
    gc.collect()
    bad = 0
    stamps: list[float] = []
    cpu: list[float] = []
    clock, cpu_clock = time.perf_counter, time.thread_time
    start, cpu_start = clock(), cpu_clock()
    for _ in range(n):
        if client.get(url).status_code != 200:
            bad += 1
        stamps.append(clock())
        cpu.append(cpu_clock())
        if len(stamps) % 64 == 0 and stamps[-1] > deadline:
            break
    return _segment_result(start, cpu_start, stamps, cpu, bad, sink, cpu_sink)


def _segment_result(start: float, cpu_start: float, stamps: list[float], cpu: list[float],
                    bad: int, sink: list[float] | None,
                    cpu_sink: list[float] | None) -> tuple[float, int]:
    """Hand a segment's per-request times to the sinks; its mean time and failures."""
    if sink is not None:
        sink.extend(_deltas(start, stamps))
    if cpu_sink is not None:
        cpu_sink.extend(_deltas(cpu_start, cpu))
    return (stamps[-1] - start) / len(stamps), bad


async def _async_segment(
    client: httpx.AsyncClient, url: str, n: int, deadline: float,
    sink: list[float] | None = None, cpu_sink: list[float] | None = None,
) -> tuple[float, int]:
    """Async version of `_sync_segment()`."""
    gc.collect()
    bad = 0
    stamps: list[float] = []
    cpu: list[float] = []
    clock, cpu_clock = time.perf_counter, time.thread_time
    start, cpu_start = clock(), cpu_clock()
    for _ in range(n):
        if (await client.get(url)).status_code != 200:
            bad += 1
        stamps.append(clock())
        cpu.append(cpu_clock())
        if len(stamps) % 64 == 0 and stamps[-1] > deadline:
            break
    return _segment_result(start, cpu_start, stamps, cpu, bad, sink, cpu_sink)


def _summarise(times: dict[str, list[float]], samples: dict[str, list[float]],
               cpu: dict[str, list[float]], per_round: int, bad: int) -> dict[str, Any]:
    base_times, mesh_times = times["baseline"], times["mesh"]
    ratios = [m / b for b, m in zip(base_times, mesh_times, strict=True)]
    ratio = statistics.median(ratios)
    latency = {k: latency_summary(v) for k, v in samples.items()}
    base, mesh = latency["baseline"], latency["mesh"]
    p50_delta_us = (mesh["p50_ms"] - base["p50_ms"]) * 1e3
    p99_ratio = mesh["p99_ms"] / base["p99_ms"]
    result: dict[str, Any] = {
        "baseline_us": statistics.median(base_times) * 1e6,
        "mesh_us": statistics.median(mesh_times) * 1e6,
        "ratio": ratio,
        "ratios": [round(r, 4) for r in ratios],
        "ratio_of_medians": statistics.median(mesh_times) / statistics.median(base_times),
        "ratio_of_minimums": min(mesh_times) / min(base_times),
        "rounds": len(ratios),
        "requests_per_round": per_round,
        "goal": OVERHEAD_GOAL,
        "ok": ratio <= OVERHEAD_GOAL,
        "errors": bad,
        "latency": latency,
        "p50_delta_us": round(p50_delta_us, 1),
        "p50_goal_us": P50_GOAL_US,
        "p50_ok": p50_delta_us <= P50_GOAL_US,
        "p99_ratio": round(p99_ratio, 4),
        "p99_goal": P99_GOAL,
        "p99_ok": p99_ratio <= P99_GOAL,
        "cpu_latency": {k: latency_summary(v) for k, v in cpu.items()},
    }
    if "envoy" in times:
        envoy = latency["envoy"]
        result["envoy_us"] = statistics.median(times["envoy"]) * 1e6
        result["envoy_p50_delta_us"] = round((envoy["p50_ms"] - base["p50_ms"]) * 1e3, 1)
        result["p99_ok"] = result["p99_ok"] and mesh["p99_ms"] <= envoy["p99_ms"]
    return result


def run_overhead_sync(static_url: str, url: str, *, rounds: int, per_round: int, warmup: int,
                      budget_s: float, samples: dict[str, list[float]] | None = None,
                      envoy_url: str | None = None) -> dict[str, Any]:
    """MeshClient against httpx.Client (and through `envoy_url` when given).

    `static_url` is the server as a `static://` URL, `url` its
    `http://` URL. `samples` receives each side's per-request latencies
    (seconds) under `"baseline"`, `"mesh"` (and `"envoy"`). Stops
    after `budget_s` seconds once three rounds are done.
    """
    import meshlib

    samples = {} if samples is None else samples
    names = ["baseline", "mesh", *(["envoy"] if envoy_url else [])]
    for name in names:
        samples.setdefault(name, [])
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {"baseline": [], "mesh": []}
    deadline = time.perf_counter() + budget_s
    bad = 0
    with (
        httpx.Client() as base,
        httpx.Client() as sidecar,
        meshlib.MeshClient(services={_SERVICE: static_url}) as mesh,
    ):
        sides = {"baseline": (base, url), "mesh": (mesh, f"http://{_SERVICE}/"),
                 "envoy": (sidecar, f"{envoy_url}/")}
        order = [(name, *sides[name]) for name in names]
        for _, client, target in order:
            _sync_segment(client, target, warmup, deadline)
        for i in range(rounds):
            shift = i % len(order)
            for name, client, target in order[shift:] + order[:shift]:
                seconds, failed = _sync_segment(client, target, per_round, deadline + 5.0,
                                                samples[name], cpu.get(name))
                times[name].append(seconds)
                bad += failed
            if time.perf_counter() > deadline and len(times["baseline"]) >= 3:
                break
    return _summarise(times, samples, cpu, per_round, bad)


def run_overhead_async(static_url: str, url: str, *, rounds: int, per_round: int, warmup: int,
                       budget_s: float,
                       samples: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """AsyncMeshClient against httpx.AsyncClient, as `run_overhead_sync()`."""
    import meshlib

    each: dict[str, list[float]] = {} if samples is None else samples
    each.setdefault("baseline", [])
    each.setdefault("mesh", [])

    async def main() -> dict[str, Any]:
        deadline = time.perf_counter() + budget_s
        times: dict[str, list[float]] = {"baseline": [], "mesh": []}
        cpu: dict[str, list[float]] = {"baseline": [], "mesh": []}
        bad = 0
        async with (
            httpx.AsyncClient() as base,
            meshlib.AsyncMeshClient(services={_SERVICE: static_url}) as mesh,
        ):
            mesh_url = f"http://{_SERVICE}/"
            await _async_segment(base, url, warmup, deadline)
            await _async_segment(mesh, mesh_url, warmup, deadline)
            for i in range(rounds):
                order: list[tuple[str, httpx.AsyncClient, str]] = [
                    ("baseline", base, url), ("mesh", mesh, mesh_url)]
                if i % 2:
                    order.reverse()
                for name, client, target in order:
                    seconds, failed = await _async_segment(client, target, per_round,
                                                           deadline + 5.0, each[name],
                                                           cpu[name])
                    times[name].append(seconds)
                    bad += failed
                if time.perf_counter() > deadline and len(times["baseline"]) >= 3:
                    break
        return _summarise(times, each, cpu, per_round, bad)

    return asyncio.run(main())
