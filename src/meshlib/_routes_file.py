"""`MESHLIB_ROUTES`: routes from a JSON file, re-read when it changes.

The file maps host names to lists of routes:

```
{"users": [
    {"name": "canary", "match": {"path_prefix": "/v2", "headers": {"x-canary": "1"}},
     "to": {"users-v1": 90, "users-v2": 10},
     "policy": {"timeout": "500ms", "retries": 1}},
    {"to": "users-v1"}
]}
```

`match` takes the keywords of `meshlib.Match`; `to` is a service name or
an object of weights (a `Split`); `policy` takes `timeout`,
`attempt_timeout` (seconds, or durations such as `"250ms"`), `retries`,
`retry_on` (status codes), `idempotent`, `hedge` (a delay, `"p95"`, or
`{"delay", "fallback", "max_attempts"}`) and `backoff` (`{"base", "max"}`).

A bad file when the client is built raises `ConfigError` naming the file
and the entry. A bad file later (half-written, wrong, unreadable) keeps the
last good routes and is logged at WARNING; the file is polled by `stat()`
like `file://` discovery and re-read only when it changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from ._config import parse_duration
from ._discovery import Discovery, DiscoveryFailure, Update
from ._discovery._file import NotReadable, _check, _read, _signature
from ._errors import ConfigError
from ._policy import Backoff, Hedge, Policy
from ._routes import Match, Route, Split

__all__ = ["RoutesFile", "RoutesFollower", "load_routes_file", "parse_routes"]

logger = logging.getLogger("meshlib.routes")

_MATCH_KEYS = frozenset({"path", "path_prefix", "path_regex", "method", "headers", "query"})
_ROUTE_KEYS = frozenset({"match", "to", "policy", "name"})
_POLICY_KEYS = frozenset({"timeout", "attempt_timeout", "retries", "retry_on", "idempotent",
                          "hedge", "backoff"})


def _seconds(where: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        return parse_duration(where, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be seconds or a duration such as \"250ms\", "
                          f"got {value!r}")
    return float(value)


def _object(where: str, value: object, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object, got {value!r}")
    unknown = set(value) - keys
    if unknown:
        raise ConfigError(f"{where} has unknown keys {', '.join(sorted(map(str, unknown)))} "
                          f"(known: {', '.join(sorted(keys))})")
    return value


def _hedge(where: str, raw: object) -> Hedge | None:
    if raw is None:
        return None
    if raw == "p95":
        return Hedge(delay="p95")
    if isinstance(raw, dict):
        spec = _object(where, raw, frozenset({"delay", "fallback", "max_attempts"}))
        delay = spec.get("delay", 0.05)
        kwargs: dict[str, Any] = {
            "delay": "p95" if delay == "p95" else _seconds(f"{where}.delay", delay)}
        if "fallback" in spec:
            kwargs["fallback"] = _seconds(f"{where}.fallback", spec["fallback"])
        if "max_attempts" in spec:
            kwargs["max_attempts"] = spec["max_attempts"]
        return Hedge(**kwargs)
    seconds = _seconds(where, raw)
    assert seconds is not None
    return Hedge(delay=seconds)


def _policy(where: str, raw: object) -> Policy:
    spec = _object(where, raw, _POLICY_KEYS)
    fields: dict[str, Any] = {}
    for key, value in spec.items():
        at = f"{where}.{key}"
        if key in ("timeout", "attempt_timeout"):
            fields[key] = _seconds(at, value, allow_none=key == "attempt_timeout")
        elif key == "retry_on":
            if not isinstance(value, list):
                raise ConfigError(f"{at} must be a list of status codes, got {value!r}")
            fields[key] = tuple(value)
        elif key == "hedge":
            fields[key] = _hedge(at, value)
        elif key == "backoff":
            backoff = _object(at, value, frozenset({"base", "max"}))
            fields[key] = Backoff(**{k: float(_seconds(f"{at}.{k}", v) or 0.0)
                                     for k, v in backoff.items()})
        else:
            fields[key] = value
    try:
        return Policy(**fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _route(where: str, raw: object) -> Route:
    spec = _object(where, raw, _ROUTE_KEYS)
    if "to" not in spec:
        raise ConfigError(f"{where} has no \"to\" (a service name or weights)")
    to: str | Split
    if isinstance(spec["to"], dict):
        to = Split(spec["to"])
    elif isinstance(spec["to"], str):
        to = spec["to"]
    else:
        raise ConfigError(f"{where}.to must be a service name or an object of weights, "
                          f"got {spec['to']!r}")
    match = None
    if spec.get("match") is not None:
        match = Match(**_object(f"{where}.match", spec["match"], _MATCH_KEYS))
    policy = _policy(f"{where}.policy", spec["policy"]) if spec.get("policy") is not None \
        else None
    return Route(match, to=to, policy=policy, name=spec.get("name"))


def parse_routes(content: bytes | str, source: str) -> dict[str, list[Route]]:
    """The routes of a routes file's content; `ConfigError` naming `source` and the
    entry when anything is wrong."""
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object of host names to route lists, "
                          f"got {type(data).__name__}")
    routes: dict[str, list[Route]] = {}
    for host, items in data.items():
        if not isinstance(items, list):
            raise ConfigError(f"{source}: routes of {host!r} must be a JSON list")
        try:
            routes[host] = [_route(f"{host}[{i}]", item) for i, item in enumerate(items)]
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return routes


def load_routes_file(path: str) -> tuple[tuple[int, int, int], dict[str, list[Route]]]:
    """Read and parse a routes file now (`ConfigError` naming it when bad)."""
    source = f"MESHLIB_ROUTES={path!r}"
    try:
        signature, content = _read(path)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it: {exc.strerror or exc}") from None
    return signature, parse_routes(content, source)


class RoutesFile(Discovery):
    """Polls a routes file; each change is parsed and yielded for `RoutesFollower`.

    It speaks the discovery interface so the background runners run it like
    any discovery: it yields `()` when new routes are ready in `latest`
    and a `DiscoveryFailure` when the file is bad (the last good routes stay).
    """

    POLL_INTERVAL = 0.5

    def __init__(self, path: str, signature: tuple[int, int, int] | None = None) -> None:
        super().__init__(f"file://{path}")
        self.path = path
        self._signature: tuple[int, int, int] | str | None = signature
        #: the routes of the last good read, taken by the follower
        self.latest: dict[str, list[Route]] | None = None

    def initial(self) -> tuple[()] | None:
        """Never fixed: the file is watched in the background."""
        return None

    async def updates(self) -> AsyncIterator[Update]:
        """Yield `()` after each good change (routes in `latest`), failures as they
        happen."""
        while True:
            await asyncio.sleep(self.POLL_INTERVAL)
            try:
                info = os.stat(self.path)
                _check(info)
                current: tuple[int, int, int] | str = _signature(info)
            except (OSError, NotReadable) as exc:
                current = f"cannot read {self.path}: {getattr(exc, 'strerror', None) or exc}"
            if current == self._signature:
                continue
            self._signature = current
            if isinstance(current, str):
                yield DiscoveryFailure(current)
                continue
            try:
                signature, content = await asyncio.to_thread(_read, self.path)
                self._signature = signature
                self.latest = parse_routes(content, f"MESHLIB_ROUTES={self.path!r}")
            except OSError as exc:
                yield DiscoveryFailure(f"cannot read {self.path}: {exc.strerror or exc}")
                continue
            except ConfigError as exc:
                yield DiscoveryFailure(str(exc))
                continue
            yield ()


class RoutesFollower:
    """Applies a routes file's changes to a mesh's route table (keeps the last good)."""

    def __init__(self, discovery: RoutesFile, apply: Callable[[dict[str, list[Route]]], None]):
        self.discovery = discovery
        self.name = "MESHLIB_ROUTES"
        self._apply = apply
        self._failing: str | None = None

    def apply(self, update: Update, now: float) -> list[Any]:
        """Swap in the file's new routes, or log why the last good ones are kept."""
        if isinstance(update, DiscoveryFailure):
            if update.reason != self._failing:
                self._failing = update.reason
                logger.warning("routes file: %s; keeping the last good routes", update.reason)
            return []
        routes = self.discovery.latest
        if routes is None:
            return []
        try:
            self._apply(routes)
        except ConfigError as exc:
            if str(exc) != self._failing:
                self._failing = str(exc)
                logger.warning("routes file: %s; keeping the last good routes", exc)
            return []
        if self._failing is not None:
            logger.warning("routes file %s: good again, routes updated", self.discovery.path)
        self._failing = None
        logger.info("routes file %s: routes updated (%d hosts)", self.discovery.path,
                    len(routes))
        return []

