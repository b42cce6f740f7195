"""Hosts whose routes and clusters come from a control plane (`xds:///`), followed
in the background.

A `ControlPlane` is what the runners drive (like a service's discovery):
its discovery yields each `RouteUpdate` of its
`RouteSource`, and `ControlPlane.apply()`
installs it into the mesh in an order no request can see half of:

1. the clusters the update names get their runtimes (a running cluster whose
   key, discovery URL and policy are unchanged is kept, with its endpoints,
   breakers and statistics, and takes its new endpoints);
2. the mesh's runtimes are swapped, then the host's rules, in one assignment each;
3. clusters no longer named are retired: removed from the mesh, their idle
   endpoints' pools closed, their busy ones drained.

Before the first configuration the host has a *gate* runtime with no
endpoints: a request waits on its readiness (bounded by its deadline) and is
routed again once the configuration is in. A failure (the stream down, a
configuration refused) keeps the last good configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._cap import RequestCap
from ._discovery import Discovery, DiscoveryFailure, DiscoveryOptions, Update
from ._discovery._runner import follow
from ._endpoint import EndpointState
from ._policy import Policy, layered
from ._route_source import RouteSource, RouteUpdate
from ._routing import RouteRule
from ._service import Service, ServiceRuntime

if TYPE_CHECKING:
    from ._mesh import Mesh

__all__ = ["ControlPlane", "RouteSourceDiscovery", "is_control_plane_url", "route_source",
           "service_routes"]

logger = logging.getLogger("meshlib.routes")

#: discovery URL schemes whose services are control planes (routes and clusters)
CONTROL_PLANE_SCHEMES = frozenset({"xds"})


def is_control_plane_url(url: object) -> bool:
    """Whether `url` names a control plane (`xds://...`) rather than endpoints."""
    return isinstance(url, str) and url.partition("://")[0].lower() in CONTROL_PLANE_SCHEMES


def check_url(url: str) -> None:
    """`ConfigError` for a malformed control-plane URL (no bootstrap needed)."""
    from ._xds.bootstrap import parse_xds_url

    parse_xds_url(url)


def route_source(url: str, environ: Mapping[str, str] | None) -> RouteSource:
    """The RouteSource of a control-plane URL (`ConfigError` when it cannot be built:
    a bad URL or bootstrap, or the `xds` extra missing)."""
    check_url(url)
    from ._xds_source import XdsRouteSource

    return XdsRouteSource(url, environ)


def service_routes(url: str, options: DiscoveryOptions) -> RouteSource | None:
    """The routes that come with a service's own discovery, if its kind has them: the
    Gateway API HTTPRoutes attached to a `k8s://` Service."""
    if url.partition("://")[0].lower() != "k8s":
        return None
    from ._k8s_routes import HttpRouteSource

    return HttpRouteSource(url, options)


class RouteSourceDiscovery(Discovery):
    """A RouteSource as the runners see a discovery: `()` when a new update is ready
    in `latest`, failures as they come."""

    def __init__(self, source: RouteSource, on_close: Callable[[], None]) -> None:
        super().__init__(source.url)
        self.source = source
        self._on_close = on_close
        #: the newest update not yet taken by the follower
        self.latest: RouteUpdate | None = None

    async def aclose(self) -> None:
        """The follower stopped: stop following the clusters too."""
        self._on_close()

    def initial(self) -> None:
        """Never known without I/O."""
        return None

    async def updates(self) -> AsyncIterator[Update]:
        """Yield `()` after each update (in `latest`), failures as they happen."""
        async for item in self.source.updates():
            if isinstance(item, DiscoveryFailure):
                yield item
            else:
                self.latest = item
                yield ()


class ControlPlane:
    """One host (an `xds:///` service) and the clusters its control plane names."""

    def __init__(self, mesh: Mesh, host: str, service: Service, source: RouteSource,
                 new_runtime: Callable[[str, Service, Discovery, Policy], ServiceRuntime],
                 ) -> None:
        self.name = host
        self.host = host.lower()
        self.service = service
        self.source = source
        self.discovery = RouteSourceDiscovery(source, self._stop_clusters)
        self._mesh = mesh
        self._new_runtime = new_runtime
        #: the policy under each cluster's own settings: the Service's over the client's
        self.policy = layered(service.policy, mesh.policy)
        #: stands for the host until the first configuration: requests wait on it
        self.gate = new_runtime(host, service, self.discovery, self.policy)
        #: the keys of the clusters this host's configuration holds now
        self.clusters: tuple[str, ...] = ()
        self.rules: tuple[RouteRule, ...] = ()
        self.status: Mapping[str, object] = {}
        #: whether a configuration was installed (the host is in the mesh's route table)
        self.installed = False
        self._failing: str | None = None
        #: what the runner gave: how to close retired endpoints' pools, and the clock
        self._retire: Callable[[list[EndpointState]], Awaitable[None] | None] | None = None
        self._clock: Callable[[], float] | None = None
        #: the background followers of clusters whose endpoints need I/O (by key)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def bind(self, retire: Callable[[list[EndpointState]], Awaitable[None] | None],
             clock: Callable[[], float]) -> None:
        """Take the runner's retire callback and clock (to follow clusters' discovery)."""
        self._retire, self._clock = retire, clock

    def _follow_cluster(self, key: str, runtime: ServiceRuntime) -> None:
        """Follow a cluster's discovery on this loop, unless it needs none or runs."""
        if runtime.discovery.initial() is not None or self._retire is None \
                or self._clock is None:
            return
        task = self._tasks.get(key)
        if task is not None and not task.done():
            return
        self._tasks[key] = asyncio.get_running_loop().create_task(
            follow(runtime, self._retire, self._clock), name=f"meshlib-discovery-{key}")

    def _unfollow_cluster(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    def _stop_clusters(self) -> None:
        for key in list(self._tasks):
            self._unfollow_cluster(key)

    def apply(self, update: Update, now: float) -> list[EndpointState]:
        """Install the newest update (or log why the last good configuration stays);
        return the endpoints whose pools to close."""
        if isinstance(update, DiscoveryFailure):
            if not self.gate.ready.is_set() and self.host not in self._mesh.runtimes:
                self.gate.apply(update, now)  # requests wait on it: their error names it
            elif update.reason != self._failing:
                logger.warning("control plane of %r (%s): %s; %s", self.name, self.source.url,
                               update.reason, "keeping the last good configuration"
                               if self.installed else "no routes from it yet")
            self._failing = update.reason
            return []
        latest, self.discovery.latest = self.discovery.latest, None
        if latest is None:
            return []
        retired = self._install(latest, now)
        if self._failing is not None and self.gate.ready.is_set():
            logger.info("control plane of %r (%s): good again", self.name, self.source.url)
        self._failing = None
        self.gate._mark_ready()  # waiting requests are routed now
        logger.info("control plane of %r: %d routes, clusters %s", self.name,
                    len(latest.rules), ", ".join(latest.clusters) or "(none)")
        return retired

    def _install(self, update: RouteUpdate, now: float) -> list[EndpointState]:
        mesh = self._mesh
        runtimes = dict(mesh.runtimes)
        retired: list[EndpointState] = []
        for key, source in update.clusters.items():
            policy = layered(source.policy, self.policy)
            current = runtimes.get(key) if key in self.clusters else None
            if current is not None and current.discovery.url == source.discovery_url \
                    and current.policy == policy and current.policy.given == policy.given:
                endpoints = source.discovery.initial()
                if endpoints is not None:
                    retired.extend(current.apply(endpoints, now))
                runtime = current
            else:
                if current is not None:
                    self._unfollow_cluster(key)
                    retired.extend(current.retire_all(now))
                runtime = self._new_runtime(
                    key, Service(source.discovery_url,
                                 tls_server_name=self.service.tls_server_name or self.name),
                    source.discovery, policy)
                runtimes[key] = runtime
            self._follow_cluster(key, runtime)  # again after a restart on a new loop
            limit = getattr(source, "max_requests", None)
            if limit is None:
                runtime.cap = None
            elif runtime.cap is None or runtime.cap.limit != limit:
                runtime.cap = RequestCap(limit)
        gone = [key for key in self.clusters if key not in update.clusters]
        mesh.runtimes = runtimes  # the new clusters first: the rules may name them now
        self.rules = update.rules
        self.status = update.status
        self.installed = True
        mesh.set_control_plane_rules(self.host, update.rules)
        if gone:
            remaining = dict(mesh.runtimes)
            for key in gone:
                self._unfollow_cluster(key)
                if key in remaining:
                    retired.extend(remaining.pop(key).retire_all(now))
            mesh.runtimes = remaining
        self.clusters = tuple(update.clusters)
        return retired

    def pending(self) -> bool:
        """Whether no configuration has come yet."""
        return not self.gate.ready.is_set()

    def snapshot(self, now: float, service: dict[str, Any] | None = None) -> dict[str, Any]:
        """JSON-ready: the host's readiness, its clusters and its control plane's state
        (added to `service`, the snapshot of the host's own service, when it has one)."""
        if service is None:
            out = self.gate.snapshot(now)
            out.pop("routes", None)
        else:
            out = service
        status = getattr(self.source, "status", None)
        out["clusters"] = list(self.clusters)
        out[getattr(self.source, "kind", "control_plane")] = (
            status() if callable(status) else dict(self.status))
        out["config"] = dict(self.status)
        return out
