"""What both server-side middlewares share (`meshlib.asgi`, `meshlib.wsgi`).

Reading deadline headers, and the body of the snapshot endpoint.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from ._headers import DEADLINE_HEADER, ENVOY_TIMEOUT_HEADER, GRPC_TIMEOUT_HEADER

__all__ = ["SNAPSHOT_METHODS", "SupportsSnapshot", "parse_deadline", "snapshot_body"]

#: the default logger of :func:`parse_deadline` (the one ``meshlib.asgi`` always used)
logger = logging.getLogger("meshlib.asgi")

#: the methods the snapshot endpoint answers (others get 405)
SNAPSHOT_METHODS = ("GET", "HEAD")

_MS_RE = re.compile(r"[0-9]{1,15}")
_GRPC_RE = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_SHOW = 64  # characters of a bad header value shown in the debug log
#: the values of one deadline header read (repeated or comma-joined); the rest are ignored
_MAX_VALUES = 8


@runtime_checkable
class SupportsSnapshot(Protocol):
    """Anything with a meshlib-style `snapshot()`: clients and transports."""

    def snapshot(self) -> Mapping[str, Any]:
        """A JSON-serialisable dict with a `"services"` mapping."""
        ...


def _parse_ms(value: str) -> float | None:
    text = value.strip()
    if _MS_RE.fullmatch(text):
        return int(text) / 1000.0
    return None


def _parse_grpc(value: str) -> float | None:
    match = _GRPC_RE.fullmatch(value.strip())
    if match is None:
        return None
    return int(match.group(1)) * _GRPC_UNITS[match.group(2)]


def _parse_values(name: str, values: Iterable[str], parse: Callable[[str], float | None],
                  log: logging.Logger) -> float | None:
    best: float | None = None
    left = _MAX_VALUES
    for raw in values:
        # Repeated headers may arrive joined with commas (WSGI, proxies).
        parts = raw.split(",", left)
        for part in parts[:left]:
            seconds = parse(part)
            if seconds is None:
                log.debug("ignoring invalid %s header value %r", name, part[:_SHOW])
            elif best is None or seconds < best:
                best = seconds
        left -= len(parts)
        if left < 0:  # a caller must not make every request parse thousands of values
            log.debug("ignoring %s header values after the first %d", name, _MAX_VALUES)
            break
    return best


def parse_deadline(mesh_timeout_ms: Iterable[str] = (), grpc_timeout: Iterable[str] = (),
                   *, envoy_timeout_ms: Iterable[str] = (),
                   log: logging.Logger = logger) -> float | None:
    """Seconds left according to deadline header values, or `None` if there is none.

    `mesh_timeout_ms` holds the values of every `x-mesh-timeout-ms` header
    (whole milliseconds, `>= 0`), `grpc_timeout` those of every
    `grpc-timeout` header (gRPC format), `envoy_timeout_ms` those of every
    `x-envoy-expected-rq-timeout-ms` header (whole milliseconds). Comma-joined
    values are split. The smallest valid value wins; invalid ones are logged at
    DEBUG on `log` and ignored. Only the first 8 values of each header are
    read, so a caller cannot make every request parse thousands of them.
    """
    candidates = [
        _parse_values(DEADLINE_HEADER, mesh_timeout_ms, _parse_ms, log),
        _parse_values(GRPC_TIMEOUT_HEADER, grpc_timeout, _parse_grpc, log),
        _parse_values(ENVOY_TIMEOUT_HEADER, envoy_timeout_ms, _parse_ms, log),
    ]
    found = [c for c in candidates if c is not None]
    return min(found) if found else None


def snapshot_body(clients: Iterable[SupportsSnapshot], log: logging.Logger) -> tuple[int, bytes]:
    """Status and JSON body of the snapshot endpoint: every client's services merged.

    A service name seen in more than one client is kept once per client, the
    later ones as `name#2`, `name#3`...
    """
    services: dict[str, Any] = {}
    try:
        for client in clients:
            for name, state in dict(client.snapshot().get("services", {})).items():
                key, n = str(name), 1
                while key in services:
                    n += 1
                    key = f"{name}#{n}"
                services[key] = state
        body = json.dumps({"services": services}, default=str)
    except Exception as exc:  # a broken client must not break the server
        log.exception("meshlib snapshot failed")
        return 500, json.dumps({"error": f"snapshot failed: {type(exc).__name__}"}).encode()
    return 200, body.encode()
