"""`meshlib bench`: every scenario and measurement, each against its baseline in one run.

Scenarios (each measured in the same run as its baseline):

`overhead_sync` / `overhead_async` (`.overhead`)
    sequential time per request and p50/p99/p99.9 of `MeshClient` against
    `httpx.Client` (sync; and through an Envoy sidecar when one is found)
    and of `AsyncMeshClient` against `httpx.AsyncClient`, one fast server.
`slow_replica` / `outage` (`.sidecar`)
    four async tasks; bare httpx round robin, an Envoy sidecar (`.envoy`)
    and `AsyncMeshClient`: three servers, one at 10x latency; five servers
    all answering 503.
`tail` (`.tail`)
    a healthy, a slow and a 20%-failing server; round robin against p2c-ewma.
`routes` (`.routes_cost`)
    client CPU per request with a three-rule route table against none.

Measurements of their own modules, in the same run: `throughput`
(`.throughput`), `pick_cost` (`.pick`), `memory`
(`.memory`), `large_set` (`.large_set`). `.report` renders
the table: every figure with its goal and a met/missed mark (`.goals`).

Every scenario's per-request latencies are kept: percentiles go into the
result, and `plot_dir` draws their CDFs (`.plots`, needs matplotlib).

The servers run in a child process so that they do not share the client's
interpreter lock: on a two-core machine an in-process server thread takes
the GIL away from the client at every request, adds the same absolute time
to baseline and mesh and so hides part of the mesh's overhead.

Every load loop is bounded both in request count and in time.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx

from .._errors import ConfigError
from .envoy import HOW_TO_GET, find_envoy
from .overhead import OVERHEAD_GOAL, run_overhead_async, run_overhead_sync
from .report import format_table
from .tail import run_tail, servers
from .throughput import _backend_cpu

__all__ = ["OVERHEAD_GOAL", "format_table", "run_bench"]


def _envoy_version(binary: str) -> str:
    """`envoy --version`'s version string, or the binary's path if it will not say."""
    import subprocess

    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return binary
    for word in out.split():
        if "/" in word and word[0].isalnum() and word.count("/") >= 2:
            return f"{word.split('/')[1]} ({binary})"
    return binary


def _meta(quick: bool, mode: str, envoy: str | None) -> dict[str, Any]:
    try:
        from importlib.metadata import version

        mesh_version = version("meshlib")
    except Exception:
        mesh_version = "unknown"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    meta: dict[str, Any] = {
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
        "load": load,
        "servers": "child process" if mode == "process" else "thread",
        "envoy": _envoy_version(envoy) if envoy else None,
    }
    if envoy is None:
        meta["envoy_missing"] = HOW_TO_GET
    return meta


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


def _sizes(quick: bool) -> dict[str, Any]:
    """How much each scenario sends: a short run for tests, or the full one."""
    if quick:
        return {"rounds": 4, "per_round": 40, "warmup": 40, "budget": 3.0,
                "async_rounds": 4, "async_per_round": 30,
                "tail": {"n": 60, "base_delay_ms": 1.0, "budget_s": 4.0},
                "slow": {"base_ms": 2.0, "requests": 60, "budget_s": 5.0},
                "outage": {"requests": 100, "budget_s": 5.0},
                "routes": {"rounds": 3, "per_round": 40, "budget_s": 3.0},
                "tput": {"requests": 150, "rounds": 1, "budget_s": 3.0},
                "pick": {"picks": 300, "repeats": 2}, "memory_n": 100,
                "large": {"small": 4, "large": 50, "requests": 100, "rounds": 1,
                          "budget_s": 5.0}}
    return {"rounds": 15, "per_round": 400, "warmup": 400, "budget": 30.0,
            "async_rounds": 15, "async_per_round": 200,
            "tail": {"n": 600, "base_delay_ms": 2.0, "budget_s": 40.0},
            "slow": {"base_ms": 5.0, "requests": 1000, "budget_s": 40.0},
            "outage": {"requests": 1000, "budget_s": 30.0},
            "routes": {"rounds": 11, "per_round": 400, "budget_s": 30.0},
            "tput": {"requests": 3000, "rounds": 2, "budget_s": 20.0},
            "pick": {"picks": 20000, "repeats": 5}, "memory_n": 1000,
            "large": {"small": 4, "large": 1000, "requests": 2000, "rounds": 3,
                      "budget_s": 60.0}}


def _check_plot_dir(plot_dir: str | Path) -> None:
    from .plots import require_matplotlib

    require_matplotlib()
    try:  # fail now, not after minutes of measuring
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--plot {str(plot_dir)!r}: cannot create the directory "
                          f"({exc})") from None


def run_bench(
    json_output: bool = False,
    quick: bool = False,
    *,
    out: TextIO | None = None,
    progress: Callable[[str], None] | None = None,
    servers: Literal["process", "thread"] = "process",
    plot_dir: str | Path | None = None,
    envoy: str | Literal[False] | None = None,
) -> dict[str, Any]:
    """Run every scenario and measurement, print a table (or JSON) to `out`, return the result.

    The result has `meta`, `scenarios` (`overhead_sync`,
    `overhead_async`, `slow_replica`, `outage`, `tail`, `routes`),
    `throughput` (rows of `run_throughput()`),
    `pick_cost` (rows of `run_pick_cost()`), `memory` (rows of
    `run_memory()`), `large_set` (`run_large_set()`)
    and `plots` (the PNG files written, empty without `plot_dir`).
    `quick=True` runs small versions (about a minute in all) for tests.
    Progress notes go to `progress` (default: stderr, unless JSON).
    `servers="thread"` runs the sequential and tail scenarios' loopback
    servers in this process instead of a child process (for comparison; less
    fair on few cores). `plot_dir` writes PNG plots there (needs matplotlib,
    extra `httpx-mesh[plot]`; checked before anything runs: `ConfigError` if
    missing). `envoy` is the Envoy binary for the sidecar column (default:
    `find_envoy()`; `False`: no sidecar).
    """
    from .large_set import run_large_set
    from .memory import run_memory
    from .pick import PICK_GOAL_US, run_pick_cost
    from .routes_cost import run_routes_cost
    from .sidecar import run_outage, run_slow_replica
    from .throughput import run_throughput

    if plot_dir is not None:
        _check_plot_dir(plot_dir)
    envoy_binary = find_envoy() if envoy is None else (envoy or None)
    stream = sys.stdout if out is None else out

    def note(message: str) -> None:
        if progress is not None:
            progress(message)
        elif not json_output:
            print(message, file=sys.stderr, flush=True)

    size = _sizes(quick)
    cpu = _backend_cpu()
    samples: dict[str, dict[str, list[float]]] = {
        name: {} for name in ("overhead_sync", "overhead_async", "tail", "slow_replica",
                              "outage")}
    scenarios: dict[str, Any] = {}
    with servers_for(servers, cpu) as server:
        url = f"http://{server.endpoints[0]}/"
        note("sequential: MeshClient vs httpx.Client"
             f"{' vs Envoy' if envoy_binary else ''} ...")
        sidecar = _sidecar(envoy_binary, server.endpoints)
        try:
            scenarios["overhead_sync"] = run_overhead_sync(
                server.url, url, rounds=size["rounds"], per_round=size["per_round"],
                warmup=size["warmup"], budget_s=size["budget"],
                samples=samples["overhead_sync"],
                envoy_url=sidecar.url if sidecar is not None else None)
        finally:
            if sidecar is not None:
                sidecar.stop()
        note("sequential: AsyncMeshClient vs httpx.AsyncClient ...")
        scenarios["overhead_async"] = run_overhead_async(
            server.url, url, rounds=size["async_rounds"], per_round=size["async_per_round"],
            warmup=size["warmup"] // 2, budget_s=size["budget"],
            samples=samples["overhead_async"])
    note("slow replica: httpx, Envoy, AsyncMeshClient over 3 servers, one 10x slower ...")
    scenarios["slow_replica"] = run_slow_replica(envoy_binary, cpu=cpu,
                                                 samples=samples["slow_replica"],
                                                 **size["slow"])
    note("outage: httpx, Envoy, AsyncMeshClient over 5 servers answering 503 ...")
    scenarios["outage"] = run_outage(envoy_binary, cpu=cpu, samples=samples["outage"],
                                     **size["outage"])
    note("tail latency: round-robin httpx vs MeshClient p2c-ewma ...")
    scenarios["tail"] = run_tail(mode=servers, samples=samples["tail"], **size["tail"])
    note("route table: client CPU with three rules vs none ...")
    scenarios["routes"] = run_routes_cost(cpu=cpu, **size["routes"])
    note("throughput: httpx.AsyncClient vs AsyncMeshClient at 1, 16, 64 tasks ...")
    tput = size["tput"]
    throughput = run_throughput((1, 16, 64), tput["requests"], rounds=tput["rounds"],
                                budget_s=tput["budget_s"])
    note("pick cost: ServiceRuntime.pick at 10, 100, 1,000 endpoints ...")
    pick_cost = run_pick_cost((10, 100, 1000), **size["pick"])
    note(f"memory: state and idle pool per endpoint, {size['memory_n']:,} endpoints ...")
    memory = run_memory(size["memory_n"])
    large = size["large"]
    note(f"large set: request cost at {large['large']:,} vs {large['small']} endpoints ...")
    large_set = run_large_set(large["small"], large["large"], requests=large["requests"],
                              rounds=large["rounds"], budget_s=large["budget_s"])

    plots: list[str] = []
    if plot_dir is not None:
        from .plots import write_plots

        note(f"plots: writing PNG files into {plot_dir} ...")
        plots = [str(p) for p in write_plots(plot_dir, samples, throughput, pick_cost,
                                             PICK_GOAL_US, scenarios=scenarios)]
    result = {"meta": _meta(quick, servers, envoy_binary), "scenarios": scenarios,
              "throughput": throughput, "pick_cost": pick_cost, "memory": memory,
              "large_set": large_set, "plots": plots}
    if json_output:
        print(json.dumps(result, indent=2, sort_keys=True), file=stream)
    else:
        print(format_table(result), file=stream)
    return result


def servers_for(mode: Literal["process", "thread"], cpu: int | None) -> Any:
    """The one fast server of the sequential scenarios."""
    return servers(mode, 1, cpu=cpu)


def _sidecar(binary: str | None, addresses: list[str]) -> Any:
    """A started `EnvoySidecar` in front of `addresses`, or `None`."""
    if binary is None:
        return None
    from .envoy import EnvoySidecar

    return EnvoySidecar(binary, addresses).start()
