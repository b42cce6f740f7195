"""Decoded, validated xDS resources: what meshlib takes from a control plane.

Everything here is a frozen dataclass of plain Python values: no protobuf
type leaks out. The `decode_*` functions turn the four resource messages
(Listener, RouteConfiguration, Cluster, ClusterLoadAssignment) into them and
raise `ResourceError` for anything meshlib would have to get wrong:
an invalid value, or a feature that would change where or how a request is
routed and that meshlib does not implement. That error becomes a NACK naming
the resource and the reason, as gRPC's xDS client does; a feature that
changes nothing about routing (header mutations, tracing, access logs,
stats names) is ignored, and docs/xds.md lists which is which.

The graph a client uses:

```
ListenerSpec ── route_config_name ──► RouteConfigSpec (or inline)
                                        └─ VirtualHostSpec ─ RouteSpec ─ clusters ─►
ClusterSpec ── eds_service_name or name ──► EndpointsSpec ─ EndpointSpec
```

`XdsConfig` is one complete, consistent snapshot of that graph for one
listener. The `matches` methods are the reference semantics of Envoy's
matchers (what Envoy and gRPC do with the same configuration), so that the
route layer can use them or test itself against them.

Regular expressions: Envoy and gRPC use RE2; meshlib compiles with Python's
`re` (at most `MAX_REGEX_LENGTH` characters) and refuses what RE2
refuses and Python would accept (look-around, back-references, atomic groups,
possessive quantifiers, conditionals), so that a pattern meshlib accepts has
the meaning it has in Envoy and cannot backtrack without bound.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from . import messages

__all__ = [
    "HEALTH_STATUSES",
    "MAX_REGEX_LENGTH",
    "USABLE_HEALTH",
    "ClusterSpec",
    "EndpointSpec",
    "EndpointsSpec",
    "HeaderMatch",
    "ListenerSpec",
    "OutlierSpec",
    "PathMatch",
    "QueryMatch",
    "ResourceError",
    "RetrySpec",
    "RouteConfigSpec",
    "RouteSpec",
    "StringMatch",
    "VirtualHostSpec",
    "XdsConfig",
    "compile_regex",
    "decode_cluster",
    "decode_endpoints",
    "decode_listener",
    "decode_route_configuration",
    "select_virtual_host",
    "usable_endpoints",
]

#: the longest regular expression meshlib compiles (the same cap as meshlib's own routes)
MAX_REGEX_LENGTH = 1000

#: ``core.v3.HealthStatus`` by number, as Envoy names them
HEALTH_STATUSES = ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED")

#: the health states an endpoint may take requests in (gRPC's rule; Envoy's without
#: active health checking): HEALTHY and UNKNOWN; never DRAINING, UNHEALTHY, TIMEOUT, DEGRADED
USABLE_HEALTH = frozenset({"HEALTHY", "UNKNOWN"})

Health = Literal["UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"]
StringMatchKind = Literal["exact", "prefix", "suffix", "contains", "regex"]
PathMatchKind = Literal["prefix", "exact", "regex", "separated_prefix"]
RouteKind = Literal["route", "redirect", "direct_response", "non_forwarding", "filter_action"]
LbPolicy = Literal["round-robin", "least-request", "random"]
ClusterType = Literal["EDS", "STATIC"]


class ResourceError(ValueError):
    """A resource meshlib cannot use; the message names the field and the reason.

    The client answers the response that carried it with a NACK holding this
    message, and keeps every resource of that type as it was.
    """


# -- regular expressions ----------------------------------------------------------------

try:  # Python's regex parser: re._parser from 3.11, sre_parse before
    _sre_parse: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - Python 3.10
    _sre_parse = importlib.import_module("sre_parse")

#: parser opcodes of constructs RE2 does not have (by name, as the opcodes print)
_NOT_RE2 = {
    "ASSERT": "look-ahead/look-behind",
    "ASSERT_NOT": "negative look-ahead/look-behind",
    "GROUPREF": "a back-reference",
    "GROUPREF_IGNORE": "a back-reference",
    "GROUPREF_EXISTS": "a conditional group",
    "ATOMIC_GROUP": "an atomic group",
    "POSSESSIVE_REPEAT": "a possessive quantifier",
}


def _refuse_non_re2(parsed: Any, pattern: str) -> None:
    stack = [parsed]
    for _ in range(100_000):  # bounded: a 1,000-character pattern has far fewer nodes
        if not stack:
            return
        node = stack.pop()
        items = node.data if hasattr(node, "data") else node
        for item in items:
            if isinstance(item, tuple) and len(item) == 2 and hasattr(item[0], "name"):
                op, argument = item
                if str(op) in _NOT_RE2:
                    raise ResourceError(f"regex {pattern!r} uses {_NOT_RE2[str(op)]}, "
                                        "which RE2 (Envoy's and gRPC's engine) does not accept")
                stack.append([argument] if not isinstance(argument, (list, tuple)) else argument)
            elif isinstance(item, (list, tuple)) or hasattr(item, "data"):
                stack.append(item)


def compile_regex(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """`pattern` compiled, or `ResourceError` saying why it cannot be used.

    Refused: an empty pattern, one longer than `MAX_REGEX_LENGTH`
    characters, one Python cannot compile, and constructs RE2 does not accept.
    """
    if not pattern:
        raise ResourceError("the regex is empty")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ResourceError(f"the regex is {len(pattern)} characters long, more than "
                            f"the {MAX_REGEX_LENGTH} meshlib accepts")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        compiled = re.compile(pattern, flags)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ResourceError(f"regex {pattern!r} does not compile: {exc}") from None
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except Exception:  # pragma: no cover - compiled above, so it parses
        return compiled
    _refuse_non_re2(parsed, pattern)
    return compiled


@functools.lru_cache(maxsize=1024)
def _cached_regex(pattern: str) -> re.Pattern[str]:
    """The compiled pattern of a decoded (so already validated) matcher."""
    return compile_regex(pattern)


# -- matchers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """`type.matcher.v3.StringMatcher`: how a string (a header or parameter value) matches.

    `kind` is `exact`, `prefix`, `suffix`, `contains` or `regex`
    (RE2 `safe_regex`: the whole value must match); `ignore_case` applies to
    every kind but `regex` (as in Envoy, where it has no effect on regexes: it
    is always `False` for them here).
    """

    kind: StringMatchKind
    value: str
    ignore_case: bool = False

    def matches(self, text: str) -> bool:
        """Whether `text` matches."""
        if self.kind == "regex":
            return _cached_regex(self.value).fullmatch(text) is not None
        value = self.value
        if self.ignore_case:
            text, value = text.lower(), value.lower()
        if self.kind == "exact":
            return text == value
        if self.kind == "prefix":
            return text.startswith(value)
        if self.kind == "suffix":
            return text.endswith(value)
        return value in text


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """`route.v3.HeaderMatcher`: one condition on a request header.

    Exactly one of `match` (a `StringMatch` on the value), `present`
    (`True`: the header is there; `False`: it is absent) and `range`
    (`(start, end)`: the value is a base-10 integer with start <= value < end)
    is set. `invert` flips the result. A missing header matches no `match`
    or `range` condition, inverted or not, unless `missing_as_empty`
    (`treat_missing_header_as_empty`), when it is matched as the empty string.
    `name` is lower-cased; pseudo-headers keep their colon (`:method`,
    `:authority`, `:path`). A header sent several times is matched as its
    values joined with `,`, as Envoy does.
    """

    name: str
    match: StringMatch | None = None
    present: bool | None = None
    range: tuple[int, int] | None = None
    invert: bool = False
    missing_as_empty: bool = False

    def matches(self, value: str | None) -> bool:
        """Whether a request whose header value is `value` (`None`: absent) matches."""
        if self.present is not None:
            return (value is not None) == (self.present != self.invert)
        if value is None:
            if not self.missing_as_empty:
                return False
            value = ""
        if self.match is not None:
            hit = self.match.matches(value)
        else:
            assert self.range is not None
            hit = (re.fullmatch(r"[+-]?[0-9]+", value) is not None
                   and self.range[0] <= int(value) < self.range[1])
        return hit != self.invert


@dataclass(frozen=True, slots=True)
class QueryMatch:
    """`route.v3.QueryParameterMatcher`: one condition on a query parameter.

    The parameter must be present; with `match` its (first, percent-decoded)
    value must match too. Envoy treats `present_match` of either value as
    "present", and so does this.
    """

    name: str
    match: StringMatch | None = None

    def matches(self, value: str | None) -> bool:
        """Whether a request whose parameter value is `value` (`None`: absent) matches."""
        if value is None:
            return False
        return self.match is None or self.match.matches(value)


@dataclass(frozen=True, slots=True)
class PathMatch:
    """`route.v3.RouteMatch`'s path specifier, on the path without its query string.

    `kind`: `prefix` (`""` matches every path), `exact`, `regex` (RE2
    `safe_regex`: the whole path must match; `case_sensitive` does not apply,
    as in Envoy) or `separated_prefix` (`path_separated_prefix`: the path is
    the value, or starts with the value followed by `/`).
    """

    kind: PathMatchKind
    value: str
    case_sensitive: bool = True

    def matches(self, path: str) -> bool:
        """Whether `path` (no query string) matches."""
        if self.kind == "regex":
            return _cached_regex(self.value).fullmatch(path) is not None
        value = self.value
        if not self.case_sensitive:
            path, value = path.lower(), value.lower()
        if self.kind == "prefix":
            return path.startswith(value)
        if self.kind == "exact":
            return path == value
        return path == value or path.startswith(value + "/")


# -- routes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """`route.v3.RetryPolicy` (the route's, else its virtual host's; never merged).

    `retry_on` holds the policy's conditions as sent, lower-cased (Envoy's
    `5xx`, `gateway-error`, `reset`, `reset-before-request`,
    `connect-failure`, `retriable-4xx`, `refused-stream`,
    `retriable-status-codes`, `http3-post-connect-failure`,
    `envoy-ratelimited`; gRPC's `cancelled`, `deadline-exceeded`,
    `internal`, `resource-exhausted`, `unavailable`; anything else too).
    `status_codes` is `retriable_status_codes` (used with
    `retriable-status-codes`). `num_retries` defaults to 1 as in Envoy.
    Durations are seconds; `None` where the control plane set none (Envoy's
    defaults then: no per-try limit, backoff base 25 ms, max 10 x base).
    """

    retry_on: tuple[str, ...]
    status_codes: tuple[int, ...] = ()
    num_retries: int = 1
    per_try_timeout: float | None = None
    backoff_base: float | None = None
    backoff_max: float | None = None


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """`route.v3.Route`: a match and what to do with the requests it matches.

    Routes are tried in order; the first whose `path`, every `headers` and
    every `query` condition hold wins. `kind` is the route's action:
    `route` forwards to `clusters`; `redirect`, `direct_response`,
    `non_forwarding` and `filter_action` are kept (so that matching
    requests still stop at them, as gRPC does) with `clusters=()`: a request
    matching one must fail, not fall through to a later route.

    `clusters`: `((name, 1),)` for `cluster`; the `(name, weight)` pairs
    of `weighted_clusters` (pairs of weight 0 dropped, as gRPC does; the total
    is positive). `timeout` (seconds): `RouteAction.timeout`, else
    `max_stream_duration.max_stream_duration`, else the listener's
    `common_http_protocol_options.max_stream_duration`; `None` when none
    is set or it is 0 (Envoy's "no limit"; meshlib's own policy still applies;
    Envoy itself would default to 15 s). `grpc_timeout_header_max` is not
    used (it caps a gRPC `grpc-timeout` header). `retry`: the route's
    retry policy, else its virtual host's. Hash policies are ignored (they only
    serve ring-hash and Maglev, which are NACKed).
    """

    name: str
    path: PathMatch
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    kind: RouteKind = "route"
    clusters: tuple[tuple[str, int], ...] = ()
    timeout: float | None = None
    retry: RetrySpec | None = None

    def matches(self, path: str, headers: Mapping[str, str] | None = None,
                query: Mapping[str, str] | None = None) -> bool:
        """Whether a request matches: `path` without its query string, `headers`
        keyed by lower-case name (values of repeated headers joined with `,`),
        `query` by parameter name (first values, percent-decoded)."""
        headers = headers or {}
        query = query or {}
        return (self.path.matches(path)
                and all(h.matches(headers.get(h.name)) for h in self.headers)
                and all(q.matches(query.get(q.name)) for q in self.query))


@dataclass(frozen=True, slots=True)
class VirtualHostSpec:
    """`route.v3.VirtualHost`: the routes for a set of authorities (`domains`).

    `domains` are lower-cased; each is an exact host (`users`,
    `users:8080`), a suffix wildcard (`*.example.com`, `*-users`), a
    prefix wildcard (`users.*`) or `*`. `select_virtual_host()` picks one.
    """

    name: str
    domains: tuple[str, ...]
    routes: tuple[RouteSpec, ...]


@dataclass(frozen=True, slots=True)
class RouteConfigSpec:
    """`route.v3.RouteConfiguration` (from RDS, or inline in the listener)."""

    name: str
    virtual_hosts: tuple[VirtualHostSpec, ...]

    def cluster_names(self) -> tuple[str, ...]:
        """Every cluster a route names, in first-seen order."""
        seen: dict[str, None] = {}
        for vhost in self.virtual_hosts:
            for route in vhost.routes:
                for name, _ in route.clusters:
                    seen.setdefault(name, None)
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """`listener.v3.Listener` as a client reads it: the `api_listener`'s
    `HttpConnectionManager`.

    Exactly one of `route_config_name` (RDS, over ADS) and `route_config`
    (inline) is set. `max_stream_duration` (seconds) is the connection
    manager's `common_http_protocol_options.max_stream_duration`, the
    default route timeout.
    """

    name: str
    route_config_name: str | None = None
    route_config: RouteConfigSpec | None = None
    max_stream_duration: float | None = None


# -- clusters and endpoints -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutlierSpec:
    """`cluster.v3.OutlierDetection`, every field with Envoy's default when absent.

    Counts are integers; `*_percent`/`enforcing_*`/`*_threshold` are
    percentages 0..100; `success_rate_stdev_factor` is Envoy's value divided
    by 1000 (1900 -> 1.9); durations are seconds. `enforcing_*` is the
    chance (in %) that a detected outlier is really ejected; Envoy's defaults
    enforce consecutive 5xx, local-origin failures and success rate (100) but
    not consecutive gateway failures or failure percentage (0).
    """

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    split_external_local_origin_errors: bool = False
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_time_jitter: float = 0.0
    max_ejection_percent: int = 10
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_success_rate: int = 100
    enforcing_local_origin_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: float = 1.9
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    always_eject_one_host: bool = False


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """`endpoint.v3.LbEndpoint` with its `LocalityLbEndpoints`' locality and priority.

    `host` is an IP address or a host name as sent; `weight` is the
    endpoint's `load_balancing_weight` (default 1, never 0); `health` is
    one of `HEALTH_STATUSES`; `zone`, `region`, `sub_zone` are the
    locality's (`None` when empty); `locality_weight` is the locality's
    `load_balancing_weight` (`None` when unset: gRPC then ignores the
    locality, Envoy uses it unless locality-weighted balancing is on);
    `priority` is the locality's (0 is the highest; priorities are contiguous).
    `hostname` is the endpoint's `hostname` (`None` when empty).
    """

    host: str
    port: int
    weight: int = 1
    health: Health = "UNKNOWN"
    zone: str | None = None
    region: str | None = None
    sub_zone: str | None = None
    locality_weight: int | None = None
    priority: int = 0
    hostname: str | None = None

    @property
    def address(self) -> str:
        """`host:port`, IPv6 in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class EndpointsSpec:
    """`endpoint.v3.ClusterLoadAssignment`: a cluster's endpoints, every locality flattened.

    `cluster_name` is the resource's name (the cluster's `eds_service_name`,
    or the cluster's name). The endpoints keep the order they were sent in.
    """

    cluster_name: str
    endpoints: tuple[EndpointSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """`cluster.v3.Cluster`: how to balance and protect requests to a cluster.

    `type`: `EDS` (endpoints from EDS, by `eds_service_name` or, when that
    is `None`, the cluster's name) or `STATIC` (endpoints inline, in
    `load_assignment`). `lb_policy`: `round-robin`, `least-request`
    (two choices) or `random`. `outlier`: `None` when the cluster has no
    `outlier_detection` (no ejection). `max_requests`: the DEFAULT-priority
    circuit-breaker threshold when set (Envoy's default is 1024).
    `connect_timeout` in seconds, `None` when unset (Envoy's default is 5 s).
    """

    name: str
    type: ClusterType = "EDS"
    eds_service_name: str | None = None
    lb_policy: LbPolicy = "round-robin"
    outlier: OutlierSpec | None = None
    max_requests: int | None = None
    connect_timeout: float | None = None
    load_assignment: EndpointsSpec | None = None

    @property
    def eds_name(self) -> str | None:
        """The EDS resource this cluster's endpoints come from (`None` for STATIC)."""
        if self.type != "EDS":
            return None
        return self.eds_service_name or self.name


@dataclass(frozen=True, slots=True)
class XdsConfig:
    """One complete, consistent configuration for a listener: what a client routes by.

    Every cluster a route of `virtual_hosts` names is in `clusters` (by
    cluster name), and every one of those clusters has its `endpoints` (by
    cluster name; an EDS cluster's come from its EDS resource, a STATIC
    cluster's from its `load_assignment`). `versions` holds the version of
    each resource type the configuration was built from (`lds`, `rds`,
    `cds`, `eds`; `rds` is `""` for an inline route configuration).
    A client swaps its whole configuration at once, so nothing ever sees one
    type's update without the others it needs.
    """

    listener: str
    route_config_name: str
    virtual_hosts: tuple[VirtualHostSpec, ...]
    clusters: Mapping[str, ClusterSpec] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: Mapping[str, EndpointsSpec] = field(
        default_factory=lambda: MappingProxyType({}))
    versions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in ("clusters", "endpoints", "versions"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    def virtual_host(self, authority: str) -> VirtualHostSpec | None:
        """The virtual host for `authority` (see `select_virtual_host()`)."""
        return select_virtual_host(self.virtual_hosts, authority)


def select_virtual_host(virtual_hosts: Sequence[VirtualHostSpec],
                        authority: str) -> VirtualHostSpec | None:
    """The virtual host whose `domains` best match `authority`, as Envoy and gRPC choose.

    An exact domain wins; then the longest suffix wildcard (`*.example.com`);
    then the longest prefix wildcard (`users.*`); then `*`. Matching ignores
    case; `authority` is compared as given (with its port, if any).
    `None` when no domain matches.
    """
    host = authority.lower()
    best: tuple[int, int] | None = None  # (rank: 0 exact .. 3 "*", -length)
    chosen: VirtualHostSpec | None = None
    for vhost in virtual_hosts:
        for domain in vhost.domains:
            rank = _domain_rank(domain, host)
            if rank is not None and (best is None or rank < best):
                best, chosen = rank, vhost
    return chosen


def _domain_rank(domain: str, host: str) -> tuple[int, int] | None:
    if domain == "*":
        return (3, 0)
    if domain.startswith("*"):
        suffix = domain[1:]
        return (1, -len(suffix)) if len(host) > len(suffix) and host.endswith(suffix) else None
    if domain.endswith("*"):
        prefix = domain[:-1]
        return (2, -len(prefix)) if len(host) > len(prefix) and host.startswith(prefix) else None
    return (0, 0) if domain == host else None


def usable_endpoints(endpoints: Iterable[EndpointSpec]) -> tuple[EndpointSpec, ...]:
    """The endpoints that may take requests: health HEALTHY or UNKNOWN (never
    DRAINING, UNHEALTHY, TIMEOUT or DEGRADED), in their order."""
    return tuple(e for e in endpoints if e.health in USABLE_HEALTH)


# -- decoding: common pieces ------------------------------------------------------------------


def _seconds(duration: Any, what: str) -> float:
    if duration.seconds < 0 or duration.nanos < 0:
        raise ResourceError(f"{what} is negative")
    return float(duration.seconds + duration.nanos / 1e9)


def _opt_seconds(message: Any, name: str, what: str) -> float | None:
    """A Duration field in seconds; `None` when unset or 0."""
    if not message.HasField(name):
        return None
    value = _seconds(getattr(message, name), what)
    return value or None


def _u32(message: Any, name: str, default: int) -> int:
    return int(getattr(message, name).value) if message.HasField(name) else default


def _percent(message: Any, name: str, default: int) -> int:
    value = _u32(message, name, default)
    if value > 100:
        raise ResourceError(f"outlier_detection.{name} is {value}, more than 100")
    return value


def _string_match(matcher: Any, what: str) -> StringMatch:
    kind = matcher.WhichOneof("match_pattern")
    ignore_case = bool(matcher.ignore_case)
    if kind == "safe_regex":
        return StringMatch("regex", _regex(matcher.safe_regex.regex, what), False)
    if kind in ("exact", "prefix", "suffix", "contains"):
        value = getattr(matcher, kind)
        if kind != "exact" and not value:
            raise ResourceError(f"{what}: an empty {kind} is not allowed (Envoy refuses it)")
        return StringMatch(kind, value, ignore_case)
    if kind == "custom":
        raise ResourceError(f"{what}: custom string matchers "
                            f"({matcher.custom.typed_config.type_url}) are not supported")
    raise ResourceError(f"{what}: no match pattern")


def _regex(text: str, what: str) -> str:
    try:
        compile_regex(text)
    except ResourceError as exc:
        raise ResourceError(f"{what}: {exc}") from None
    return text


def _config_source_is_ads(source: Any) -> bool:
    return source.WhichOneof("config_source_specifier") in ("ads", "self")


def _unpack(any_message: Any, full_name: str, what: str) -> Any:
    expected = messages.type_url(full_name)
    if any_message.type_url != expected:
        raise ResourceError(f"{what} is {any_message.type_url or 'empty'}, not {expected}")
    message = messages.message_class(full_name)()
    try:
        message.ParseFromString(any_message.value)
    except Exception as exc:  # DecodeError, or the C extension's own
        raise ResourceError(f"{what}: cannot decode: {exc}") from None
    return message


# -- decoding: listeners ----------------------------------------------------------------------

_HCM_NAME = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def decode_listener(listener: Any) -> ListenerSpec:
    """A `Listener` as a client uses it: its `api_listener` (as gRPC reads it).

    Raises `ResourceError` for a listener without an API listener, a
    route configuration not over ADS, scoped routes, and an HTTP filter chain
    that is empty, does not end in the router or holds a filter meshlib cannot honour
    (filters marked `is_optional` or `disabled` are skipped).
    """
    if not listener.name:
        raise ResourceError("the listener has no name")
    if not listener.HasField("api_listener"):
        raise ResourceError("the listener has no api_listener (a client reads the "
                            "api_listener's HttpConnectionManager, as gRPC does)")
    hcm = _unpack(listener.api_listener.api_listener, _HCM_NAME, "api_listener")
    http_filters = list(hcm.http_filters)
    if not http_filters:
        raise ResourceError("http_filters is empty (it must end with the router, "
                            "envoy.extensions.filters.http.router.v3.Router)")
    seen: set[str] = set()
    for index, http_filter in enumerate(http_filters):
        what = f"http_filters[{index}] {http_filter.name!r}"
        if http_filter.name in seen:
            raise ResourceError(f"{what}: duplicate filter name")
        seen.add(http_filter.name)
        kind = http_filter.WhichOneof("config_type")
        type_url = http_filter.typed_config.type_url if kind == "typed_config" else ""
        is_router = type_url == messages.ROUTER
        if is_router and index != len(http_filters) - 1:
            raise ResourceError(f"{what}: the router must be the last HTTP filter")
        if not is_router and not (http_filter.is_optional or http_filter.disabled):
            detail = type_url or ("config_discovery" if kind else "no config")
            raise ResourceError(f"{what} ({detail}) is not supported (only the router; "
                                "mark other filters is_optional)")
    if http_filters[-1].typed_config.type_url != messages.ROUTER:
        raise ResourceError("the last HTTP filter is not the router "
                            "(envoy.extensions.filters.http.router.v3.Router)")
    max_stream_duration = None
    if hcm.HasField("common_http_protocol_options"):
        max_stream_duration = _opt_seconds(
            hcm.common_http_protocol_options, "max_stream_duration",
            "common_http_protocol_options.max_stream_duration")
    which = hcm.WhichOneof("route_specifier")
    if which == "rds":
        if not _config_source_is_ads(hcm.rds.config_source):
            raise ResourceError("rds.config_source is not ads or self (meshlib fetches "
                                "route configurations over the same ADS stream)")
        if not hcm.rds.route_config_name:
            raise ResourceError("rds.route_config_name is empty")
        return ListenerSpec(listener.name, route_config_name=hcm.rds.route_config_name,
                            max_stream_duration=max_stream_duration)
    if which == "route_config":
        try:
            inline = decode_route_configuration(hcm.route_config)
        except ResourceError as exc:
            raise ResourceError(f"inline route_config: {exc}") from None
        return ListenerSpec(listener.name, route_config=inline,
                            max_stream_duration=max_stream_duration)
    if which == "scoped_routes":
        raise ResourceError("scoped_routes are not supported")
    raise ResourceError("the HttpConnectionManager has neither rds nor route_config")


# -- decoding: route configurations -------------------------------------------------------------


def decode_route_configuration(config: Any) -> RouteConfigSpec:
    """A `RouteConfiguration`: its virtual hosts and their routes.

    Raises `ResourceError` naming the virtual host and route of the first
    problem (see docs/xds.md for what is refused).
    """
    name = config.name
    if config.HasField("vhds"):
        raise ResourceError("vhds (on-demand virtual hosts) is not supported")
    if config.vhost_header:
        raise ResourceError(f"vhost_header {config.vhost_header!r} is not supported")
    if len(config.request_mirror_policies):
        raise ResourceError("request_mirror_policies are not supported")
    domains: dict[str, str] = {}
    virtual_hosts = []
    for index, vhost in enumerate(config.virtual_hosts):
        what = f"virtual_hosts[{index}] {vhost.name!r}"
        try:
            spec = _virtual_host(vhost)
        except ResourceError as exc:
            raise ResourceError(f"{what}: {exc}") from None
        for domain in spec.domains:
            if domain in domains:
                raise ResourceError(f"{what}: domain {domain!r} is also in virtual host "
                                    f"{domains[domain]!r} (domains must be unique)")
            domains[domain] = vhost.name
        virtual_hosts.append(spec)
    return RouteConfigSpec(name, tuple(virtual_hosts))


def _virtual_host(vhost: Any) -> VirtualHostSpec:
    if not vhost.name:
        raise ResourceError("the virtual host has no name")
    if not vhost.domains:
        raise ResourceError("no domains")
    domains = []
    for domain in vhost.domains:
        if not domain or domain.count("*") > 1 or "*" in domain[1:-1]:
            raise ResourceError(f"domain {domain!r}: a wildcard may only start or end a domain")
        domains.append(domain.lower())
    if vhost.HasField("matcher"):
        raise ResourceError("matcher (the generic matching tree) is not supported")
    if vhost.require_tls:
        raise ResourceError("require_tls is not supported")
    if len(vhost.request_mirror_policies):
        raise ResourceError("request_mirror_policies are not supported")
    if vhost.HasField("retry_policy_typed_config"):
        raise ResourceError("retry_policy_typed_config is not supported")
    vhost_retry = _retry(vhost.retry_policy) if vhost.HasField("retry_policy") else None
    routes = []
    for index, route in enumerate(vhost.routes):
        label = f"routes[{index}]" + (f" {route.name!r}" if route.name else "")
        try:
            routes.append(_route(route, vhost_retry))
        except ResourceError as exc:
            raise ResourceError(f"{label}: {exc}") from None
    return VirtualHostSpec(vhost.name, tuple(domains), tuple(routes))


def _route(route: Any, vhost_retry: RetrySpec | None) -> RouteSpec:
    if not route.HasField("match"):
        raise ResourceError("no match")
    match = route.match
    path = _path(match)
    for unsupported in ("grpc", "tls_context"):
        if match.HasField(unsupported):
            raise ResourceError(f"match.{unsupported} is not supported")
    for unsupported in ("dynamic_metadata", "filter_state", "cookies"):
        if len(getattr(match, unsupported)):
            raise ResourceError(f"match.{unsupported} is not supported")
    if match.HasField("runtime_fraction"):
        fraction = match.runtime_fraction.default_value
        if fraction.numerator < _DENOMINATORS.get(fraction.denominator, 0):
            raise ResourceError("match.runtime_fraction below 100% is not supported")
    headers = tuple(_header(h, f"match.headers[{i}]") for i, h in enumerate(match.headers))
    query = tuple(_query(q, f"match.query_parameters[{i}]")
                  for i, q in enumerate(match.query_parameters))
    action = route.WhichOneof("action")
    if action is None:
        raise ResourceError("no action")
    if action != "route":
        return RouteSpec(route.name, path, headers, query, kind=_ACTION_KINDS[action])
    clusters, timeout, retry = _route_action(route.route)
    return RouteSpec(route.name, path, headers, query, kind="route", clusters=clusters,
                     timeout=timeout, retry=retry or vhost_retry)


#: Route's actions other than ``route``, and the RouteSpec kind each becomes
_ACTION_KINDS: dict[str, RouteKind] = {
    "redirect": "redirect", "direct_response": "direct_response",
    "non_forwarding_action": "non_forwarding", "filter_action": "filter_action"}

#: FractionalPercent denominators (HUNDRED, TEN_THOUSAND, MILLION) by enum number
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


def _path(match: Any) -> PathMatch:
    case_sensitive = match.case_sensitive.value if match.HasField("case_sensitive") else True
    which = match.WhichOneof("path_specifier")
    if which == "prefix":
        return PathMatch("prefix", match.prefix, case_sensitive)
    if which == "path":
        return PathMatch("exact", match.path, case_sensitive)
    if which == "safe_regex":
        return PathMatch("regex", _regex(match.safe_regex.regex, "match.safe_regex"))
    if which == "path_separated_prefix":
        value = match.path_separated_prefix
        if not re.fullmatch(r"[^?#]+[^?#/]", value):
            raise ResourceError(f"match.path_separated_prefix {value!r} must not be empty, "
                                "end in '/' or hold '?' or '#'")
        return PathMatch("separated_prefix", value, case_sensitive)
    if which is None:
        raise ResourceError("match has no path specifier")
    raise ResourceError(f"match.{which} is not supported")


def _header(matcher: Any, what: str) -> HeaderMatch:
    name = matcher.name.lower()
    if not name:
        raise ResourceError(f"{what}: no header name")
    what = f"{what} {name!r}"
    which = matcher.WhichOneof("header_match_specifier")
    invert = bool(matcher.invert_match)
    missing = bool(matcher.treat_missing_header_as_empty)
    if which == "present_match":
        return HeaderMatch(name, present=bool(matcher.present_match), invert=invert,
                           missing_as_empty=missing)
    if which == "range_match":
        start, end = matcher.range_match.start, matcher.range_match.end
        if start > end:
            raise ResourceError(f"{what}: range start {start} is above its end {end}")
        return HeaderMatch(name, range=(start, end), invert=invert,
                           missing_as_empty=missing)
    if which == "string_match":
        return HeaderMatch(name, match=_string_match(matcher.string_match, what), invert=invert,
                           missing_as_empty=missing)
    if which == "safe_regex_match":
        value = _regex(matcher.safe_regex_match.regex, what)
        return HeaderMatch(name, match=StringMatch("regex", value), invert=invert,
                           missing_as_empty=missing)
    if which in _LEGACY_HEADER_KINDS:
        value = getattr(matcher, which)
        if which != "exact_match" and not value:
            raise ResourceError(f"{what}: an empty {which} is not allowed (Envoy refuses it)")
        legacy = StringMatch(_LEGACY_HEADER_KINDS[which], value)
        return HeaderMatch(name, match=legacy, invert=invert, missing_as_empty=missing)
    # no specifier: Envoy matches a present header
    return HeaderMatch(name, present=True, invert=invert, missing_as_empty=missing)


#: HeaderMatcher's deprecated matchers, and the StringMatch kind each stands for
_LEGACY_HEADER_KINDS: dict[str, StringMatchKind] = {
    "exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
    "contains_match": "contains"}


def _query(matcher: Any, what: str) -> QueryMatch:
    if not matcher.name:
        raise ResourceError(f"{what}: no parameter name")
    what = f"{what} {matcher.name!r}"
    if matcher.WhichOneof("query_parameter_match_specifier") == "string_match":
        return QueryMatch(matcher.name, _string_match(matcher.string_match, what))
    return QueryMatch(matcher.name)


def _route_action(action: Any) -> tuple[tuple[tuple[str, int], ...], float | None,
                                         RetrySpec | None]:
    which = action.WhichOneof("cluster_specifier")
    clusters: tuple[tuple[str, int], ...]
    if which == "cluster":
        if not action.cluster:
            raise ResourceError("route.cluster is empty")
        clusters = ((action.cluster, 1),)
    elif which == "weighted_clusters":
        clusters = _weighted(action.weighted_clusters)
    elif which is None:
        raise ResourceError("route has no cluster")
    else:
        raise ResourceError(f"route.{which} is not supported")
    for unsupported in ("prefix_rewrite", "path_rewrite"):
        if getattr(action, unsupported):
            raise ResourceError(f"route.{unsupported} is not supported")
    for unsupported in ("regex_rewrite", "path_rewrite_policy", "metadata_match",
                        "retry_policy_typed_config", "inline_cluster_specifier_plugin"):
        if action.HasField(unsupported):
            raise ResourceError(f"route.{unsupported} is not supported")
    host_rewrite = action.WhichOneof("host_rewrite_specifier")
    if host_rewrite is not None and not (host_rewrite == "auto_host_rewrite"
                                         and not action.auto_host_rewrite.value):
        raise ResourceError(f"route.{host_rewrite} is not supported")
    if len(action.request_mirror_policies):
        raise ResourceError("route.request_mirror_policies are not supported")
    timeout = _opt_seconds(action, "timeout", "route.timeout")
    if timeout is None and action.HasField("max_stream_duration"):
        timeout = _opt_seconds(action.max_stream_duration, "max_stream_duration",
                               "route.max_stream_duration.max_stream_duration")
    retry = _retry(action.retry_policy) if action.HasField("retry_policy") else None
    return clusters, timeout, retry


def _weighted(weighted: Any) -> tuple[tuple[str, int], ...]:
    random_value = weighted.WhichOneof("random_value_specifier")
    if random_value == "header_name" or (random_value == "use_hash_policy"
                                         and weighted.use_hash_policy.value):
        raise ResourceError(f"weighted_clusters.{random_value} is not supported")
    pairs = []
    total = 0
    for index, entry in enumerate(weighted.clusters):
        what = f"weighted_clusters.clusters[{index}]"
        if entry.cluster_header:
            raise ResourceError(f"{what}.cluster_header is not supported")
        if entry.WhichOneof("host_rewrite_specifier"):
            raise ResourceError(f"{what}.host_rewrite_literal is not supported")
        if entry.HasField("metadata_match"):
            raise ResourceError(f"{what}.metadata_match is not supported")
        if not entry.name:
            raise ResourceError(f"{what} has no name")
        weight = int(entry.weight.value) if entry.HasField("weight") else 0
        if weight == 0:
            continue
        total += weight
        pairs.append((entry.name, weight))
    if total == 0:
        raise ResourceError("weighted_clusters: the weights sum to 0")
    if total > 0xFFFFFFFF:
        raise ResourceError("weighted_clusters: the weights sum to more than 2^32 - 1")
    return tuple(pairs)


def _retry(policy: Any) -> RetrySpec:
    what = "retry_policy"
    for unsupported in ("retriable_headers", "retriable_request_headers",
                        "retry_options_predicates"):
        if len(getattr(policy, unsupported)):
            raise ResourceError(f"{what}.{unsupported} is not supported")
    if policy.HasField("rate_limited_retry_back_off"):
        raise ResourceError(f"{what}.rate_limited_retry_back_off is not supported")
    conditions = tuple(c.strip().lower() for c in policy.retry_on.split(",") if c.strip())
    num_retries = _u32(policy, "num_retries", 1)
    per_try = _opt_seconds(policy, "per_try_timeout", f"{what}.per_try_timeout")
    base = maximum = None
    if policy.HasField("retry_back_off"):
        backoff = policy.retry_back_off
        if not backoff.HasField("base_interval"):
            raise ResourceError(f"{what}.retry_back_off has no base_interval")
        base = _seconds(backoff.base_interval, f"{what}.retry_back_off.base_interval")
        if base <= 0:
            raise ResourceError(f"{what}.retry_back_off.base_interval must be above 0")
        if backoff.HasField("max_interval"):
            maximum = _seconds(backoff.max_interval, f"{what}.retry_back_off.max_interval")
            if maximum < base:
                raise ResourceError(f"{what}.retry_back_off.max_interval is below "
                                    "base_interval")
    codes = []
    for code in policy.retriable_status_codes:
        if not 100 <= code <= 599:
            raise ResourceError(f"{what}.retriable_status_codes: {code} is not an HTTP status")
        codes.append(int(code))
    return RetrySpec(conditions, tuple(codes), num_retries, per_try, base, maximum)


# -- decoding: clusters ---------------------------------------------------------------------

#: Cluster.LbPolicy numbers meshlib honours
_LB_POLICIES: dict[int, LbPolicy] = {0: "round-robin", 1: "least-request", 3: "random"}
#: typed load-balancing policies (``load_balancing_policy``) meshlib honours, by type URL
_TYPED_LB: dict[str, LbPolicy] = {
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin":
        "round-robin",
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3."
    "LeastRequest": "least-request",
    "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random": "random",
}


def _enum_name(message: Any, field_name: str) -> str:
    enum = message.DESCRIPTOR.fields_by_name[field_name].enum_type
    number = getattr(message, field_name)
    value = enum.values_by_number.get(number)
    return value.name if value is not None else str(number)


def decode_cluster(cluster: Any) -> ClusterSpec:
    """A `Cluster`: its type, balancing policy, outlier detection and limits.

    Raises `ResourceError` for a cluster type other than EDS (over ADS)
    or STATIC, a balancing policy meshlib does not have, TLS to the endpoints
    (`transport_socket`) and other settings that would change how requests
    are sent (see docs/xds.md).
    """
    name = cluster.name
    if not name:
        raise ResourceError("the cluster has no name")
    which = cluster.WhichOneof("cluster_discovery_type")
    if which == "cluster_type":
        raise ResourceError(f"cluster_type {cluster.cluster_type.name!r} is not supported")
    kind = _enum_name(cluster, "type")
    eds_service_name = None
    load_assignment = None
    cluster_type: ClusterType
    if kind == "EDS":
        cluster_type = "EDS"
        eds = cluster.eds_cluster_config
        if not _config_source_is_ads(eds.eds_config):
            raise ResourceError("eds_cluster_config.eds_config is not ads or self (meshlib "
                                "fetches endpoints over the same ADS stream)")
        eds_service_name = eds.service_name or None
    elif kind == "STATIC":
        cluster_type = "STATIC"
        if not cluster.HasField("load_assignment"):
            raise ResourceError("a STATIC cluster needs a load_assignment")
        try:
            load_assignment = decode_endpoints(cluster.load_assignment, name=name)
        except ResourceError as exc:
            raise ResourceError(f"load_assignment: {exc}") from None
    else:
        raise ResourceError(f"type {kind} is not supported (EDS or STATIC)")
    lb_policy = _lb_policy(cluster)
    if cluster.HasField("transport_socket"):
        raise ResourceError(f"transport_socket {cluster.transport_socket.name!r} (TLS to the "
                            "endpoints) is not supported")
    for unsupported in ("transport_socket_matches", "filters"):
        if len(getattr(cluster, unsupported)):
            raise ResourceError(f"{unsupported} is not supported")
    for unsupported in ("transport_socket_matcher", "lb_subset_config", "upstream_config"):
        if cluster.HasField(unsupported):
            raise ResourceError(f"{unsupported} is not supported")
    outlier = _outlier(cluster.outlier_detection) if cluster.HasField(
        "outlier_detection") else None
    max_requests = None
    for threshold in cluster.circuit_breakers.thresholds:
        if threshold.priority == 0 and threshold.HasField("max_requests"):
            max_requests = int(threshold.max_requests.value)
    connect_timeout = None
    if cluster.HasField("connect_timeout"):
        connect_timeout = _seconds(cluster.connect_timeout, "connect_timeout")
        if connect_timeout <= 0:
            raise ResourceError("connect_timeout must be above 0")
    return ClusterSpec(name, cluster_type, eds_service_name, lb_policy, outlier, max_requests,
                       connect_timeout, load_assignment)


def _lb_policy(cluster: Any) -> LbPolicy:
    if cluster.HasField("load_balancing_policy"):
        names = []
        for typed in cluster.load_balancing_policy.policies:
            type_url = typed.typed_extension_config.typed_config.type_url
            if type_url in _TYPED_LB:
                return _TYPED_LB[type_url]
            names.append(type_url.rsplit(".", 1)[-1] or "?")
        raise ResourceError(f"load_balancing_policy ({', '.join(names) or 'empty'}) has no "
                            "policy meshlib supports (RoundRobin, LeastRequest, Random)")
    number = int(cluster.lb_policy)
    if number not in _LB_POLICIES:
        raise ResourceError(f"lb_policy {_enum_name(cluster, 'lb_policy')} is not supported "
                            "(ROUND_ROBIN, LEAST_REQUEST or RANDOM)")
    policy = _LB_POLICIES[number]
    if policy == "least-request" and cluster.HasField("least_request_lb_config"):
        config = cluster.least_request_lb_config
        if config.HasField("choice_count") and config.choice_count.value != 2:
            raise ResourceError(f"least_request_lb_config.choice_count "
                                f"{config.choice_count.value} is not supported (meshlib "
                                "picks the less loaded of 2)")
        if config.HasField("active_request_bias"):
            raise ResourceError("least_request_lb_config.active_request_bias is not supported")
    return policy


def _outlier(od: Any) -> OutlierSpec:
    d = OutlierSpec()

    def secs(name: str, default: float) -> float:
        if not od.HasField(name):
            return default
        return _seconds(getattr(od, name), f"outlier_detection.{name}")

    interval = secs("interval", d.interval)
    if interval <= 0:
        raise ResourceError("outlier_detection.interval must be above 0")
    return OutlierSpec(
        consecutive_5xx=_u32(od, "consecutive_5xx", d.consecutive_5xx),
        consecutive_gateway_failure=_u32(od, "consecutive_gateway_failure",
                                         d.consecutive_gateway_failure),
        consecutive_local_origin_failure=_u32(od, "consecutive_local_origin_failure",
                                              d.consecutive_local_origin_failure),
        split_external_local_origin_errors=bool(od.split_external_local_origin_errors),
        interval=interval,
        base_ejection_time=secs("base_ejection_time", d.base_ejection_time),
        max_ejection_time=secs("max_ejection_time", d.max_ejection_time),
        max_ejection_time_jitter=secs("max_ejection_time_jitter", d.max_ejection_time_jitter),
        max_ejection_percent=_percent(od, "max_ejection_percent", d.max_ejection_percent),
        enforcing_consecutive_5xx=_percent(od, "enforcing_consecutive_5xx",
                                           d.enforcing_consecutive_5xx),
        enforcing_consecutive_gateway_failure=_percent(
            od, "enforcing_consecutive_gateway_failure", d.enforcing_consecutive_gateway_failure),
        enforcing_consecutive_local_origin_failure=_percent(
            od, "enforcing_consecutive_local_origin_failure",
            d.enforcing_consecutive_local_origin_failure),
        enforcing_success_rate=_percent(od, "enforcing_success_rate", d.enforcing_success_rate),
        enforcing_local_origin_success_rate=_percent(
            od, "enforcing_local_origin_success_rate", d.enforcing_local_origin_success_rate),
        success_rate_minimum_hosts=_u32(od, "success_rate_minimum_hosts",
                                        d.success_rate_minimum_hosts),
        success_rate_request_volume=_u32(od, "success_rate_request_volume",
                                         d.success_rate_request_volume),
        success_rate_stdev_factor=_u32(od, "success_rate_stdev_factor", 1900) / 1000,
        failure_percentage_threshold=_percent(od, "failure_percentage_threshold",
                                              d.failure_percentage_threshold),
        enforcing_failure_percentage=_percent(od, "enforcing_failure_percentage",
                                              d.enforcing_failure_percentage),
        enforcing_failure_percentage_local_origin=_percent(
            od, "enforcing_failure_percentage_local_origin",
            d.enforcing_failure_percentage_local_origin),
        failure_percentage_minimum_hosts=_u32(od, "failure_percentage_minimum_hosts",
                                              d.failure_percentage_minimum_hosts),
        failure_percentage_request_volume=_u32(od, "failure_percentage_request_volume",
                                               d.failure_percentage_request_volume),
        always_eject_one_host=bool(od.always_eject_one_host.value)
        if od.HasField("always_eject_one_host") else False,
    )


# -- decoding: endpoints ----------------------------------------------------------------------


def decode_endpoints(assignment: Any, *, name: str | None = None) -> EndpointsSpec:
    """A `ClusterLoadAssignment`: every endpoint of every locality, flattened.

    `name` is used when the assignment has no `cluster_name` (a STATIC
    cluster's inline one). Raises `ResourceError` for drop overloads,
    named or non-IP-socket endpoints, an endpoint weight of 0, an address
    given twice, a locality given twice at one priority, and gaps in the
    priorities.
    """
    cluster_name = assignment.cluster_name or name
    if not cluster_name:
        raise ResourceError("the ClusterLoadAssignment has no cluster_name")
    if len(assignment.policy.drop_overloads):
        raise ResourceError("policy.drop_overloads is not supported")
    if len(assignment.named_endpoints):
        raise ResourceError("named_endpoints are not supported")
    endpoints: list[EndpointSpec] = []
    addresses: set[tuple[str, int]] = set()
    localities: set[tuple[int, str, str, str]] = set()
    priorities: set[int] = set()
    for index, group in enumerate(assignment.endpoints):
        what = f"endpoints[{index}]"
        locality = group.locality
        key = (group.priority, locality.region, locality.zone, locality.sub_zone)
        if key in localities:
            raise ResourceError(f"{what}: locality {locality.region}/{locality.zone}/"
                                f"{locality.sub_zone} appears twice at priority "
                                f"{group.priority}")
        localities.add(key)
        priorities.add(group.priority)
        if group.WhichOneof("lb_config") is not None:
            raise ResourceError(f"{what}.{group.WhichOneof('lb_config')} is not supported")
        weight = int(group.load_balancing_weight.value) if group.HasField(
            "load_balancing_weight") else None
        for position, lb_endpoint in enumerate(group.lb_endpoints):
            spec = _lb_endpoint(lb_endpoint, f"{what}.lb_endpoints[{position}]")
            if (spec.host, spec.port) in addresses:
                raise ResourceError(f"{what}.lb_endpoints[{position}]: address "
                                    f"{spec.address} appears twice")
            addresses.add((spec.host, spec.port))
            endpoints.append(replace(
                spec, zone=locality.zone or None, region=locality.region or None,
                sub_zone=locality.sub_zone or None, locality_weight=weight,
                priority=int(group.priority)))
    if priorities and priorities != set(range(max(priorities) + 1)):
        raise ResourceError(f"priorities {sorted(priorities)} are not contiguous from 0")
    return EndpointsSpec(cluster_name, tuple(endpoints))


def _lb_endpoint(lb_endpoint: Any, what: str) -> EndpointSpec:
    if lb_endpoint.WhichOneof("host_identifier") != "endpoint":
        raise ResourceError(f"{what}: only endpoint (not endpoint_name) is supported")
    endpoint = lb_endpoint.endpoint
    if endpoint.address.WhichOneof("address") != "socket_address":
        raise ResourceError(f"{what}: the address is not a socket_address")
    socket = endpoint.address.socket_address
    if socket.resolver_name:
        raise ResourceError(f"{what}: resolver_name {socket.resolver_name!r} is not supported")
    if socket.protocol != 0:
        raise ResourceError(f"{what}: the protocol is not TCP")
    if socket.WhichOneof("port_specifier") != "port_value":
        raise ResourceError(f"{what}: named_port is not supported")
    port = int(socket.port_value)
    if not 1 <= port <= 65535:
        raise ResourceError(f"{what}: port {port} is out of range")
    host = socket.address
    if not host:
        raise ResourceError(f"{what}: the address is empty")
    weight = 1
    if lb_endpoint.HasField("load_balancing_weight"):
        weight = int(lb_endpoint.load_balancing_weight.value)
        if weight == 0:
            raise ResourceError(f"{what}: load_balancing_weight is 0")
    number = int(lb_endpoint.health_status)
    if not 0 <= number < len(HEALTH_STATUSES):
        raise ResourceError(f"{what}: unknown health_status {number}")
    health: Health = HEALTH_STATUSES[number]  # type: ignore[assignment]
    return EndpointSpec(host, port, weight, health, hostname=endpoint.hostname or None)

