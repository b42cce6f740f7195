"""`meshlib status URL`: show the mesh snapshot a running service exposes.

The URL is the `snapshot_path` of a `meshlib.asgi.MeshMiddleware` or
`meshlib.wsgi.MeshMiddleware`. The snapshot is fetched with plain httpx
(not through the mesh), with a 5 s timeout, and printed as one table per
service, or as JSON with `--json`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import httpx

__all__ = ["format_snapshot", "run_status"]

TIMEOUT = 5.0
_WINDOW = ("req_60s", "success", "rps", "p50_ms", "p95_ms", "p99_ms")
_ROUTE_COLUMNS = ("route", *_WINDOW, "breaker")
_ENDPOINT_COLUMNS = ("endpoint", *_WINDOW, "score_ms", "inflight", "breaker", "requests",
                     "failures")
_LEGEND = ("req_60s, success, rps, p50/p95/p99_ms: the last 60 s (latency of answered "
           "requests); score_ms: the balancer's score, a failure counting as 1000 ms (a "
           "fast-failing endpoint reads ~1000: a penalty, not a latency); requests, "
           "failures: attempts since the client started")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.1f}"
    return str(value)


def _window_cells(window: Any) -> list[str]:
    window = window if isinstance(window, Mapping) else {}
    latency = window.get("latency_ms")
    latency = latency if isinstance(latency, Mapping) else {}
    rate = window.get("success_rate")
    success = f"{rate * 100:.2f}%" if isinstance(rate, (int, float)) else "-"
    return [_cell(window.get("requests")), success, _cell(window.get("rps")),
            _cell(latency.get("p50")), _cell(latency.get("p95")), _cell(latency.get("p99"))]


def _table(rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(numeric))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if num else cell.ljust(w)
                 for cell, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _route_rows(state: Mapping[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = [list(_ROUTE_COLUMNS)]
    if isinstance(state.get("window"), Mapping):
        rows.append(["(all)", *_window_cells(state["window"]), "-"])
    routes = state.get("routes")
    if isinstance(routes, Mapping):
        for name, route in sorted(routes.items()):
            route = route if isinstance(route, Mapping) else {}
            rows.append([str(name), *_window_cells(route.get("window")),
                         _cell(route.get("breaker"))])
    return rows


def _endpoint_row(entry: Mapping[str, Any]) -> list[str]:
    return [_cell(entry.get("endpoint")), *_window_cells(entry.get("window")),
            _cell(entry.get("ewma_ms")), _cell(entry.get("inflight")),
            _cell(entry.get("breaker")), _cell(entry.get("requests")),
            _cell(entry.get("failures"))]


def format_snapshot(snapshot: Mapping[str, Any]) -> str:
    """A readable text rendering of a `{"services": ...}` snapshot: per service, its
    routes and its endpoints with their golden signals of the last 60 s."""
    services = snapshot.get("services")
    if not isinstance(services, Mapping) or not services:
        return "(no services)"
    blocks = []
    for name, state in services.items():
        state = state if isinstance(state, Mapping) else {}
        head = f"service {name}"
        if state.get("discovery"):
            head += f"  ({state['discovery']})"
        details = []
        if state.get("balancer"):
            details.append(f"balancer {state['balancer']}")
        budget = state.get("retry_budget")
        if isinstance(budget, Mapping) and "balance" in budget:
            details.append(f"retry budget balance {_cell(budget['balance'])}")
        if state.get("ready") is False:
            details.append("discovery not ready")
        lines = [head]
        if details:
            lines.append("  " + ", ".join(details))
        routes = _route_rows(state)
        if len(routes) > 1:
            lines.extend(_table(routes, [c not in ("route", "breaker") for c in _ROUTE_COLUMNS]))
        endpoints = state.get("endpoints")
        if isinstance(endpoints, Sequence) and endpoints:
            rows: list[list[str]] = [list(_ENDPOINT_COLUMNS)]
            rows.extend(_endpoint_row(e if isinstance(e, Mapping) else {}) for e in endpoints)
            lines.extend(_table(rows, [c not in ("endpoint", "breaker")
                                       for c in _ENDPOINT_COLUMNS]))
        else:
            lines.append("  (no endpoints)")
        blocks.append("\n".join(lines))
    if any("score_ms" in block for block in blocks):
        blocks.append(_LEGEND)
    return "\n\n".join(blocks)


def run_status(url: str, as_json: bool = False, *, watch: float | None = None,
               rounds: int | None = None, out: TextIO | None = None,
               err: TextIO | None = None) -> int:
    """Fetch the snapshot at `url` and print it; return the exit status.

    Prints a table per service (or the JSON with `as_json`) to `out`
    (standard output by default) and returns 0. A snapshot that lists no
    service is printed too but returns 1, with a hint on `err`. On a connection error, a
    timeout, an HTTP error status, a body that is not JSON, or JSON without a
    `"services"` mapping, prints one clear line to `err` (standard error by
    default) and returns 1.

    With `watch` (seconds), fetches and prints again every `watch` seconds
    (clearing a terminal first) until interrupted (then returns 0), or for
    `rounds` rounds; a failed fetch is printed and retried at the next round.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if watch is None:
        return _show(url, as_json, out, err)
    clear = "\x1b[H\x1b[2J" if out.isatty() else ""
    done = 0
    status = 0
    try:
        while rounds is None or done < rounds:
            if clear:
                out.write(clear)
            status = _show(url, as_json, out, err)
            if not clear:
                print(f"-- {time.strftime('%H:%M:%S')} (every {watch:g} s; Ctrl-C stops)",
                      file=out)
            out.flush()
            done += 1
            if rounds is None or done < rounds:
                time.sleep(watch)
    except KeyboardInterrupt:
        return 0
    return status


def _show(url: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    try:
        response = httpx.get(url, timeout=TIMEOUT, headers={"accept": "application/json"})
    except httpx.InvalidURL as exc:
        print(f"meshlib status: invalid URL {url!r}: {exc}", file=err)
        return 1
    except httpx.UnsupportedProtocol:
        print(f"meshlib status: {url!r} is not an http:// or https:// URL", file=err)
        return 1
    except httpx.TimeoutException:
        print(f"meshlib status: no answer from {url} within {TIMEOUT:g} s", file=err)
        return 1
    except httpx.HTTPError as exc:
        print(f"meshlib status: cannot reach {url}: {exc or type(exc).__name__}", file=err)
        return 1
    if response.status_code != 200:
        print(f"meshlib status: {url} answered HTTP {response.status_code}"
              f" {response.reason_phrase}; is it a meshlib snapshot_path?", file=err)
        return 1
    try:
        data = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "unknown content-type")
        print(f"meshlib status: {url} did not answer JSON ({kind}); "
              "is it a meshlib snapshot_path?", file=err)
        return 1
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        print(f"meshlib status: {url} answered JSON without a \"services\" object; "
              "is it a meshlib snapshot_path?", file=err)
        return 1
    if as_json:
        print(json.dumps(data, indent=2), file=out)
    else:
        print(format_snapshot(data), file=out)
    if not data["services"]:
        print(f"meshlib status: {url} lists no services: the middleware sees no open mesh "
              "client (build one, or pass clients=[...] to MeshMiddleware)", file=err)
        return 1
    return 0
