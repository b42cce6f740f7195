"""``meshlib bench``: benchmark scenarios, each against a bare httpx baseline.

Scenarios (each measured in the same run as its baseline):

``overhead_sync`` / ``overhead_async``
    Per-request wall time of :class:`meshlib.MeshClient` against
    :class:`httpx.Client` (and :class:`meshlib.AsyncMeshClient` against
    :class:`httpx.AsyncClient`), sequential keep-alive requests to one fast
    loopback server.  After a warm-up, rounds of baseline and mesh are
    interleaved (alternating which goes first) to cancel drift; the result
    is the median of the per-round ratios.  Goal: ratio <= 1.10.

``tail``
    Three loopback servers: one healthy, one slow (10x the base delay) and
    one failing 20% of requests with 503.  A round-robin client (a plain
    ``httpx.Client`` cycling over the three URLs) against a ``MeshClient``
    with the ``p2c-ewma`` balancer and default retries: p50, p99, success
    rate and attempts per request.

Measurements of their own modules, in the same run:

``throughput`` (:mod:`.throughput`)
    requests/s at 1, 16 and 64 tasks: bare ``httpx.AsyncClient`` against
    ``AsyncMeshClient`` with ``pool="httpcore"`` and ``pool="aiohttp"``.
``pick_cost`` (:mod:`.pick`)
    microseconds per ``ServiceRuntime.pick`` at 10, 100 and 1,000 warm endpoints.
``memory`` (:mod:`.memory`)
    bytes per endpoint: its state plus an idle pool, for each pool.
``large_set`` (:mod:`.large_set`)
    a request's client CPU time at 1,000 warm endpoints against 4.

Every scenario's per-request latencies are kept: percentiles go into the
result, and ``plot_dir`` draws their CDFs (:mod:`.plots`, needs matplotlib).

The servers are a :class:`meshlib.testing.Fleet` in a child process (``process=True``)
so that they do not share the client's interpreter lock: on a two-core
machine an in-process server thread takes the GIL away from the client at
every request, adds the same absolute time to baseline and mesh and so
hides part of the mesh's overhead (the ratio moves toward 1).

Every load loop is bounded both in request count and in time.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx

from .._errors import ConfigError
from ..testing import Fleet
from .stats import percentile

__all__ = ["run_bench"]

OVERHEAD_GOAL = 1.10
_SERVICE = "bench"


def _backend_cpu() -> int | None:
    """The CPU the child server process is pinned to (the last one), if pinning helps."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return cpus[-1] if len(cpus) >= 2 else None


# -- scenario (a): overhead ------------------------------------------------------


def _deltas(start: float, stamps: list[float]) -> list[float]:
    """Per-request latencies from the end time of each request (one clock read each)."""
    return [b - a for a, b in zip([start, *stamps], stamps, strict=False)]


def _sync_segment(client: httpx.Client, url: str, n: int, deadline: float,
                  sink: list[float] | None = None) -> tuple[float, int]:
    """Send up to ``n`` sequential GETs; return (seconds per request, non-200 count).

    With ``sink``, each request's latency is appended to it (seconds).
    """
    gc.collect()
    bad = 0
    done = 0
    stamps: list[float] = []
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        if client.get(url).status_code != 200:
            bad += 1
        stamps.append(clock())
        done += 1
        if done % 64 == 0 and stamps[-1] > deadline:
            break
    if sink is not None:
        sink.extend(_deltas(start, stamps))
    return (stamps[-1] - start) / done, bad


async def _async_segment(
    client: httpx.AsyncClient, url: str, n: int, deadline: float,
    sink: list[float] | None = None,
) -> tuple[float, int]:
    """Async version of :func:`_sync_segment`."""
    gc.collect()
    bad = 0
    done = 0
    stamps: list[float] = []
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        if (await client.get(url)).status_code != 200:
            bad += 1
        stamps.append(clock())
        done += 1
        if done % 64 == 0 and stamps[-1] > deadline:
            break
    if sink is not None:
        sink.extend(_deltas(start, stamps))
    return (stamps[-1] - start) / done, bad


def _latency_summary(seconds: list[float]) -> dict[str, float]:
    """Percentiles of per-request latencies, in milliseconds."""
    if not seconds:
        return {}
    return {
        "p50_ms": round(percentile(seconds, 50) * 1e3, 4),
        "p90_ms": round(percentile(seconds, 90) * 1e3, 4),
        "p99_ms": round(percentile(seconds, 99) * 1e3, 4),
        "p999_ms": round(percentile(seconds, 99.9) * 1e3, 4),
        "max_ms": round(max(seconds) * 1e3, 4),
        "requests": len(seconds),
    }


def _summarise_overhead(
    base_times: list[float], mesh_times: list[float], per_round: int
) -> dict[str, Any]:
    ratios = [m / b for b, m in zip(base_times, mesh_times, strict=True)]
    ratio = statistics.median(ratios)
    return {
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
    }


def _overhead_sync(
    static_url: str, url: str, *, rounds: int, per_round: int, warmup: int, budget_s: float,
    samples: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    import meshlib

    samples = {"baseline": [], "mesh": []} if samples is None else samples

    deadline = time.perf_counter() + budget_s
    base_times: list[float] = []
    mesh_times: list[float] = []
    bad = 0
    with (
        httpx.Client() as base,
        meshlib.MeshClient(services={_SERVICE: static_url}) as mesh,
    ):
        mesh_url = f"http://{_SERVICE}/"
        _sync_segment(base, url, warmup, deadline)
        _sync_segment(mesh, mesh_url, warmup, deadline)
        for i in range(rounds):
            order: list[tuple[httpx.Client, str, list[float], list[float]]] = [
                (base, url, base_times, samples["baseline"]),
                (mesh, mesh_url, mesh_times, samples["mesh"]),
            ]
            if i % 2:
                order.reverse()
            for client, target, sink, each in order:
                seconds, failed = _sync_segment(client, target, per_round, deadline + 5.0, each)
                sink.append(seconds)
                bad += failed
            if time.perf_counter() > deadline and len(base_times) >= 3:
                break
    result = _summarise_overhead(base_times, mesh_times, per_round)
    result["errors"] = bad
    result["latency"] = {k: _latency_summary(v) for k, v in samples.items()}
    return result


def _overhead_async(
    static_url: str, url: str, *, rounds: int, per_round: int, warmup: int, budget_s: float,
    samples: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    import meshlib

    each: dict[str, list[float]] = {"baseline": [], "mesh": []} if samples is None else samples

    async def main() -> dict[str, Any]:
        deadline = time.perf_counter() + budget_s
        base_times: list[float] = []
        mesh_times: list[float] = []
        bad = 0
        async with (
            httpx.AsyncClient() as base,
            meshlib.AsyncMeshClient(services={_SERVICE: static_url}) as mesh,
        ):
            mesh_url = f"http://{_SERVICE}/"
            await _async_segment(base, url, warmup, deadline)
            await _async_segment(mesh, mesh_url, warmup, deadline)
            for i in range(rounds):
                order: list[tuple[httpx.AsyncClient, str, list[float], list[float]]] = [
                    (base, url, base_times, each["baseline"]),
                    (mesh, mesh_url, mesh_times, each["mesh"]),
                ]
                if i % 2:
                    order.reverse()
                for client, target, sink, per_request in order:
                    seconds, failed = await _async_segment(
                        client, target, per_round, deadline + 5.0, per_request
                    )
                    sink.append(seconds)
                    bad += failed
                if time.perf_counter() > deadline and len(base_times) >= 3:
                    break
        result = _summarise_overhead(base_times, mesh_times, per_round)
        result["errors"] = bad
        result["latency"] = {k: _latency_summary(v) for k, v in each.items()}
        return result

    return asyncio.run(main())


# -- scenario (b): tail latency ---------------------------------------------------


def _tail_stats(
    latencies: list[float], ok: int, attempts: int, by_backend: dict[str, int], elapsed: float
) -> dict[str, Any]:
    n = len(latencies)
    return {
        "requests": n,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "mean_ms": (statistics.fmean(latencies) * 1e3) if latencies else float("nan"),
        "success_rate": ok / n if n else float("nan"),
        "attempts": attempts,
        "attempts_per_request": attempts / n if n else float("nan"),
        "answered_by": dict(sorted(by_backend.items())),
        "seconds": elapsed,
    }


def _tail_round_robin(urls: list[str], n: int, budget_s: float,
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
    return _tail_stats(latencies, ok, len(latencies), by_backend, time.perf_counter() - start)


def _tail_mesh(static_url: str, n: int, budget_s: float,
               latencies: list[float]) -> dict[str, Any]:
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
    return _tail_stats(latencies, ok, attempts, by_backend, time.perf_counter() - start)


def _servers(mode: Literal["process", "thread"], n: int, latency: float = 0.0,
             **kwargs: Any) -> Fleet:
    """Loopback endpoints in a child process (default) or in a thread of this one."""
    if mode == "thread":
        kwargs.pop("cpu", None)
    return Fleet(n, latency=latency, process=mode == "process", **kwargs)


def _tail(
    *, n: int, base_delay_ms: float, budget_s: float, mode: Literal["process", "thread"],
    samples: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    samples = {"baseline": [], "mesh": []} if samples is None else samples
    delays = [base_delay_ms, base_delay_ms * 10, base_delay_ms]
    with _servers(mode, 3, latency=base_delay_ms / 1000.0, seed=1234) as fleet:
        fleet.set(1, latency=delays[1] / 1000.0)
        fleet.set(2, error_rate=0.2)
        roles = dict(zip(fleet.endpoints, ["healthy", "slow", "failing-20%"], strict=True))
        baseline = _tail_round_robin([f"http://{e}" for e in fleet.endpoints], n, budget_s / 2,
                                     samples["baseline"])
        mesh = _tail_mesh(fleet.url, n, budget_s / 2, samples["mesh"])
    for side in (baseline, mesh):
        side["answered_by"] = {roles.get(k, k): v for k, v in side["answered_by"].items()}
    return {
        "servers": {"healthy_ms": delays[0], "slow_ms": delays[1], "failing_pct": 20},
        "baseline": baseline,
        "mesh": mesh,
        "p50_ratio": mesh["p50_ms"] / baseline["p50_ms"],
        "p99_ratio": mesh["p99_ms"] / baseline["p99_ms"],
        "latency": {k: _latency_summary(v) for k, v in samples.items()},
    }


# -- driver -----------------------------------------------------------------------


def _meta(quick: bool, mode: str) -> dict[str, Any]:
    try:
        from importlib.metadata import version

        mesh_version = version("meshlib")
    except Exception:
        mesh_version = "unknown"
    return {
        "quick": quick,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "httpx": httpx.__version__,
        "meshlib": mesh_version,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "system": platform.system(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "servers": "child process" if mode == "process" else "thread",
    }


def _cpu_model() -> str:
    """The CPU's model name (Linux), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(value: float, unit: str = "", digits: int = 2) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def format_table(result: dict[str, Any]) -> str:
    """Render :func:`run_bench`'s result as a plain-text table."""
    meta = result["meta"]
    sc = result["scenarios"]
    rows: list[tuple[str, str, str, str]] = []
    for key, label in (("overhead_sync", "sync"), ("overhead_async", "async")):
        o = sc[key]
        ok = "ok" if o["ok"] else f"above goal {o['goal']:.2f}"
        rows.append(
            (
                f"overhead {label}: time per request",
                _fmt(o["baseline_us"], " us", 0),
                _fmt(o["mesh_us"], " us", 0),
                f"{o['ratio']:.3f}x ({ok})",
            )
        )
    t = sc["tail"]
    b, m = t["baseline"], t["mesh"]
    rows += [
        ("tail: p50", _fmt(b["p50_ms"], " ms"), _fmt(m["p50_ms"], " ms"), f"{t['p50_ratio']:.2f}x"),
        ("tail: p99", _fmt(b["p99_ms"], " ms"), _fmt(m["p99_ms"], " ms"), f"{t['p99_ratio']:.2f}x"),
        (
            "tail: success rate",
            _fmt(b["success_rate"] * 100, " %", 1),
            _fmt(m["success_rate"] * 100, " %", 1),
            "",
        ),
        (
            "tail: attempts per request",
            _fmt(b["attempts_per_request"]),
            _fmt(m["attempts_per_request"]),
            "",
        ),
    ]
    header = ("scenario", "httpx baseline", "meshlib", "mesh / baseline")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)

    def fmt_row(r: tuple[str, str, str, str]) -> str:
        return "  ".join(
            [r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]), r[3]]
        ).rstrip()

    servers = t["servers"]
    lines = [
        f"meshlib bench{' (quick)' if meta['quick'] else ''}: meshlib {meta['meshlib']}, "
        f"httpx {meta['httpx']}, {meta['implementation']} {meta['python']}, "
        f"{meta['cpus']} CPUs, servers in a {meta['servers']}",
        f"{meta.get('date', '')}, {meta.get('cpu_model', '')}",
        "",
        fmt_row(header),
        line,
        *[fmt_row(r) for r in rows],
        "",
        f"overhead: median of {sc['overhead_sync']['rounds']} interleaved rounds of "
        f"{sc['overhead_sync']['requests_per_round']} sequential requests (sync), "
        f"{sc['overhead_async']['rounds']} x {sc['overhead_async']['requests_per_round']} "
        f"(async), one loopback server; times are medians over rounds, the ratio is the "
        f"median of per-round ratios; goal ratio <= {OVERHEAD_GOAL:.2f}",
        f"tail: {b['requests']} sequential requests per client over 3 servers "
        f"(healthy {servers['healthy_ms']:g} ms, slow {servers['slow_ms']:g} ms, "
        f"{servers['failing_pct']}% 503); baseline is a round-robin httpx.Client, "
        "meshlib uses p2c-ewma with default retries",
        f"answered by: baseline {b['answered_by']}",
        f"             meshlib  {m['answered_by']}",
    ]
    lines += _extra_sections(result)
    return "\n".join(lines)


def _extra_sections(result: dict[str, Any]) -> list[str]:
    """The table's sections for throughput, pick cost, memory and the large set."""
    from .large_set import format_large_set
    from .memory import MEMORY_GOAL_KIB, format_memory
    from .pick import PICK_GOAL_US, format_pick
    from .throughput import format_throughput

    lines: list[str] = []
    if "throughput" in result:
        lines += ["", "throughput (requests/s; ratio to bare httpx.AsyncClient at the same "
                  "concurrency; 4 servers at 0 ms, best of rounds):",
                  format_throughput(result["throughput"])]
    if "pick_cost" in result:
        lines += ["", f"pick cost (ServiceRuntime.pick, warm endpoints, best loop; goal at most "
                  f"{PICK_GOAL_US:g} us at 1,000 endpoints):",
                  format_pick(result["pick_cost"])]
    if "memory" in result:
        lines += ["", f"memory per endpoint (state and an idle pool, marginal; goal at most "
                  f"{MEMORY_GOAL_KIB:g} KiB):", format_memory(result["memory"])]
    if "large_set" in result:
        lines += ["", "large set (sync MeshClient, client CPU per request, all endpoints warm):",
                  format_large_set(result["large_set"])]
    if result.get("plots"):
        lines += ["", "plots: " + ", ".join(result["plots"])]
    return lines


def run_bench(
    json_output: bool = False,
    quick: bool = False,
    *,
    out: TextIO | None = None,
    progress: Callable[[str], None] | None = None,
    servers: Literal["process", "thread"] = "process",
    plot_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run every scenario and measurement, print a table (or JSON) to ``out``, return the result.

    The result has ``meta``, ``scenarios`` (overhead, tail), ``throughput``
    (rows of :func:`~.throughput.run_throughput`), ``pick_cost`` (rows of
    :func:`~.pick.run_pick_cost`), ``memory`` (rows of
    :func:`~.memory.run_memory`), ``large_set`` (:func:`~.large_set.run_large_set`)
    and ``plots`` (the PNG files written, empty without ``plot_dir``).
    ``quick=True`` runs small versions (well under a minute in all) for tests.
    Progress notes go to ``progress`` (default: stderr, unless JSON).
    ``servers="thread"`` runs the overhead and tail scenarios' loopback servers
    in this process instead of a child process (for comparison; less fair on
    few cores). ``plot_dir`` writes PNG plots there (needs matplotlib, extra
    ``meshlib[plot]``; checked before anything runs: ``ConfigError`` if missing).
    """
    from .large_set import run_large_set
    from .memory import run_memory
    from .pick import PICK_GOAL_US, run_pick_cost
    from .throughput import run_throughput

    if plot_dir is not None:
        from .plots import require_matplotlib

        require_matplotlib()
        try:  # fail now, not after minutes of measuring
            Path(plot_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--plot {str(plot_dir)!r}: cannot create the directory "
                              f"({exc})") from None
    stream = sys.stdout if out is None else out

    def note(message: str) -> None:
        if progress is not None:
            progress(message)
        elif not json_output:
            print(message, file=sys.stderr, flush=True)

    if quick:
        rounds, per_round, warmup, budget = 4, 40, 40, 3.0
        async_rounds, async_per_round = 4, 30
        tail_n, tail_delay, tail_budget = 60, 1.0, 4.0
        tput: dict[str, Any] = {"requests": 150, "rounds": 1, "budget_s": 3.0}
        pick: dict[str, Any] = {"picks": 300, "repeats": 2}
        memory_n = 100
        large: dict[str, Any] = {"small": 4, "large": 50, "requests": 100, "rounds": 1,
                                 "budget_s": 5.0}
    else:
        rounds, per_round, warmup, budget = 15, 400, 400, 30.0
        async_rounds, async_per_round = 15, 200
        tail_n, tail_delay, tail_budget = 600, 2.0, 40.0
        tput = {"requests": 3000, "rounds": 2, "budget_s": 20.0}
        pick = {"picks": 20000, "repeats": 5}
        memory_n = 1000
        large = {"small": 4, "large": 1000, "requests": 2000, "rounds": 3, "budget_s": 60.0}

    samples: dict[str, dict[str, list[float]]] = {
        name: {"baseline": [], "mesh": []} for name in ("overhead_sync", "overhead_async", "tail")
    }
    scenarios: dict[str, Any] = {}
    with _servers(servers, 1, cpu=_backend_cpu()) as server:
        url = f"http://{server.endpoints[0]}/"
        note("overhead: MeshClient vs httpx.Client ...")
        scenarios["overhead_sync"] = _overhead_sync(
            server.url,
            url,
            rounds=rounds,
            per_round=per_round,
            warmup=warmup,
            budget_s=budget,
            samples=samples["overhead_sync"],
        )
        note("overhead: AsyncMeshClient vs httpx.AsyncClient ...")
        scenarios["overhead_async"] = _overhead_async(
            server.url,
            url,
            rounds=async_rounds,
            per_round=async_per_round,
            warmup=warmup // 2,
            budget_s=budget,
            samples=samples["overhead_async"],
        )
    note("tail latency: round-robin httpx vs MeshClient p2c-ewma ...")
    scenarios["tail"] = _tail(
        n=tail_n, base_delay_ms=tail_delay, budget_s=tail_budget, mode=servers,
        samples=samples["tail"],
    )
    note("throughput: httpx.AsyncClient vs AsyncMeshClient at 1, 16, 64 tasks ...")
    throughput = run_throughput((1, 16, 64), tput["requests"], rounds=tput["rounds"],
                                budget_s=tput["budget_s"])
    note("pick cost: ServiceRuntime.pick at 10, 100, 1,000 endpoints ...")
    pick_cost = run_pick_cost((10, 100, 1000), picks=pick["picks"], repeats=pick["repeats"])
    note(f"memory: state and idle pool per endpoint, {memory_n:,} endpoints ...")
    memory = run_memory(memory_n)
    note(f"large set: request cost at {large['large']:,} vs {large['small']} endpoints ...")
    large_set = run_large_set(large["small"], large["large"], requests=large["requests"],
                              rounds=large["rounds"], budget_s=large["budget_s"])

    plots: list[str] = []
    if plot_dir is not None:
        from .plots import write_plots

        note(f"plots: writing PNG files into {plot_dir} ...")
        plots = [str(p) for p in write_plots(plot_dir, samples, throughput, pick_cost,
                                             PICK_GOAL_US)]
    result = {"meta": _meta(quick, servers), "scenarios": scenarios, "throughput": throughput,
              "pick_cost": pick_cost, "memory": memory, "large_set": large_set,
              "plots": plots}
    if json_output:
        print(json.dumps(result, indent=2, sort_keys=True), file=stream)
    else:
        print(format_table(result), file=stream)
    return result
