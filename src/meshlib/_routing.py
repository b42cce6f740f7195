"""The compiled route model: virtual hosts, their ordered rules, and matching.

`meshlib.Route` (code), `MESHLIB_ROUTES` (JSON), xDS RDS and Gateway API
HTTPRoutes all compile into this one model. It is immutable: a change builds
a new `RouteTable` and swaps it in with one assignment, so a request
sees either the old table or the new one, never half of each.

Matching follows Envoy and the Gateway API: a rule holds when every condition
it gives holds; rules are tried in order and the first that holds wins. Paths
are matched on the request's raw path (as sent, percent-encoding kept, without
the query); header names ignore case; query parameters are matched on their
first value.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx

from ._errors import ConfigError
from ._policy import CLUSTER_FIELDS, Policy

__all__ = [
    "MAX_REGEX_LENGTH", "Backend", "PathMatcher", "RouteRule", "RouteTable", "ValueMatcher",
    "VirtualHost", "compile_pattern", "implicit_route_key",
]

#: the longest regular expression a route may hold (Envoy's default program-size
#: guard has the same purpose: a pattern is compiled once, never per request)
MAX_REGEX_LENGTH = 1000

PathKind = Literal["exact", "prefix", "segment_prefix", "regex"]
ValueKind = Literal["exact", "prefix", "suffix", "contains", "regex", "present"]


def compile_pattern(pattern: str, *, what: str, ignore_case: bool = False) -> re.Pattern[str]:
    """`pattern` compiled once, or `ConfigError` naming `what` and the pattern."""
    if not isinstance(pattern, str):
        raise ConfigError(f"{what} must be a regular expression string, got {pattern!r}")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ConfigError(f"{what} is {len(pattern)} characters long; at most "
                          f"{MAX_REGEX_LENGTH} are allowed")
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ConfigError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None


@dataclass(frozen=True, slots=True)
class PathMatcher:
    """How a rule matches the path: `exact`, `prefix` (plain string prefix, as
    Envoy's `prefix`), `segment_prefix` (whole path segments, as the Gateway
    API's `PathPrefix` and `meshlib.Match(path_prefix=)`) or `regex`
    (`re.fullmatch`)."""

    kind: PathKind
    value: str
    case_sensitive: bool = True
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    _folded: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "regex":
            object.__setattr__(self, "_regex", compile_pattern(
                self.value, what="path regex", ignore_case=not self.case_sensitive))
            return
        value = self.value
        if self.kind == "segment_prefix" and len(value) > 1 and value.endswith("/"):
            value = value.rstrip("/") or "/"
        object.__setattr__(self, "_folded", value if self.case_sensitive else value.lower())

    def matches(self, path: str) -> bool:
        """Whether `path` (raw, without the query) matches."""
        if self._regex is not None:
            return self._regex.fullmatch(path) is not None
        if not self.case_sensitive:
            path = path.lower()
        want = self._folded
        if self.kind == "exact":
            return path == want
        if self.kind == "prefix":
            return path.startswith(want)
        # segment_prefix: "/api" matches "/api", "/api/" and "/api/x", never "/apix"
        if want == "/":
            return True
        return path == want or path.startswith(want + "/")


@dataclass(frozen=True, slots=True)
class ValueMatcher:
    """How a rule matches a header's or a query parameter's value (Envoy's
    `StringMatcher`, plus `present` and `invert`)."""

    kind: ValueKind
    value: str = ""
    ignore_case: bool = False
    invert: bool = False
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "regex":
            object.__setattr__(self, "_regex", compile_pattern(
                self.value, what="value regex", ignore_case=self.ignore_case))

    def matches(self, actual: str | None) -> bool:
        """Whether `actual` (`None`: absent) matches."""
        return self._holds(actual) != self.invert

    def _holds(self, actual: str | None) -> bool:
        if actual is None:
            return False
        if self.kind == "present":
            return True
        if self._regex is not None:
            return self._regex.fullmatch(actual) is not None
        want = self.value
        if self.ignore_case:
            actual, want = actual.lower(), want.lower()
        if self.kind == "exact":
            return actual == want
        if self.kind == "prefix":
            return actual.startswith(want)
        if self.kind == "suffix":
            return actual.endswith(want)
        return want in actual  # contains


@dataclass(frozen=True, slots=True)
class Backend:
    """One service (cluster) a rule sends to, with its weight in the rule's split."""

    cluster: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One compiled route: its conditions, where it sends, and its policy.

    `key` names the route in breakers, windows, telemetry and
    `extensions["meshlib"]["route"]`: the route's name, else its index.
    """

    key: str | int
    backends: tuple[Backend, ...]
    path: PathMatcher | None = None
    method: str | None = None
    headers: tuple[tuple[str, ValueMatcher], ...] = ()
    query: tuple[tuple[str, ValueMatcher], ...] = ()
    policy: Policy | None = None
    #: cumulative weights of ``backends`` for one draw per logical request
    _cumulative: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.backends:
            raise ConfigError(f"route {self.key!r} sends nowhere: it names no service")
        for backend in self.backends:
            if isinstance(backend.weight, bool) or not isinstance(backend.weight, int) \
                    or backend.weight < 0:
                raise ConfigError(f"route {self.key!r}: weight of {backend.cluster!r} must be "
                                  f"a whole number >= 0, got {backend.weight!r}")
        if sum(b.weight for b in self.backends) <= 0:
            raise ConfigError(f"route {self.key!r}: its weights add up to 0")
        if self.policy is not None:
            cluster_level = self.policy.given & CLUSTER_FIELDS
            if cluster_level:
                raise ConfigError(
                    f"route {self.key!r}: {', '.join(sorted(cluster_level))} configure a whole "
                    "service, not a route; set them on the meshlib.Service or the client")
        object.__setattr__(self, "_cumulative",
                           tuple(itertools.accumulate(b.weight for b in self.backends)))

    def matches(self, method: str, path: str, headers: httpx.Headers,
                query: httpx.QueryParams | None) -> bool:
        """Whether a request with these parts matches every condition of the rule."""
        if self.method is not None and method != self.method:
            return False
        if self.path is not None and not self.path.matches(path):
            return False
        for name, header in self.headers:
            if not header.matches(headers.get(name)):
                return False
        if self.query:
            params = query if query is not None else httpx.QueryParams()
            for name, value in self.query:
                if not value.matches(params.get(name)):
                    return False
        return True

    def draw(self, rand: float) -> str:
        """The cluster for one logical request, `rand` uniform in [0, 1)."""
        if len(self.backends) == 1:
            return self.backends[0].cluster
        total = self._cumulative[-1]
        return self.backends[bisect.bisect_right(self._cumulative, rand * total)].cluster

    def describe(self) -> dict[str, object]:
        """JSON-ready: the rule's key, its conditions and where it sends."""
        match: dict[str, object] = {}
        if self.path is not None:
            match["path"] = {"kind": self.path.kind, "value": self.path.value}
        if self.method is not None:
            match["method"] = self.method
        if self.headers:
            match["headers"] = {n: f"{m.kind}:{m.value}" for n, m in self.headers}
        if self.query:
            match["query"] = {n: f"{m.kind}:{m.value}" for n, m in self.query}
        return {"route": self.key, "match": match,
                "to": {b.cluster: b.weight for b in self.backends},
                "policy": sorted(self.policy.given) if self.policy is not None else []}

    def clusters(self) -> tuple[str, ...]:
        """Every cluster this rule may send to."""
        return tuple(b.cluster for b in self.backends)


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """The ordered rules of one host name."""

    host: str
    rules: tuple[RouteRule, ...]

    def select(self, request: httpx.Request) -> RouteRule | None:
        """The first rule that matches `request`, else `None`."""
        if not self.rules:
            return None
        url = request.url
        raw_path = url.raw_path
        cut = raw_path.find(b"?")
        path = (raw_path[:cut] if cut >= 0 else raw_path).decode("ascii", "replace")
        query = url.params if url.query else None
        method = request.method
        headers = request.headers
        for rule in self.rules:
            if rule.matches(method, path, headers, query):
                return rule
        return None


    def snapshot(self) -> list[dict[str, object]]:
        """JSON-ready: each rule's key, match and backends."""
        return [rule.describe() for rule in self.rules]


class RouteTable:
    """Every virtual host's rules, immutable; replace the whole table to change it."""

    __slots__ = ("hosts",)

    def __init__(self, hosts: Mapping[str, VirtualHost] | None = None) -> None:
        self.hosts: Mapping[str, VirtualHost] = dict(hosts or {})

    def __bool__(self) -> bool:
        return bool(self.hosts)

    def get(self, host: str) -> VirtualHost | None:
        """The virtual host of `host` (lower-case), if it has routes."""
        return self.hosts.get(host)

    def clusters(self) -> set[str]:
        """Every cluster some rule names."""
        return {c for vhost in self.hosts.values() for rule in vhost.rules for c in rule.clusters()}

    def replaced(self, host: str, rules: Sequence[RouteRule] | None) -> RouteTable:
        """A new table with `host`'s rules replaced (`None` or empty: removed)."""
        hosts = dict(self.hosts)
        if rules:
            hosts[host] = VirtualHost(host, tuple(rules))
        else:
            hosts.pop(host, None)
        return RouteTable(hosts)


def implicit_route_key(request: httpx.Request) -> str:
    """The route of a request when none is configured: its method and the first
    segment of its path (`GET /users`), so ids deeper in paths do not multiply
    routes."""
    url = request.url
    # httpx keeps the (percent-encoded) path apart from the query: no bytes to build
    path = getattr(getattr(url, "_uri_reference", None), "path", None)
    if not isinstance(path, str):
        path = url.raw_path.decode("ascii", "replace").partition("?")[0]
    end = path.find("/", 1)
    return f"{request.method} {(path[:end] if end > 0 else path) or '/'}"


def uniform() -> float:
    """A uniform draw in [0, 1) for splits (module-level so tests can seed `random`)."""
    return random.random()
