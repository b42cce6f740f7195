"""``meshlib status URL``: show the mesh snapshot a running service exposes.

The URL is the ``snapshot_path`` of a :class:`meshlib.asgi.MeshMiddleware` or
:class:`meshlib.wsgi.MeshMiddleware`. The snapshot is fetched with plain httpx
(not through the mesh), with a 5 s timeout, and printed as one table per
service, or as JSON with ``--json``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import httpx

__all__ = ["format_snapshot", "run_status"]

TIMEOUT = 5.0
_COLUMNS = ("endpoint", "ewma_ms", "latency_ms", "inflight", "breaker", "requests", "failures")
_LEGEND = ("ewma_ms: the balancer's score, a failure counting as 1000 ms (a fast-failing "
           "endpoint reads ~1000: a penalty, not a latency); latency_ms: successful answers only")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.1f}"
    return str(value)


def _table(rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(numeric))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if num else cell.ljust(w)
                 for cell, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def format_snapshot(snapshot: Mapping[str, Any]) -> str:
    """A readable text rendering of a ``{"services": ...}`` snapshot, one table per service."""
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
        endpoints = state.get("endpoints")
        if isinstance(endpoints, Sequence) and endpoints:
            rows: list[list[str]] = [list(_COLUMNS)]
            for endpoint in endpoints:
                entry = endpoint if isinstance(endpoint, Mapping) else {}
                rows.append([_cell(entry.get(column)) for column in _COLUMNS])
            lines.extend(_table(rows, [c not in ("endpoint", "breaker") for c in _COLUMNS]))
        else:
            lines.append("  (no endpoints)")
        blocks.append("\n".join(lines))
    if any("ewma_ms" in block for block in blocks):
        blocks.append(_LEGEND)
    return "\n\n".join(blocks)


def run_status(url: str, as_json: bool = False, *, out: TextIO | None = None,
               err: TextIO | None = None) -> int:
    """Fetch the snapshot at ``url`` and print it; return the exit status.

    Prints a table per service (or the JSON with ``as_json``) to ``out``
    (standard output by default) and returns 0. A snapshot that lists no
    service is printed too but returns 1, with a hint on ``err``. On a connection error, a
    timeout, an HTTP error status, a body that is not JSON, or JSON without a
    ``"services"`` mapping, prints one clear line to ``err`` (standard error by
    default) and returns 1.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
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
