"""`XdsRouteSource`: an `xds:///LISTENER` service's routes and clusters, from its
control plane.

It runs an `XdsClient` and turns each complete,
consistent `XdsConfig` into one
`RouteUpdate` (docs/xds.md has the mapping table):

- the virtual host is chosen as gRPC chooses it, by the listener's target
  (the `xds:///` URL's path), once per configuration; none matching gives a
  host without rules (every request raises `NoRouteError`);
- each Route becomes a `RouteRule` (path, headers,
  query, weighted clusters; `RouteAction.timeout` and `retry_policy` as its
  policy); a route that does not forward (redirect, direct response) keeps its
  place and sends to a cluster that does not exist, so requests it matches
  raise `NoRouteError` rather than fall through to a later route;
- each Cluster becomes a `ClusterSource` keyed
  `xds:CLUSTER`: its balancer, outlier detection as breaker fields,
  `circuit_breakers.max_requests` as an in-flight cap, and its EDS
  endpoints (HEALTHY and UNKNOWN ones only) with weights, zones and priorities.

Importing this module imports protobuf (through the resources); the mesh
imports it only for an `xds://` service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._discovery import Discovery, DiscoveryFailure, Update
from ._endpoint import Endpoint
from ._errors import ConfigError
from ._policy import MAX_RETRIES, MAX_SECONDS, Backoff, Breaker, Policy
from ._route_source import ClusterSource, RouteUpdate
from ._routing import Backend, PathMatcher, RouteRule, ValueMatcher
from ._xds import load_client
from ._xds.bootstrap import load_bootstrap, parse_xds_url
from ._xds.resources import (
    ClusterSpec,
    EndpointSpec,
    HeaderMatch,
    QueryMatch,
    RetrySpec,
    RouteSpec,
    XdsConfig,
    usable_endpoints,
)

__all__ = ["NOT_FORWARDED", "EdsDiscovery", "XdsRouteSource", "cluster_key", "route_update"]

logger = logging.getLogger("meshlib.xds")

#: the cluster a route that does not forward sends to (no runtime has this key)
NOT_FORWARDED = "xds:!not-forwarding"

#: Envoy's retry_on conditions that name statuses, and the statuses they name
_STATUS_CONDITIONS: Mapping[str, tuple[int, ...]] = {
    "5xx": tuple(range(500, 600)),
    "gateway-error": (502, 503, 504),
    "retriable-4xx": (409,),
    "envoy-ratelimited": (429,),
}

#: how often the source looks at the stream's state while no configuration arrives
_STATUS_INTERVAL = 1.0


def cluster_key(name: str) -> str:
    """The mesh's key for the xDS cluster `name` (its runtime, snapshot and errors)."""
    return f"xds:{name}"


class EdsDiscovery(Discovery):
    """One xDS cluster's endpoints as of one configuration: known without I/O.

    The control-plane follower hands each new set to the cluster's runtime
    itself, so this discovery is never run in the background.
    """

    def __init__(self, url: str, endpoints: tuple[Endpoint, ...]) -> None:
        super().__init__(url)
        self.endpoints = endpoints

    def initial(self) -> tuple[Endpoint, ...]:
        """The cluster's usable endpoints."""
        return self.endpoints

    async def updates(self) -> AsyncIterator[Update]:
        """Yield the set once, then wait to be cancelled."""
        yield self.endpoints
        await asyncio.Event().wait()


class _EnvoyHeader(ValueMatcher):
    """A header condition meshlib's own matcher cannot state (a range, an inverted
    match, a missing header matched as empty): Envoy's semantics, kept whole."""

    __slots__ = ("spec",)
    spec: HeaderMatch

    def __init__(self, spec: HeaderMatch) -> None:
        kind = "range" if spec.range is not None else (spec.match.kind if spec.match else "")
        value = f"{spec.range[0]}..{spec.range[1]}" if spec.range is not None else (
            spec.match.value if spec.match else "")
        super().__init__("exact", f"{'not ' if spec.invert else ''}{kind}:{value}")
        object.__setattr__(self, "spec", spec)

    def matches(self, actual: str | None) -> bool:
        """Whether a request whose header value is `actual` (`None`: absent) matches."""
        return self.spec.matches(actual)


def _header(spec: HeaderMatch) -> ValueMatcher:
    if spec.present is not None:
        return ValueMatcher("present", invert=spec.present == spec.invert)
    if spec.match is not None and not spec.invert and not spec.missing_as_empty:
        return ValueMatcher(spec.match.kind, spec.match.value, ignore_case=spec.match.ignore_case)
    return _EnvoyHeader(spec)


def _query(spec: QueryMatch) -> ValueMatcher:
    if spec.match is None:
        return ValueMatcher("present")
    return ValueMatcher(spec.match.kind, spec.match.value, ignore_case=spec.match.ignore_case)


def _path(route: RouteSpec) -> PathMatcher | None:
    path = route.path
    if path.kind == "prefix":
        if not path.value:
            return None
        return PathMatcher("prefix", path.value, case_sensitive=path.case_sensitive)
    if path.kind == "exact":
        return PathMatcher("exact", path.value, case_sensitive=path.case_sensitive)
    if path.kind == "regex":
        return PathMatcher("regex", path.value)
    return PathMatcher("segment_prefix", path.value, case_sensitive=path.case_sensitive)


def _seconds(value: float) -> float:
    return min(value, MAX_SECONDS)


def _retry_fields(retry: RetrySpec) -> dict[str, Any]:
    codes: set[int] = set()
    for condition in retry.retry_on:
        codes.update(_STATUS_CONDITIONS.get(condition, ()))
        if condition == "retriable-status-codes":
            codes.update(c for c in retry.status_codes if 100 <= c <= 599)
    fields: dict[str, Any] = {"retries": min(retry.num_retries, MAX_RETRIES),
                              "retry_on": tuple(sorted(codes))}
    if retry.per_try_timeout is not None:
        fields["attempt_timeout"] = _seconds(retry.per_try_timeout)
    if retry.backoff_base is not None or retry.backoff_max is not None:
        base = retry.backoff_base if retry.backoff_base is not None else 0.025
        fields["backoff"] = Backoff(base=_seconds(base), max=_seconds(
            retry.backoff_max if retry.backoff_max is not None else 10 * base))
    return fields


def _rule(index: int, route: RouteSpec, where: str) -> RouteRule:
    method: str | None = None
    headers: list[tuple[str, ValueMatcher]] = []
    for spec in route.headers:
        if spec.name == ":method" and spec.match is not None and spec.match.kind == "exact" \
                and not spec.invert and not spec.match.ignore_case:
            method = spec.match.value.upper()
            continue
        if spec.name.startswith(":"):
            raise ConfigError(f"{where}: a header matcher on the pseudo-header {spec.name!r} "
                              "is not supported (only an exact :method is)")
        headers.append((spec.name, _header(spec)))
    fields: dict[str, Any] = {}
    if route.timeout is not None:
        fields["timeout"] = _seconds(route.timeout)
    if route.retry is not None:
        fields.update(_retry_fields(route.retry))
    if route.kind == "route" and route.clusters:
        backends = tuple(Backend(cluster_key(name), weight) for name, weight in route.clusters)
    else:
        backends = (Backend(NOT_FORWARDED),)
    try:
        return RouteRule(
            key=route.name or index, backends=backends, path=_path(route), method=method,
            headers=tuple(headers), query=tuple((q.name, _query(q)) for q in route.query),
            policy=Policy(**fields) if fields else None)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _endpoints(specs: tuple[EndpointSpec, ...]) -> tuple[Endpoint, ...]:
    """The usable endpoints; a locality's weight is shared out among its endpoints in
    proportion to theirs (gRPC's weighted_target), else each endpoint's weight counts."""
    usable = usable_endpoints(specs)
    totals: dict[tuple[int, str | None, str | None, str | None], int] = {}
    for spec in usable:
        locality = (spec.priority, spec.region, spec.zone, spec.sub_zone)
        totals[locality] = totals.get(locality, 0) + spec.weight
    endpoints: dict[str, Endpoint] = {}
    for spec in usable:
        weight = float(spec.weight)
        if spec.locality_weight is not None:
            total = totals[(spec.priority, spec.region, spec.zone, spec.sub_zone)]
            weight = spec.locality_weight * spec.weight / total
        endpoint = Endpoint(spec.host, spec.port, weight, spec.zone, spec.priority)
        endpoints.setdefault(endpoint.address, endpoint)
    return tuple(endpoints.values())


def cluster_policy(cluster: ClusterSpec) -> Policy:
    """The settings a Cluster gives: its balancer, and its outlier detection as breaker
    fields (consecutive 5xx, base and max ejection time, max ejection percent)."""
    fields: dict[str, Any] = {"balancer": cluster.lb_policy}
    outlier = cluster.outlier
    if outlier is not None:
        failures = outlier.consecutive_5xx if outlier.enforcing_consecutive_5xx > 0 \
            else 1_000_000
        reset = _seconds(outlier.base_ejection_time) or 30.0
        longest = _seconds(outlier.max_ejection_time)
        fields["breaker"] = Breaker(
            failures=max(1, min(failures, 1_000_000)), reset_timeout=reset,
            max_ejection_percent=float(outlier.max_ejection_percent),
            max_reset_timeout=longest if longest > reset else None)
    return Policy(**fields)


@dataclass(frozen=True, slots=True)
class XdsClusterSource(ClusterSource):
    """A ClusterSource with the cluster's in-flight cap (`circuit_breakers.max_requests`)."""

    max_requests: int | None = field(default=None)


def route_update(config: XdsConfig, url: str, target: str) -> RouteUpdate:
    """The `RouteUpdate` of `config` for the virtual host of `target`.

    Raises `ConfigError` naming the route for what meshlib cannot carry out.
    """
    vhost = config.virtual_host(target)
    rules: list[RouteRule] = []
    named: set[str] = set()
    if vhost is not None:
        for index, route in enumerate(vhost.routes):
            where = f"xds route {route.name or index!r} of virtual host {vhost.name!r}"
            rule = _rule(index, route, where)
            rules.append(rule)
            named.update(name for name, _ in route.clusters)
    clusters: dict[str, ClusterSource] = {}
    for name in sorted(named):
        spec = config.clusters.get(name)
        if spec is None:  # a complete configuration holds every cluster a route names
            continue
        assignment = config.endpoints.get(name)
        endpoints = _endpoints(assignment.endpoints) if assignment is not None else ()
        discovery = EdsDiscovery(f"{url}#cluster={name}", endpoints)
        clusters[cluster_key(name)] = XdsClusterSource(
            cluster_key(name), discovery, cluster_policy(spec), display_name=name,
            max_requests=spec.max_requests)
    status = {"listener": config.listener, "route_config": config.route_config_name,
              "virtual_host": vhost.name if vhost is not None else None,
              "versions": dict(config.versions)}
    return RouteUpdate(tuple(rules), clusters, status)


class XdsRouteSource:
    """The routes of `xds:///TARGET`: a RouteSource over an XdsClient.

    The bootstrap is read (and checked) when it is built: a bad URL or
    bootstrap, or grpcio missing, raises `ConfigError` then.
    """

    #: the key of its state in snapshot()
    kind = "xds"

    def __init__(self, url: str, environ: Mapping[str, str] | None = None) -> None:
        self.url = url
        authority, self.target = parse_xds_url(url)
        self._client_class = load_client()
        from ._xds.bootstrap import listener_resource_name

        self._bootstrap = load_bootstrap(environ)
        self.listener = listener_resource_name(self._bootstrap, self.target, authority)
        #: the running client (``None`` while stopped), for status()
        self.client: Any = None

    def status(self) -> dict[str, Any]:
        """The control plane's state (XdsClient.status()), or a stub before the start."""
        client = self.client
        if client is None:
            return {"listener": self.listener, "connected": False, "ready": False}
        status: dict[str, Any] = client.status()
        return status

    async def updates(self) -> AsyncIterator[RouteUpdate | DiscoveryFailure]:
        """Yield a RouteUpdate for each new configuration, a failure when the stream to
        the control plane fails or a configuration cannot be carried out."""
        client = self._client_class(self._bootstrap, self.listener)
        queue: asyncio.Queue[XdsConfig] = asyncio.Queue()
        remove = client.on_update(queue.put_nowait)  # called on this loop (run()'s)
        self.client = client
        task = asyncio.create_task(client.run(), name=f"meshlib-xds-{self.listener}")
        reported: str | None = None
        try:
            while True:
                try:
                    config = await asyncio.wait_for(queue.get(), _STATUS_INTERVAL)
                except asyncio.TimeoutError:
                    state = client.status()
                    error = state["last_error"]
                    if error is not None and error != reported and not state["connected"]:
                        reported = error
                        yield DiscoveryFailure(f"xds control plane "
                                               f"{client.server.server_uri}: {error}")
                    continue
                while not queue.empty():  # only the newest counts
                    config = queue.get_nowait()
                reported = None
                try:
                    update = route_update(config, self.url, self.target)
                except ConfigError as exc:
                    yield DiscoveryFailure(str(exc))
                    continue
                yield update
        finally:
            remove()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self.client = None
