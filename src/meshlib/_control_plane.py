"""Hosts whose routes and clusters come from a control plane (``xds:///``), followed
in the background.

A :class:`ControlPlane` is what the runners drive (like a service's discovery):
its discovery yields each :class:`~meshlib._route_source.RouteUpdate` of its
:class:`~meshlib._route_source.RouteSource`, and :meth:`ControlPlane.apply`
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

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._cap import RequestCap
from ._discovery import Discovery, DiscoveryFailure, Update
from ._endpoint import EndpointState
from ._policy import Policy, layered
from ._route_source import RouteSource, RouteUpdate
from ._routing import RouteRule
from ._service import Service, ServiceRuntime

if TYPE_CHECKING:
    from ._mesh import Mesh

__all__ = ["ControlPlane", "RouteSourceDiscovery", "is_control_plane_url", "route_source"]

logger = logging.getLogger("meshlib.routes")

#: discovery URL schemes whose services are control planes (routes and clusters)
CONTROL_PLANE_SCHEMES = frozenset({"xds"})


def is_control_plane_url(url: object) -> bool:
    """Whether ``url`` names a control plane (``xds://...``) rather than endpoints."""
    return isinstance(url, str) and url.partition("://")[0].lower() in CONTROL_PLANE_SCHEMES


def check_url(url: str) -> None:
    """``ConfigError`` for a malformed control-plane URL (no bootstrap needed)."""
    from ._xds.bootstrap import parse_xds_url

    parse_xds_url(url)


def route_source(url: str, environ: Mapping[str, str] | None) -> RouteSource:
    """The RouteSource of a control-plane URL (``ConfigError`` when it cannot be built:
    a bad URL or bootstrap, or the ``xds`` extra missing)."""
    check_url(url)
    from ._xds_source import XdsRouteSource

    return XdsRouteSource(url, environ)


class RouteSourceDiscovery(Discovery):
    """A RouteSource as the runners see a discovery: ``()`` when a new update is ready
    in :attr:`latest`, failures as they come."""

    def __init__(self, source: RouteSource) -> None:
        super().__init__(source.url)
        self.source = source
        #: the newest update not yet taken by the follower
        self.latest: RouteUpdate | None = None

    def initial(self) -> None:
        """Never known without I/O."""
        return None

    async def updates(self) -> AsyncIterator[Update]:
        """Yield ``()`` after each update (in :attr:`latest`), failures as they happen."""
        async for item in self.source.updates():
            if isinstance(item, DiscoveryFailure):
                yield item
            else:
                self.latest = item
                yield ()


class ControlPlane:
    """One host (an ``xds:///`` service) and the clusters its control plane names."""

    def __init__(self, mesh: Mesh, host: str, service: Service, source: RouteSource,
                 new_runtime: Callable[[str, Service, Discovery, Policy], ServiceRuntime],
                 ) -> None:
        self.name = host
        self.host = host.lower()
        self.service = service
        self.source = source
        self.discovery = RouteSourceDiscovery(source)
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

    def apply(self, update: Update, now: float) -> list[EndpointState]:
        """Install the newest update (or log why the last good configuration stays);
        return the endpoints whose pools to close."""
        if isinstance(update, DiscoveryFailure):
            if not self.gate.ready.is_set():
                self.gate.apply(update, now)  # a waiting request's error names it
            elif update.reason != self._failing:
                logger.warning("control plane of %r (%s): %s; keeping the last good "
                               "configuration", self.name, self.source.url, update.reason)
            self._failing = update.reason
            return []
        latest, self.discovery.latest = self.discovery.latest, None
        if latest is None:
            return []
        retired = self._install(latest, now)
        if self._failing is not None and self.gate.ready.is_set():
            logger.warning("control plane of %r (%s): good again", self.name, self.source.url)
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
                    retired.extend(current.retire_all(now))
                runtime = self._new_runtime(
                    key, Service(source.discovery_url,
                                 tls_server_name=self.service.tls_server_name or self.name),
                    source.discovery, policy)
                runtimes[key] = runtime
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
                if key in remaining:
                    retired.extend(remaining.pop(key).retire_all(now))
            mesh.runtimes = remaining
        self.clusters = tuple(update.clusters)
        return retired

    def pending(self) -> bool:
        """Whether no configuration has come yet."""
        return not self.gate.ready.is_set()

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready: the host's readiness, its clusters and its control plane's state."""
        out = self.gate.snapshot(now)
        out.pop("routes", None)
        status = getattr(self.source, "status", None)
        out["clusters"] = list(self.clusters)
        out["xds"] = status() if callable(status) else dict(self.status)
        out["config"] = dict(self.status)
        return out
