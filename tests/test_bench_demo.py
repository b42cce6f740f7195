"""Smoke tests of ``meshlib bench`` (quick) and a shortened ``meshlib demo``.

They check structure and sanity only: no wall-clock thresholds.
"""

from __future__ import annotations

import io
import json
import math
import threading

from meshlib._tools.bench import format_table, run_bench
from meshlib._tools.demo import run_demo


def _finite_positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_quick_bench_json() -> None:
    out = io.StringIO()
    notes: list[str] = []
    result = run_bench(json_output=True, quick=True, out=out, progress=notes.append)
    assert json.loads(out.getvalue()) == json.loads(json.dumps(result))
    assert notes  # progress went to the callback, not into the JSON
    meta = result["meta"]
    assert meta["quick"] is True and meta["servers"] == "child process"
    scenarios = result["scenarios"]
    assert set(scenarios) == {"overhead_sync", "overhead_async", "tail"}
    for key in ("overhead_sync", "overhead_async"):
        o = scenarios[key]
        assert _finite_positive(o["ratio"])
        assert _finite_positive(o["baseline_us"]) and _finite_positive(o["mesh_us"])
        assert o["rounds"] >= 3 and len(o["ratios"]) == o["rounds"]
        assert o["errors"] == 0
        assert o["goal"] == 1.10 and isinstance(o["ok"], bool)
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

    table = format_table(result)
    assert "overhead sync" in table and "tail: p99" in table and "success rate" in table


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
