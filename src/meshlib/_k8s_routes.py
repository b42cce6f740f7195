"""Gateway API HTTPRoutes attached to a `k8s://` Service (the GAMMA mesh profile).

For a service `k8s://users.shop:http` the mesh lists and watches
`gateway.networking.k8s.io/v1` HTTPRoutes in namespace `shop` (the same
list-then-watch protocol as EndpointSlices, resource versions, bookmarks,
410 relists and backoff included) and keeps those whose `parentRefs` name
the Service (`group: ""` or `core`, `kind: Service`). Their rules
become the host's routes:

- each match of a rule (`path` Exact / PathPrefix / RegularExpression,
  `headers`, `queryParams`, `method`) is a route; rules of every
  attached HTTPRoute are ordered by the Gateway API's precedence (exact path,
  longest prefix, method, most headers, most query parameters, then the
  oldest route, then namespace/name, then rule order);
- `backendRefs` with their `weight` are the split; each backend is a
  Service resolved through its own EndpointSlice watch, the cluster
  `k8s:NAME.NAMESPACE:PORT` (its port's name read from the Service, so
  the slices' target port is found);
- `timeouts.request` is the route's `Policy.timeout` and
  `timeouts.backendRequest` its `attempt_timeout`; Linkerd's annotations
  `retry.linkerd.io/http`, `retry.linkerd.io/limit`,
  `retry.linkerd.io/timeout`, `timeout.linkerd.io/request` and
  `timeout.linkerd.io/response` give retries and timeouts (the rule's own
  `timeouts` win).

Requests no route matches, and every request while no HTTPRoute is attached
(none exists, all were deleted, the CRD is not installed, or the client may
not read them), go to the Service itself. A 404 or 403 is said once in the
log; the watch tries again every `HttpRouteSource.RETRY_MISSING` seconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._discovery import DiscoveryFailure, DiscoveryOptions
from ._discovery._http import fetch
from ._discovery._k8s import K8sDiscovery, SliceEndpoint
from ._endpoint import Endpoint
from ._errors import ConfigError
from ._policy import MAX_RETRIES, MAX_SECONDS, Policy
from ._route_source import ClusterSource, RouteUpdate
from ._routing import Backend, PathMatcher, RouteRule, ValueMatcher

__all__ = ["HttpRoute", "HttpRouteSource", "RouteError", "compile_httproutes",
           "parse_duration", "parse_httproute"]

logger = logging.getLogger("meshlib.routes")

GROUP_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces"
#: the cluster a rule without usable backends sends to (no runtime has this key)
NO_BACKENDS = "k8s:!no-backends"

#: GEP-2257 durations: 1 to 4 parts of up to 5 digits, each h, m, s or ms
_DURATION = re.compile(r"^(?:[0-9]{1,5}(?:h|ms|m|s)){1,4}$")
_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
#: Linkerd's retry.linkerd.io/http conditions that are not status ranges
_LINKERD_CONDITIONS = {"5xx": (500, 599), "gateway-error": (502, 504)}
#: rule filters that change headers only (ignored); any other filter changes where a
#: request goes (a redirect, a rewrite, a mirror), which meshlib does not carry out
_HEADER_FILTERS = frozenset({"RequestHeaderModifier", "ResponseHeaderModifier"})


class RouteError(ValueError):
    """An HTTPRoute object that does not follow the documented shape."""


def parse_duration(text: object, where: str) -> float:
    """Seconds of a Gateway API duration (`"10s"`, `"1m30s"`, `"500ms"`)."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise RouteError(f"{where}: {text!r} is not a duration such as 10s, 500ms or 1m30s")
    return min(sum(int(n) * _UNIT[u] for n, u in _PART.findall(text)), MAX_SECONDS)


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A rule's `backendRef`: a Service, its port and its weight."""

    name: str
    namespace: str
    port: int | None
    weight: int = 1


@dataclass(frozen=True, slots=True)
class HttpRule:
    """One rule of an HTTPRoute: its matches (any may hold), backends and policy fields."""

    index: int
    name: str | None
    matches: tuple[Mapping[str, Any], ...]
    backends: tuple[BackendRef, ...]
    policy: Mapping[str, Any] = field(default_factory=dict)
    #: the filter types of the rule that change where a request goes (not carried out)
    refused: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """The parts of an HTTPRoute meshlib uses."""

    name: str
    namespace: str
    created: str
    parents: tuple[tuple[str, str, str], ...]  # (kind, namespace, name) of Service parents
    rules: tuple[HttpRule, ...]

    def attached_to(self, service: str, namespace: str) -> bool:
        """Whether a parentRef names that Service."""
        return ("Service", namespace, service) in self.parents


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RouteError(f"{where} must be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RouteError(f"{where} must be a list")
    return value


def _linkerd_policy(annotations: Mapping[str, Any], where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    conditions = annotations.get("retry.linkerd.io/http")
    if conditions is not None:
        codes: set[int] = set()
        for term in str(conditions).split(","):
            term = term.strip().lower()
            if not term:
                continue
            if term in _LINKERD_CONDITIONS:
                first, last = _LINKERD_CONDITIONS[term]
            else:
                low, _, high = term.partition("-")
                if not low.isdigit() or (high and not high.isdigit()):
                    raise RouteError(f"{where}: retry.linkerd.io/http {term!r} is not 5xx, "
                                     "gateway-error, a status or a range such as 500-504")
                first, last = int(low), int(high or low)
            codes.update(range(max(first, 100), min(last, 599) + 1))
        fields["retry_on"] = tuple(sorted(codes))
        fields["retries"] = 1
    limit = annotations.get("retry.linkerd.io/limit")
    if limit is not None:
        if not str(limit).strip().isdigit():
            raise RouteError(f"{where}: retry.linkerd.io/limit {limit!r} is not a number")
        fields["retries"] = min(int(str(limit).strip()), MAX_RETRIES)
    for key, name in (("retry.linkerd.io/timeout", "attempt_timeout"),
                      ("timeout.linkerd.io/response", "attempt_timeout"),
                      ("timeout.linkerd.io/request", "timeout")):
        value = annotations.get(key)
        if value is not None:
            seconds = parse_duration(str(value).strip(), f"{where}: {key}")
            if seconds > 0:
                fields[name] = seconds
    return fields


def parse_httproute(obj: Any) -> HttpRoute:
    """The HTTPRoute of a `gateway.networking.k8s.io/v1` object (its documented shape).

    Raises `RouteError` naming what does not follow it.
    """
    if not isinstance(obj, dict):
        raise RouteError(f"an HTTPRoute must be an object, not {type(obj).__name__}")
    metadata = _object(obj.get("metadata"), "metadata")
    name, namespace = metadata.get("name"), metadata.get("namespace") or "default"
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        raise RouteError("an HTTPRoute needs metadata.name")
    where = f"HTTPRoute {namespace}/{name}"
    spec = _object(obj.get("spec"), f"{where}: spec")
    parents = []
    for ref in _list(spec.get("parentRefs"), f"{where}: parentRefs"):
        ref = _object(ref, f"{where}: a parentRef")
        if ref.get("group", "gateway.networking.k8s.io") in ("", "core") \
                and ref.get("kind") == "Service" and isinstance(ref.get("name"), str):
            parents.append(("Service", str(ref.get("namespace") or namespace), ref["name"]))
    annotations = _object(metadata.get("annotations"), f"{where}: annotations")
    shared = _linkerd_policy(annotations, where)
    rules = []
    for index, raw in enumerate(_list(spec.get("rules"), f"{where}: rules")):
        at = f"{where} rule {index}"
        rule = _object(raw, at)
        matches = tuple(_object(m, f"{at}: a match") for m in
                        _list(rule.get("matches"), f"{at}: matches")) or ({},)
        backends = []
        for ref in _list(rule.get("backendRefs"), f"{at}: backendRefs"):
            ref = _object(ref, f"{at}: a backendRef")
            if ref.get("group", "") not in ("", "core") or ref.get("kind", "Service") != "Service":
                continue  # not a Service: Gateway API says such a share fails
            weight, port = ref.get("weight", 1), ref.get("port")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0 \
                    or not isinstance(ref.get("name"), str) \
                    or (port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                              or not 1 <= port <= 65535)):
                raise RouteError(f"{at}: a backendRef needs a name, a port 1-65535 and a "
                                 f"weight >= 0, got {ref!r}")
            backends.append(BackendRef(ref["name"], str(ref.get("namespace") or namespace),
                                       port, weight))
        policy = dict(shared)
        timeouts = _object(rule.get("timeouts"), f"{at}: timeouts")
        for key, fname in (("request", "timeout"), ("backendRequest", "attempt_timeout")):
            if key in timeouts:
                seconds = parse_duration(timeouts[key], f"{at}: timeouts.{key}")
                if seconds > 0:  # 0s: no timeout
                    policy[fname] = seconds
                else:
                    policy.pop(fname, None)
        refused = tuple(str(f.get("type")) for f in _list(rule.get("filters"), f"{at}: filters")
                        if isinstance(f, dict) and f.get("type") not in _HEADER_FILTERS)
        rules.append(HttpRule(index, rule.get("name") if isinstance(rule.get("name"), str)
                              else None, matches, tuple(backends), policy, refused))
    return HttpRoute(name, namespace, str(metadata.get("creationTimestamp") or ""),
                     tuple(parents), tuple(rules))


def _value(match: Mapping[str, Any], where: str) -> ValueMatcher:
    kind = match.get("type", "Exact")
    value = match.get("value")
    if not isinstance(value, str):
        raise RouteError(f"{where} needs a value")
    if kind == "Exact":
        return ValueMatcher("exact", value)
    if kind == "RegularExpression":
        return ValueMatcher("regex", value)
    raise RouteError(f"{where}: match type {kind!r} is not supported (Exact, "
                     "RegularExpression)")


def _path(match: Mapping[str, Any], where: str) -> tuple[PathMatcher | None, tuple[int, int]]:
    """The path matcher and its precedence (kind rank, minus the value's length)."""
    path = _object(match.get("path"), f"{where}: path")
    kind, value = path.get("type", "PathPrefix"), path.get("value", "/")
    if not isinstance(value, str) or (not value.startswith("/") and kind != "RegularExpression"):
        raise RouteError(f"{where}: path value must start with '/', got {value!r}")
    if kind == "Exact":
        return PathMatcher("exact", value), (0, -len(value))
    if kind == "PathPrefix":
        return (None if value == "/" else PathMatcher("segment_prefix", value)), (1, -len(value))
    if kind == "RegularExpression":
        return PathMatcher("regex", value), (2, -len(value))
    raise RouteError(f"{where}: path type {kind!r} is not supported")


def backend_key(ref: BackendRef) -> str:
    """The mesh's key for a backend Service port: `k8s:NAME.NAMESPACE:PORT`."""
    return f"k8s:{ref.name}.{ref.namespace}:{ref.port if ref.port is not None else ''}".rstrip(":")


def compile_httproutes(routes: list[HttpRoute], service: str, namespace: str,
                       ) -> tuple[tuple[RouteRule, ...], dict[str, BackendRef]]:
    """The routes of every HTTPRoute attached to the Service, in precedence order, and
    the backends they name (by cluster key). A rule that cannot be carried out is
    left out and logged (the others stay)."""
    ordered: list[tuple[tuple[Any, ...], RouteRule]] = []
    backends: dict[str, BackendRef] = {}
    for route in routes:
        if not route.attached_to(service, namespace):
            continue
        for rule in route.rules:
            key = f"{route.name}/{rule.name if rule.name else rule.index}"
            where = f"HTTPRoute {route.namespace}/{route.name} rule {rule.index}"
            usable = [b for b in rule.backends if b.weight > 0] if not rule.refused else []
            if rule.refused:
                logger.warning("%s has filters meshlib does not carry out (%s): requests it "
                               "matches raise NoRouteError", where, ", ".join(rule.refused))
            targets = tuple(Backend(backend_key(b), b.weight) for b in usable) or (
                Backend(NO_BACKENDS),)
            try:
                policy = Policy(**rule.policy) if rule.policy else None
                for number, match in enumerate(rule.matches):
                    at = f"{where} match {number}"
                    path, rank = _path(match, at)
                    method = match.get("method")
                    headers = tuple((str(h.get("name", "")).lower(), _value(h, f"{at}: header"))
                                    for h in _list(match.get("headers"), f"{at}: headers"))
                    query = tuple((str(q.get("name", "")), _value(q, f"{at}: query"))
                                  for q in _list(match.get("queryParams"), f"{at}: queryParams"))
                    precedence = (*rank, 0 if method else 1, -len(headers), -len(query),
                                  route.created, f"{route.namespace}/{route.name}",
                                  rule.index, number)
                    ordered.append((precedence, RouteRule(
                        key, targets, path=path,
                        method=method.upper() if isinstance(method, str) else None,
                        headers=headers, query=query, policy=policy)))
            except (RouteError, ConfigError) as exc:
                logger.warning("%s is left out: %s", where, exc)
                continue
            for ref in usable:
                backends[backend_key(ref)] = ref
    ordered.sort(key=lambda item: item[0])
    return tuple(rule for _, rule in ordered), backends


class HttpRouteWatch(K8sDiscovery):
    """The HTTPRoutes of one namespace, listed then watched like EndpointSlices."""

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        super().__init__(url, options)
        #: name -> the route as last parsed (``slices`` says which names exist now)
        self.parsed: dict[str, HttpRoute] = {}

    @property
    def path(self) -> str:
        """The HTTPRoute collection of the namespace."""
        return f"{GROUP_PATH}/{self.namespace}/httproutes"

    @property
    def selector(self) -> str:
        """Every HTTPRoute of the namespace (attachment is read from parentRefs)."""
        return ""

    def _take(self, obj: Any, *, into: dict[str, list[SliceEndpoint]],
              previous: dict[str, list[SliceEndpoint]]) -> None:
        try:
            route = parse_httproute(obj)
        except RouteError as exc:
            metadata = obj.get("metadata") if isinstance(obj, dict) else None
            bad = metadata.get("name") if isinstance(metadata, dict) else None
            logger.warning("routes %s: ignoring a bad HTTPRoute: %s", self.url, exc)
            if isinstance(bad, str) and bad in previous:
                into[bad] = previous[bad]
            return
        self.parsed[route.name] = route
        into[route.name] = []

    def snapshot(self) -> tuple[Endpoint, ...]:
        """Nothing: the routes are read with `routes()` after each change."""
        return ()

    def routes(self) -> list[HttpRoute]:
        """The HTTPRoutes that exist now."""
        return [self.parsed[name] for name in sorted(self.slices) if name in self.parsed]


class HttpRouteSource:
    """The routes of a `k8s://` Service from the HTTPRoutes attached to it."""

    #: seconds between tries while the CRD is missing or reading it is forbidden
    RETRY_MISSING = 60.0
    #: the key of its state in snapshot()
    kind = "httproutes"

    def __init__(self, url: str, options: DiscoveryOptions) -> None:
        self.url = url
        self.watch = HttpRouteWatch(url, options)
        self.watch.BACKOFF_MAX = self.RETRY_MISSING
        self.options = options
        self.service, self.namespace = self.watch.service, self.watch.namespace
        self._said: str | None = None
        self._ports: dict[tuple[str, str, int], str | None] = {}
        self.state: dict[str, Any] = {"attached": [], "error": None}

    def status(self) -> dict[str, Any]:
        """The HTTPRoutes in use and the last error, JSON-ready."""
        return dict(self.state)

    async def updates(self) -> AsyncIterator[RouteUpdate | DiscoveryFailure]:
        """Yield the host's routes after the list and each change."""
        async with httpx.AsyncClient(base_url=self.watch.api, trust_env=False,
                                     verify=self.watch._verify(),
                                     timeout=self.watch.REQUEST_TIMEOUT) as client:
            async for item in self.watch.updates():
                if isinstance(item, DiscoveryFailure):
                    missing = "answered HTTP 404" in item.reason or \
                        "answered HTTP 403" in item.reason
                    self.state["error"] = item.reason
                    if not missing:
                        yield item
                        continue
                    if self._said is None:  # no CRD is common (INFO); a refusal is not
                        logger.log(logging.WARNING if "HTTP 403" in item.reason
                                   else logging.INFO,
                                   "routes %s: cannot read HTTPRoutes (%s); requests go to "
                                   "the Service itself", self.url, item.reason)
                    self._said = item.reason
                    self.state["attached"] = []
                    yield RouteUpdate((), {}, self.status())
                    continue
                self._said = None
                self.state["error"] = None
                routes = self.watch.routes()
                rules, refs = compile_httproutes(routes, self.service, self.namespace)
                self.state["attached"] = sorted(
                    f"{r.namespace}/{r.name}" for r in routes
                    if r.attached_to(self.service, self.namespace))
                clusters = {}
                for key, ref in refs.items():
                    port = await self._port_name(client, ref)
                    where = f"k8s://{ref.name}.{ref.namespace}"
                    url = f"{where}:{port}" if port is not None else where
                    clusters[key] = ClusterSource(key, K8sDiscovery(url, self.options),
                                                  display_name=key)
                yield RouteUpdate(rules, clusters, self.status())

    async def _port_name(self, client: httpx.AsyncClient, ref: BackendRef) -> str | int | None:
        """The name of the backend Service's port (what its EndpointSlices carry), read
        from the Service; the number when it cannot be read or the port has no name."""
        if ref.port is None:
            return None
        cache = (ref.namespace, ref.name, ref.port)
        if cache in self._ports:
            return self._ports[cache] or ref.port
        name: str | None = None
        try:
            response = await fetch(client, "GET",
                                   f"/api/v1/namespaces/{ref.namespace}/services/{ref.name}",
                                   headers=self.watch._headers(),
                                   total=self.watch.REQUEST_TIMEOUT)
            if response.status_code == 200:
                for port in _list(_object(response.json().get("spec"), "spec").get("ports"),
                                  "ports"):
                    if isinstance(port, dict) and port.get("port") == ref.port \
                            and isinstance(port.get("name"), str) and port["name"]:
                        name = port["name"]
                self._ports[cache] = name
        except (httpx.HTTPError, ValueError, RouteError, AttributeError) as exc:
            logger.debug("routes %s: cannot read Service %s/%s: %s", self.url, ref.namespace,
                         ref.name, exc)
        return name or ref.port
