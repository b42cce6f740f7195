"""`meshlib bench`'s table: every figure with its goal and one met/missed mark.

One row per figure: the bare httpx baseline, the Envoy sidecar (where the
scenario runs through one), meshlib, the goal and the mark (`.goals`:
`met`, `MISSED`, `n/a` when the goal compares with a sidecar that was
not run, `-` for a figure shown for context). Below the table, the
detailed sections of the measurements that have their own modules.
"""

from __future__ import annotations

from typing import Any

from .goals import mark

__all__ = ["format_table"]

Row = tuple[str, str, str, str, str, str]
_DASH = "-"


def _ms(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # missing or NaN
        return "n/a"
    return f"{value:.{digits}f} ms"


def _us(value: float | None) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.0f} us"


def _sequential(name: str, o: dict[str, Any], envoy: bool) -> list[Row]:
    lat = o["latency"]
    base, mesh = lat["baseline"], lat["mesh"]
    side = lat.get("envoy", {})
    has_envoy = envoy and bool(side)

    def e_cell(key: str) -> str:
        return _ms(side.get(key), 3) if has_envoy else _DASH

    p99_goal = f"<= {o['p99_goal']:.2f}x bare" + (", <= Envoy" if has_envoy else "")
    return [
        (f"{name}: time per request", _us(o["baseline_us"]),
         _us(o.get("envoy_us")) if has_envoy else _DASH,
         f"{_us(o['mesh_us'])} ({o['ratio']:.3f}x)", f"<= {o['goal']:.2f}x bare",
         mark(o["ok"])),
        (f"{name}: p50", _ms(base["p50_ms"], 3), e_cell("p50_ms"),
         f"{_ms(mesh['p50_ms'], 3)} ({o['p50_delta_us']:+.0f} us)",
         f"<= bare +{o['p50_goal_us']:g} us", mark(o["p50_ok"])),
        (f"{name}: p99", _ms(base["p99_ms"], 3), e_cell("p99_ms"),
         f"{_ms(mesh['p99_ms'], 3)} ({o['p99_ratio']:.2f}x)", p99_goal, mark(o["p99_ok"])),
        (f"{name}: p99.9", _ms(base["p999_ms"], 3), e_cell("p999_ms"),
         _ms(mesh["p999_ms"], 3), _DASH, mark(None, has_goal=False)),
        *_cpu_tail(name, o.get("cpu_latency", {})),
    ]


def _cpu_tail(name: str, cpu: dict[str, Any]) -> list[Row]:
    """p50 / p99 / p99.9 of the client thread's CPU time per request (context only)."""
    base, mesh = cpu.get("baseline"), cpu.get("mesh")
    if not base or not mesh:
        return []

    def cell(side: dict[str, Any]) -> str:
        return " / ".join(f"{side[k] * 1e3:,.0f}" for k in ("p50_ms", "p99_ms", "p999_ms")) \
            + " us"

    return [(f"{name}: client CPU p50 / p99 / p99.9", cell(base), _DASH,
             f"{cell(mesh)} ({mesh['p99_ms'] / base['p99_ms']:.2f}x at p99)", _DASH,
             mark(None, has_goal=False))]


def _tail(t: dict[str, Any]) -> list[Row]:
    b, m = t["baseline"], t["mesh"]
    return [
        ("tail: p50", _ms(b["p50_ms"]), _DASH, f"{_ms(m['p50_ms'])} ({t['p50_ratio']:.2f}x)",
         _DASH, mark(None, has_goal=False)),
        ("tail: p99", _ms(b["p99_ms"]), _DASH, f"{_ms(m['p99_ms'])} ({t['p99_ratio']:.2f}x)",
         f"<= {t['p99_goal']:g}x round robin", mark(t["p99_ok"])),
        ("tail: p99.9", _ms(b["p999_ms"]), _DASH, _ms(m["p999_ms"]), _DASH,
         mark(None, has_goal=False)),
        ("tail: success rate", f"{b['success_rate'] * 100:.1f} %", _DASH,
         f"{m['success_rate'] * 100:.1f} %", f">= {t['success_goal'] * 100:g} %",
         mark(t["success_ok"])),
        ("tail: attempts per request", f"{b['attempts_per_request']:.2f}", _DASH,
         f"{m['attempts_per_request']:.2f}", _DASH, mark(None, has_goal=False)),
    ]


def _cells(sides: dict[str, Any], fmt: Any) -> tuple[str, str, str]:
    return tuple(  # type: ignore[return-value]
        "no envoy" if "skipped" in sides[name] else fmt(sides[name])
        for name in ("httpx", "envoy", "meshlib"))


def _slow(s: dict[str, Any]) -> list[Row]:
    sides = s["sides"]
    rows: list[Row] = []
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        goal, ok = (f"<= {s['p99_goal']:g}x Envoy", mark(s["p99_ok"])) if key == "p99_ms" \
            else (_DASH, mark(None, has_goal=False))
        rows.append((f"slow replica: {label}",
                     *_cells(sides, lambda side, k=key: _ms(side[k])), goal, ok))
    rows.append(("slow replica: share to the slow one",
                 *_cells(sides, lambda side: f"{side['share_to_slow'] * 100:.1f} %"),
                 f"<= {s['share_goal'] * 100:g} %", mark(s["share_ok"])))
    return rows


def _outage(o: dict[str, Any]) -> list[Row]:
    sides = o["sides"]
    envoy = "skipped" not in sides["envoy"]
    attempts_goal = f"<= {o['attempts_goal']:g}" + (", <= Envoy" if envoy else "")
    rows: list[Row] = [
        ("outage: attempts per request",
         *_cells(sides, lambda side: f"{side['attempts_per_request']:.2f}"), attempts_goal,
         mark(o["attempts_ok"])),
        ("outage: p50", *_cells(sides, lambda side: _ms(side["p50_ms"])), "<= Envoy",
         mark(o["p50_ok"])),
        ("outage: p99", *_cells(sides, lambda side: _ms(side["p99_ms"])), _DASH,
         mark(None, has_goal=False)),
        ("outage: p99.9", *_cells(sides, lambda side: _ms(side["p999_ms"])), _DASH,
         mark(None, has_goal=False)),
        ("outage: client CPU per request",
         *_cells(sides, lambda side: _ms(side["cpu_ms_per_request"], 3)),
         f"< {o['cpu_goal_ms']:g} ms", mark(o["cpu_ok"])),
    ]
    if envoy:
        rows.append(("outage: Envoy's own CPU per request", _DASH,
                     _ms(sides["envoy"]["sidecar_cpu_ms_per_request"], 3), _DASH, _DASH,
                     mark(None, has_goal=False)))
    return rows


def _routes(r: dict[str, Any]) -> list[Row]:
    return [("route table (3 rules): client CPU per request", _DASH, _DASH,
             f"{_us(r['routed_us'])} vs {_us(r['plain_us'])} ({r['ratio']:.3f}x)",
             f"<= {r['goal']:.2f}x no routes", mark(r["ok"]))]


def _throughput(rows: list[dict[str, Any]]) -> list[Row]:
    from .throughput import GOALS

    cell = {(r["client"], r["concurrency"]): r for r in rows}
    out: list[Row] = []
    for (client, tasks), goal in GOALS.items():
        r, base = cell.get((client, tasks)), cell.get(("httpx", tasks))
        label = f"throughput {client}, {tasks} task{'s' if tasks > 1 else ''}"
        if r is None or base is None or "rps" not in r:
            why = r.get("skipped", "not run") if r else "not run"
            out.append((label, _DASH, _DASH, f"skipped ({why})", f">= {goal:g}x bare",
                        mark(None)))
            continue
        cpu = f", CPU {r['cpu_ratio']:.2f}x" if r.get("cpu_ratio") else ""
        out.append((label, f"{base['rps']:,.0f}/s", _DASH,
                    f"{r['rps']:,.0f}/s ({r['ratio']:.2f}x{cpu})", f">= {goal:g}x bare",
                    mark(r["ratio"] >= goal)))
    return out


def _others(result: dict[str, Any]) -> list[Row]:
    from .pick import PICK_GOAL_US

    rows: list[Row] = []
    picks = [p for p in result.get("pick_cost", []) if p["balancer"] == "p2c-ewma"
             and p["endpoints"] == max(q["endpoints"] for q in result["pick_cost"])]
    for p in picks:
        rows.append((f"pick p2c-ewma, {p['endpoints']:,} endpoints, "
                     f"{'one breaker open' if p['open_breakers'] else 'breakers closed'}",
                     _DASH, _DASH, f"{p['us']:.2f} us", f"<= {PICK_GOAL_US:g} us",
                     mark(p["us"] <= PICK_GOAL_US)))
    for m in result.get("memory", []):
        if "skipped" in m:
            continue
        rows.append((f"memory per endpoint, {m['pool']}", _DASH, _DASH,
                     f"{m['kib_per_endpoint']:.2f} KiB", f"<= {m['goal_kib']:g} KiB",
                     mark(m["ok"])))
    if "large_set" in result:
        ls = result["large_set"]
        rows.append((f"request to {ls['large']['endpoints']:,} endpoints vs "
                     f"{ls['small']['endpoints']} (client CPU)", _DASH, _DASH,
                     f"{ls['ratio']:.3f}x", f"<= {ls['goal']:.2f}x", mark(ls["ok"])))
    return rows


def _render(rows: list[Row]) -> list[str]:
    header: Row = ("figure", "bare httpx", "Envoy sidecar", "meshlib", "goal", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]

    def line(r: Row) -> str:
        return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in
                                                    zip(r[1:4], widths[1:4], strict=True)),
                          r[4].ljust(widths[4]), r[5]]).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *[line(r) for r in rows]]


def format_table(result: dict[str, Any]) -> str:
    """Render `run_bench()`'s result as a plain-text table."""
    meta = result["meta"]
    sc = result["scenarios"]
    envoy = meta.get("envoy")
    rows: list[Row] = []
    rows += _sequential("sequential sync", sc["overhead_sync"], bool(envoy))
    rows += _sequential("sequential async", sc["overhead_async"], False)
    if "slow_replica" in sc:
        rows += _slow(sc["slow_replica"])
    if "outage" in sc:
        rows += _outage(sc["outage"])
    rows += _tail(sc["tail"])
    if "routes" in sc:
        rows += _routes(sc["routes"])
    if "throughput" in result:
        rows += _throughput(result["throughput"])
    rows += _others(result)
    lines = [
        f"meshlib bench{' --quick' if meta['quick'] else ''}: meshlib {meta['meshlib']}, "
        f"httpx {meta['httpx']}, {meta['implementation']} {meta['python']}, "
        f"{meta['cpus']} CPUs, servers in a {meta['servers']}",
        f"{meta.get('date', '')}, {meta.get('cpu_model', '')}, load average "
        f"{meta.get('load', 'n/a')}",
        f"Envoy: {envoy}" if envoy else f"Envoy: {meta.get('envoy_missing', 'not run')}",
    ]
    if meta["quick"]:
        lines.append("quick run: few samples per scenario, so p99 and p99.9 are indicative "
                     "only (p99.9 of fewer than 1,000 requests is their maximum)")
    lines += ["", *_render(rows), ""]
    lines += _notes(result)
    lines += _extra_sections(result)
    return "\n".join(lines)


def _notes(result: dict[str, Any]) -> list[str]:
    sc = result["scenarios"]
    os_, oa, t = sc["overhead_sync"], sc["overhead_async"], sc["tail"]
    servers = t["servers"]
    lines = [
        f"sequential: {os_['rounds']} interleaved rounds of {os_['requests_per_round']} "
        f"requests (sync), {oa['rounds']} x {oa['requests_per_round']} (async), one loopback "
        "server; time per request is the median over rounds, its ratio the median of "
        "per-round ratios; percentiles over every request",
        f"tail: {t['baseline']['requests']} sequential requests per client over 3 servers "
        f"(healthy {servers['healthy_ms']:g} ms, slow {servers['slow_ms']:g} ms, "
        f"{servers['failing_pct']}% 503); baseline is a round-robin httpx.Client",
    ]
    if "slow_replica" in sc:
        s = sc["slow_replica"]
        lines.append(f"slow replica: {s['tasks']} tasks, 3 servers at "
                     f"{s['servers']['base_ms']:g} ms, one at {s['servers']['slow_ms']:g} ms; "
                     f"{s['sides']['meshlib']['requests']} requests per client")
    if "outage" in sc:
        o = sc["outage"]
        lines.append(f"outage: {o['tasks']} tasks, 5 servers answering 503; "
                     f"{o['sides']['meshlib']['requests']} requests per client; attempts "
                     "counted on the servers; CPU is this process's (time.process_time)")
    return lines


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
