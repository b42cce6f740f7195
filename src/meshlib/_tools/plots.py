"""`meshlib bench --plot DIR`: PNG plots of a benchmark run (needs matplotlib).

* `latency-<scenario>.png`: the per-request latency CDF of each scenario,
  baseline and meshlib on one log-scaled time axis;
* `throughput.png`: requests per second against concurrent tasks, one line
  per client (bare httpx, AsyncMeshClient on each pool);
* `pick-cost.png`: microseconds per balancer pick against endpoint count;
* `sidecar.png`: bare httpx, the Envoy sidecar and meshlib side by side:
  the slow replica's p99 and share to the slow one, the outage's attempts
  and client CPU per request, and the route table's CPU against none.

matplotlib is an optional extra (`pip install 'httpx-mesh[plot]'`); it is
imported only here, with the non-interactive `Agg` backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import ConfigError

__all__ = ["require_matplotlib", "write_plots"]

_TITLES = {
    "overhead_sync": "Overhead, sync: MeshClient vs httpx.Client (one fast server)",
    "overhead_async": "Overhead, async: AsyncMeshClient vs httpx.AsyncClient (one fast server)",
    "tail": "Tail: healthy + 10x slow + 20%-failing server",
    "slow_replica": "Slow replica: 3 servers, one at 10x latency, 4 tasks",
    "outage": "Outage: 5 servers all answering 503, 4 tasks",
}
_LABELS = {"baseline": "bare httpx", "mesh": "meshlib", "httpx": "bare httpx",
           "envoy": "Envoy sidecar", "meshlib": "meshlib"}
_COLOURS = {"httpx": "#999999", "envoy": "#d62728", "meshlib": "#1f77b4",
            "no routes": "#9ecae1"}
_CLIENT_LABELS = {"httpx": "bare httpx.AsyncClient",
                  "mesh-httpcore": 'AsyncMeshClient pool="httpcore"',
                  "mesh-aiohttp": 'AsyncMeshClient pool="aiohttp"'}


def require_matplotlib() -> None:
    """Raise `ConfigError` naming `httpx-mesh[plot]` if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--plot needs matplotlib, which is not installed ({exc}): "
                          "pip install 'httpx-mesh[plot]'") from None


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(plt: Any, path: Path, title: str, series: Mapping[str, Sequence[float]]) -> None:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for label, seconds in series.items():
        values = sorted(s * 1e3 for s in seconds if s > 0)
        if not values:
            continue
        n = len(values)
        ax.step(values, [(i + 1) / n for i in range(n)], where="post",
                label=f"{_LABELS.get(label, label)} ({n:,} requests)")
    ax.set_xscale("log")
    ticker = plt.matplotlib.ticker
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("latency per request (ms, log scale)")
    ax.set_ylabel("fraction of requests at or below")
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _throughput(plt: Any, path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    clients = list(dict.fromkeys(r["client"] for r in rows if "rps" in r))
    levels = sorted({r["concurrency"] for r in rows})
    for client in clients:
        points = sorted((r["concurrency"], r["rps"]) for r in rows
                        if r["client"] == client and "rps" in r)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=_CLIENT_LABELS.get(client, client))
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(n) for n in levels])
    ax.set_xlabel("concurrent tasks (log scale)")
    ax.set_ylabel("requests per second")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput: 4 loopback servers at 0 ms (higher is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pick_cost(plt: Any, path: Path, rows: Sequence[Mapping[str, Any]],
               goal_us: float) -> None:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    keys = list(dict.fromkeys((r["balancer"], r["open_breakers"]) for r in rows))
    sizes = sorted({r["endpoints"] for r in rows})
    for balancer, opened in keys:
        points = sorted((r["endpoints"], r["us"]) for r in rows
                        if r["balancer"] == balancer and r["open_breakers"] == opened)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                linestyle="--" if opened else "-",
                label=f"{balancer}, {'one breaker open' if opened else 'all closed'}")
    ax.axhline(goal_us, color="grey", linestyle=":", label=f"goal {goal_us:g} us")
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{n:,}" for n in sizes])
    ax.set_xlabel("endpoints in the service (log scale)")
    ax.set_ylabel("microseconds per pick")
    ax.set_ylim(bottom=0)
    ax.set_title("Balancer pick cost, warm endpoints (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _bars(ax: Any, title: str, values: Mapping[str, float], unit: str,
          goal: float | None) -> None:
    names = [n for n, v in values.items() if v == v]  # NaN: not run
    ax.bar([_LABELS.get(n, n) for n in names], [values[n] for n in names],
           color=[_COLOURS.get(n, "#1f77b4") for n in names])
    if goal is not None:
        ax.axhline(goal, color="grey", linestyle=":", label=f"goal {goal:g} {unit}")
        ax.legend(loc="best", fontsize="small")
    ax.set_title(title, fontsize="medium")
    ax.set_ylabel(unit)
    ax.tick_params(axis="x", labelsize="small")
    ax.grid(True, axis="y", alpha=0.3)


def _side_values(sides: Mapping[str, Any], key: str, scale: float = 1.0) -> dict[str, float]:
    return {name: (float(side[key]) * scale if key in side else float("nan"))
            for name, side in sides.items()}


def _sidecar(plt: Any, path: Path, scenarios: Mapping[str, Any]) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(12, 7), dpi=110)
    slow, outage = scenarios["slow_replica"], scenarios["outage"]
    _bars(axes[0][0], "slow replica: p99", _side_values(slow["sides"], "p99_ms"), "ms", None)
    _bars(axes[0][1], "slow replica: share to the slow one",
          _side_values(slow["sides"], "share_to_slow", 100.0), "%",
          slow["share_goal"] * 100)
    routes = scenarios.get("routes")
    if routes:
        _bars(axes[0][2], "client CPU per request: route table",
              {"no routes": routes["plain_us"], "3 rules": routes["routed_us"]}, "us", None)
    else:
        axes[0][2].axis("off")
    _bars(axes[1][0], "outage: attempts per request",
          _side_values(outage["sides"], "attempts_per_request"), "attempts",
          outage["attempts_goal"])
    _bars(axes[1][1], "outage: p50", _side_values(outage["sides"], "p50_ms"), "ms", None)
    _bars(axes[1][2], "outage: client CPU per request",
          _side_values(outage["sides"], "cpu_ms_per_request"), "ms", outage["cpu_goal_ms"])
    fig.suptitle("bare httpx, Envoy sidecar and meshlib (lower is better)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(directory: str | Path, latencies: Mapping[str, Mapping[str, Sequence[float]]],
                throughput: Sequence[Mapping[str, Any]] | None = None,
                pick: Sequence[Mapping[str, Any]] | None = None,
                pick_goal_us: float = 5.0, *,
                scenarios: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the PNG plots into `directory` (created if missing); return their paths.

    `latencies` maps a scenario name to its series (`"baseline"`, `"mesh"`)
    of per-request latencies in seconds; `throughput` and `pick` are the rows
    of `run_throughput()` and `run_pick_cost()`;
    `scenarios` (with `slow_replica` and `outage`) adds `sidecar.png`.
    Raises `ConfigError` naming `httpx-mesh[plot]` when matplotlib is missing.
    """
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for scenario, series in latencies.items():
        path = out / f"latency-{scenario.replace('_', '-')}.png"
        _cdf(plt, path, _TITLES.get(scenario, scenario), series)
        written.append(path)
    if throughput:
        path = out / "throughput.png"
        _throughput(plt, path, throughput)
        written.append(path)
    if pick:
        path = out / "pick-cost.png"
        _pick_cost(plt, path, pick, pick_goal_us)
        written.append(path)
    if scenarios and "slow_replica" in scenarios and "outage" in scenarios:
        path = out / "sidecar.png"
        _sidecar(plt, path, scenarios)
        written.append(path)
    return written
