"""Routes as users write them: `meshlib.Route`, `meshlib.Match`, `meshlib.Split`.

Each compiles once into the immutable model of `_routing` when a client is
built (or a routes file is re-read); a bad route raises `ConfigError` then,
never during a request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from ._config import SERVICE_NAME
from ._errors import ConfigError
from ._policy import Policy, not_a_policy
from ._routing import Backend, PathMatcher, RouteRule, ValueMatcher, compile_pattern

__all__ = ["Match", "Route", "RoutesArg", "Split", "compile_routes"]

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _check_strings(what: str, mapping: object) -> tuple[tuple[str, str], ...]:
    if mapping is None:
        return ()
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"Match.{what} must map names to values, got {mapping!r}")
    pairs: list[tuple[str, str]] = []
    for name, value in mapping.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise ConfigError(f"Match.{what} must map names (str) to values (str), "
                              f"got {name!r}: {value!r}")
        pairs.append((name, value))
    return tuple(pairs)


class Match:
    """The conditions of a route; every given condition must hold.

    `path` is an exact path, `path_prefix` a prefix of whole segments
    (`"/api"` matches `/api` and `/api/users`, never `/apis`),
    `path_regex` a regular expression the whole path must match
    (`re.fullmatch`); give at most one of the three. Paths are compared as
    sent (percent-encoding kept), without the query. `method` is compared
    in upper case; `headers` names ignore case and values are exact;
    `query` values are exact, on the parameter's first value.

    Added in version 0.3.
    """

    __slots__ = ("headers", "method", "path", "path_prefix", "path_regex", "query")

    def __init__(self, *, path: str | None = None, path_prefix: str | None = None,
                 path_regex: str | None = None, method: str | None = None,
                 headers: Mapping[str, str] | None = None,
                 query: Mapping[str, str] | None = None) -> None:
        given = [(n, v) for n, v in (("path", path), ("path_prefix", path_prefix),
                                     ("path_regex", path_regex)) if v is not None]
        if len(given) > 1:
            raise ConfigError(f"Match takes one of path, path_prefix, path_regex, got "
                              f"{', '.join(n for n, _ in given)}")
        for name, value in given:
            if not isinstance(value, str):
                raise ConfigError(f"Match.{name} must be a string, got {value!r}")
            if name != "path_regex" and not value.startswith("/"):
                raise ConfigError(f"Match.{name} must start with '/', got {value!r}")
        if path_regex is not None:
            compile_pattern(path_regex, what="Match.path_regex")
        if method is not None:
            if not isinstance(method, str) or not method or not set(method) <= _TOKEN_CHARS:
                raise ConfigError(f"Match.method must be an HTTP method, got {method!r}")
            method = method.upper()
        self.path = path
        self.path_prefix = path_prefix
        self.path_regex = path_regex
        self.method = method
        self.headers = dict(_check_strings("headers", headers))
        self.query = dict(_check_strings("query", query))

    def __repr__(self) -> str:
        parts = [f"{name}={getattr(self, name)!r}" for name in
                 ("path", "path_prefix", "path_regex", "method") if getattr(self, name)]
        parts += [f"{name}={getattr(self, name)!r}" for name in ("headers", "query")
                  if getattr(self, name)]
        return f"Match({', '.join(parts)})"

    def compiled_path(self) -> PathMatcher | None:
        """The path condition in the compiled model."""
        if self.path is not None:
            return PathMatcher("exact", self.path)
        if self.path_prefix is not None:
            return PathMatcher("segment_prefix", self.path_prefix)
        if self.path_regex is not None:
            return PathMatcher("regex", self.path_regex)
        return None


class Split:
    """Weighted services for one route: `Split({"users-v1": 90, "users-v2": 10})`.

    Weights are positive whole numbers; each logical request draws once, and
    its retries and hedges stay in the service it drew.

    Added in version 0.3.
    """

    __slots__ = ("weights",)

    def __init__(self, weights: Mapping[str, int]) -> None:
        if not isinstance(weights, Mapping) or not weights:
            raise ConfigError(f"Split takes a mapping of service names to weights, "
                              f"got {weights!r}")
        for name, weight in weights.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"Split: {name!r} is not a service name")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0 \
                    or weight > 1_000_000:
                raise ConfigError(f"Split: weight of {name!r} must be a whole number from 1 "
                                  f"to 1000000, got {weight!r}")
        self.weights = dict(weights)

    def __repr__(self) -> str:
        return f"Split({self.weights!r})"

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)


class Route:
    """Where matching requests go: `Route(Match(path_prefix="/api"), to="users-v2")`.

    `match=None` matches every request. `to` is a service name (a key of
    `services`) or a `Split` of them. `policy` applies to requests
    of this route, field by field over the service's and client's policies;
    it may not set `breaker`, `retry_budget`, `balancer` or
    `slow_start`, which belong to a service. `name` names the route in
    `extensions["meshlib"]["route"]`, telemetry and `snapshot()` (default:
    its index in the host's list).

    Added in version 0.3.
    """

    __slots__ = ("match", "name", "policy", "to")

    def __init__(self, match: Match | None = None, *, to: str | Split,
                 policy: Policy | None = None, name: str | None = None) -> None:
        if match is not None and not isinstance(match, Match):
            raise ConfigError(f"Route match must be a meshlib.Match or None, got {match!r}")
        if not isinstance(to, (str, Split)) or (isinstance(to, str) and not to):
            raise ConfigError(f"Route to must be a service name or a meshlib.Split, got {to!r}")
        if policy is not None and not isinstance(policy, Policy):
            raise not_a_policy("Route policy", policy)
        if name is not None and (not isinstance(name, str) or not name or len(name) > 200):
            raise ConfigError(f"Route name must be a non-empty string of at most 200 "
                              f"characters, got {name!r}")
        self.match = match
        self.to = to
        self.policy = policy
        self.name = name

    def __repr__(self) -> str:
        extra = "".join(f", {n}={getattr(self, n)!r}" for n in ("policy", "name")
                        if getattr(self, n) is not None)
        return f"Route({self.match!r}, to={self.to!r}{extra})"

    def compile(self, index: int) -> RouteRule:
        """This route in the compiled model, keyed by its name or `index`."""
        match = self.match or Match()
        weights = self.to.weights if isinstance(self.to, Split) else {self.to: 1}
        return RouteRule(
            key=self.name if self.name is not None else index,
            backends=tuple(Backend(name.lower(), weight) for name, weight in weights.items()),
            path=match.compiled_path(),
            method=match.method,
            headers=tuple((n.lower(), ValueMatcher("exact", v)) for n, v in match.headers.items()),
            query=tuple((n, ValueMatcher("exact", v)) for n, v in match.query.items()),
            policy=self.policy,
        )


RoutesArg = Mapping[str, Sequence[Route]] | None


def compile_routes(routes: Mapping[str, Sequence[Route]], services: set[str], *,
                   source: str = "routes") -> dict[str, tuple[RouteRule, ...]]:
    """Each host's routes compiled, checked against the known `services`
    (lower-case names); `ConfigError` names `source`, the host and the route."""
    if not isinstance(routes, Mapping):
        raise ConfigError(f"{source} must map host names to lists of meshlib.Route, "
                          f"got {routes!r}")
    compiled: dict[str, tuple[RouteRule, ...]] = {}
    for host, items in routes.items():
        if not isinstance(host, str) or not SERVICE_NAME.match(host):
            raise ConfigError(f"{source}: {host!r} is not a host name")
        if host.lower() in compiled:
            raise ConfigError(f"{source}: host {host!r} is given twice (names ignore case)")
        if isinstance(items, (str, bytes, Route)) or not isinstance(items, Sequence):
            raise ConfigError(f"{source}[{host!r}] must be a list of meshlib.Route, got {items!r}")
        rules: list[RouteRule] = []
        names: set[str] = set()
        for index, route in enumerate(items):
            if not isinstance(route, Route):
                raise ConfigError(f"{source}[{host!r}][{index}] must be a meshlib.Route, "
                                  f"got {route!r}")
            if route.name is not None:
                if route.name in names:
                    raise ConfigError(f"{source}[{host!r}]: two routes are named {route.name!r}")
                names.add(route.name)
            try:
                rule = route.compile(index)
            except ConfigError as exc:
                raise ConfigError(f"{source}[{host!r}][{index}]: {exc}") from None
            unknown = [c for c in rule.clusters() if c not in services]
            if unknown:
                raise ConfigError(
                    f"{source}[{host!r}][{index}] sends to {', '.join(map(repr, unknown))}, "
                    f"which is not a configured service (known: "
                    f"{', '.join(sorted(services)) or 'none'})")
            rules.append(rule)
        compiled[host.lower()] = tuple(rules)
    return compiled

