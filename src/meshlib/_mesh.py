"""What the sync and async transports share: configuration, services, routing.

Layers, top to bottom, written down once (Finagle's stack, for a client):

1. virtual host and route: a request whose host has routes takes the first
   route that matches (a `Split` draws its service once); a host without
   routes that is a service name goes to that service; any other host passes
   through to plain httpx untouched;
2. policy, field by field: scoped `meshlib.policy` > the route's policy >
   the Service's policy > the client's policy > `MESHLIB_*` > defaults;
3. deadline: fixed on entry, spans every attempt and backoff;
4. retries and hedges (above the balancer, so each picks a fresh endpoint),
   gated by idempotency and the retry budget;
5. balancer: picks among available endpoints of the best priority group;
6. per endpoint: breaker admission, timeouts clamped to the deadline,
   latency and outcome recorded, a connection pool pinned to the address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from . import _testmode
from ._config import SERVICE_NAME, EnvConfig, read_env, warn_if_host_like, warn_no_services
from ._control_plane import (
    ControlPlane,
    check_url,
    is_control_plane_url,
    route_source,
    service_routes,
)
from ._discovery import Discovery, DiscoveryOptions, discovery_from_url
from ._errors import ConfigError, NoRouteError, redact_url
from ._policy import Policy, layered, not_a_policy
from ._route_health import RouteHealth
from ._routes import Route, RoutesArg, compile_routes
from ._routes_file import RoutesFile, RoutesFollower, load_routes_file
from ._routing import RouteRule, RouteTable, VirtualHost, implicit_route_key, uniform
from ._scope import current_overrides
from ._service import Service, ServiceRuntime, static_hint
from ._telemetry import register_mesh, telemetry

__all__ = ["Mesh", "ServicesArg", "Target"]

ServicesArg = Mapping[str, "str | Service"] | None


class Target:
    """Where one logical request goes: its cluster, its route, and the policy of both.

    Chosen once per logical request (`Mesh.select()`); every retry and hedge
    of the request stays in `runtime`. `route` is the configured route's key
    (its name or index) or `None`; `health` is the route's fail-fast state in
    that cluster; `policy` the route's and service's layers, before the scope's.
    """

    __slots__ = ("health", "pending", "policy", "route", "runtime")

    def __init__(self, runtime: ServiceRuntime, health: RouteHealth, route: str | int | None,
                 policy: Policy, *, pending: bool = False) -> None:
        self.runtime = runtime
        self.health = health
        self.route = route
        self.policy = policy
        #: a control plane's host before its first configuration: wait on ``runtime``'s
        #: readiness, then select again
        self.pending = pending


class Mesh:
    """Services, their runtimes and the policy layering of one transport."""

    def __init__(self, services: ServicesArg, policy: Policy | None, *,
                 routes: RoutesArg = None, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        env: EnvConfig = read_env(environ)  # always validated, even when overridden
        if policy is not None and not isinstance(policy, Policy):
            raise not_a_policy("policy", policy)
        self.env = env
        self.clock = clock
        #: the client's layer over the environment's (each field from the first that gave it)
        self.policy = layered(policy, env.policy)
        raw = env.services if services is None else services
        if not isinstance(raw, Mapping):
            raise ConfigError(f"services must map names to discovery URLs, got {raw!r}")
        options = DiscoveryOptions.from_env(env)
        for env_name, env_url in env.services.items():  # validated even when overridden
            try:
                if is_control_plane_url(env_url):
                    check_url(env_url)
                    continue
                discovery_from_url(env_url, options)
            except ConfigError as exc:
                raise ConfigError(f"MESHLIB_SERVICES: service {env_name!r}: {exc}") from None
        #: one runtime per service and per control-plane cluster; replaced whole, never
        #: changed in place (a control plane's follower swaps in new ones)
        self.runtimes: dict[str, ServiceRuntime] = {}
        #: hosts whose routes and clusters a control plane gives (``xds:///``)
        self.planes: dict[str, ControlPlane] = {}
        for name, spec in raw.items():
            if not isinstance(name, str) or not SERVICE_NAME.match(name):
                raise ConfigError(
                    f"service name {name!r} is not a host name (letters, digits, '.', '-', '_')")
            if name.lower() in self.runtimes or name.lower() in self.planes:
                raise ConfigError(f"service {name!r} is configured twice (names ignore case)")
            try:
                service = Service(spec) if isinstance(spec, str) else spec
            except ConfigError as exc:
                raise ConfigError(f"service {name!r}: {exc}") from None
            if not isinstance(service, Service):
                raise ConfigError(
                    f"service {name!r} must be a discovery URL or meshlib.Service, got {spec!r}"
                    f"{static_hint(spec)}")
            if is_control_plane_url(service.discovery):
                self.planes[name.lower()] = ControlPlane(
                    self, name, service, route_source(service.discovery, environ),
                    self._new_runtime)
                continue
            discovery = discovery_from_url(service.discovery, options)
            warn_if_host_like(name)
            self.runtimes[name.lower()] = self._new_runtime(
                name, service, discovery, layered(service.policy, self.policy))
            extra = service_routes(service.discovery, options)
            if extra is not None:  # HTTPRoutes attached to a k8s Service
                self.planes[name.lower()] = ControlPlane(self, name, service, extra,
                                                         self._new_runtime)
        #: the routes of code and the routes file; ``table`` adds the control planes' hosts
        self._own_table = RouteTable()
        self.table = RouteTable()
        #: background work besides discovery (the routes file)
        self._followers: list[RoutesFollower] = []
        if routes is None and env.routes_file is not None:
            signature, routes = load_routes_file(env.routes_file)
            source = f"MESHLIB_ROUTES={env.routes_file!r}"
            self._set_own_table(self._compile(routes, source))
            self._followers.append(RoutesFollower(
                RoutesFile(env.routes_file, signature),
                lambda changed: self.set_routes(changed, source=source)))
        elif routes is not None:
            self._set_own_table(self._compile(routes, "routes"))
        if not self.runtimes and not self.planes:
            warn_no_services()
        self._scoped: dict[int, tuple[Mapping[str, Any], Policy, Policy]] = {}
        #: the route layer over a cluster's policy, per (rule, cluster)
        self._route_policies: dict[tuple[int, str], tuple[RouteRule, Policy, Policy]] = {}
        #: the client's own httpx timeout (set by MeshClient): what it grants an attempt
        self.client_timeouts: dict[str, float | None] | None = None
        register_mesh(self)  # for the meshlib.endpoints gauge (weakly held)

    def _new_runtime(self, name: str, service: Service, discovery: Discovery,
                     policy: Policy) -> ServiceRuntime:
        return ServiceRuntime(
            name, service, discovery, policy, zone=self.env.zone,
            on_transition=telemetry.breaker_transition,
            on_route_transition=telemetry.route_transition, clock=self.clock)

    def _set_own_table(self, table: RouteTable) -> None:
        self._own_table = table
        self._merge_tables()

    def _merge_tables(self) -> None:
        hosts = dict(self._own_table.hosts)
        for host, plane in self.planes.items():
            if plane.installed and host not in hosts:  # routes given in code win
                hosts[host] = VirtualHost(host, plane.rules)
        self.table = RouteTable(hosts)

    def set_control_plane_rules(self, host: str, rules: Sequence[RouteRule]) -> None:
        """Replace a control plane host's rules at once (its clusters are in `runtimes`);
        routes given in code or the routes file for the same host win."""
        if host in self._own_table.hosts:
            return
        hosts = dict(self.table.hosts)
        hosts[host] = VirtualHost(host, tuple(rules))
        self.table = RouteTable(hosts)

    def _compile(self, routes: Mapping[str, Sequence[Route]], source: str) -> RouteTable:
        return RouteTable({host: VirtualHost(host, rules) for host, rules in
                           compile_routes(routes, set(self.runtimes), source=source).items()})

    def set_routes(self, routes: Mapping[str, Sequence[Route]], *, source: str = "routes") -> None:
        """Replace the whole route table at once (`ConfigError` keeps the old one)."""
        self._set_own_table(self._compile(routes, source))

    @property
    def hosts(self) -> set[str]:
        """Every host the mesh handles: service names and hosts with routes."""
        return {*self.runtimes, *self.table.hosts, *self.planes}

    def handles(self, host: str) -> bool:
        """Whether requests to `host` go through the mesh."""
        return (host in self.runtimes or self.table.get(host) is not None
                or host in self.planes)

    def select(self, request: httpx.Request) -> Target | None:
        """Where `request` goes (`None`: pass it through); `NoRouteError` when its
        host has routes, none matches, and no service has the host's name."""
        host = request.url.host
        vhost = self.table.get(host) if self.table else None
        if vhost is not None:
            rule = vhost.select(request)
            if rule is not None:
                key = rule.draw(uniform()) if len(rule.backends) > 1 else rule.backends[0].cluster
                cluster = self.runtimes.get(key)
                if cluster is None:  # a control plane's route that does not forward
                    raise NoRouteError(
                        f"route {rule.key!r} of host {host!r} matches {request.method} "
                        f"{redact_url(request.url.raw_path.decode('ascii', 'replace'))} but "
                        "forwards to no cluster meshlib can reach (a redirect, a direct "
                        "response or rewrite, which meshlib does not carry out, or no usable "
                        "backend); nothing was sent", request=request)
                return Target(cluster, cluster.routes.configured(rule.key, host, self.clock()),
                              rule.key, self._route_policy(rule, cluster))
        runtime = self.runtimes.get(host)
        if runtime is None:
            if vhost is None:
                plane = self.planes.get(host) if self.planes else None
                if plane is not None:  # no configuration yet: wait for it, then route
                    gate = plane.gate
                    return Target(gate, gate.routes.implicit(implicit_route_key(request),
                                                             self.clock()),
                                  None, gate.policy, pending=True)
                return None
            raise NoRouteError(
                f"no route of host {host!r} matches {request.method} "
                f"{redact_url(request.url.raw_path.decode('ascii', 'replace'))} and no service "
                f"is named {host!r} (routes: {len(vhost.rules)}); nothing was sent",
                request=request)
        return Target(runtime, runtime.routes.implicit(implicit_route_key(request), self.clock()),
                      None, runtime.policy)

    def _route_policy(self, rule: RouteRule, runtime: ServiceRuntime) -> Policy:
        if rule.policy is None:
            return runtime.policy
        key = (id(rule), runtime.name)
        cached = self._route_policies.get(key)
        if cached is not None and cached[0] is rule and cached[1] is runtime.policy:
            return cached[2]
        policy = layered(rule.policy, runtime.policy)
        if len(self._route_policies) > 4096:
            self._route_policies.clear()
        self._route_policies[key] = (rule, runtime.policy, policy)
        return policy

    def policy_for(self, target: Target) -> Policy:
        """The effective policy of a request to `target` in the current scope."""
        return _testmode.capped(self._scoped_policy(target.policy))  # set_testing(attempts=N)

    def _scoped_policy(self, base: Policy) -> Policy:
        overrides = current_overrides()
        if not overrides:
            return base
        key = id(overrides)
        cached = self._scoped.get(key)
        if cached is not None and cached[0] is overrides and cached[1] is base:
            return cached[2]
        policy = base.replace(**overrides)
        if len(self._scoped) > 256:
            self._scoped.clear()
        self._scoped[key] = (overrides, base, policy)
        return policy

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service and route (docs/configuration.md,
        "Reading a snapshot")."""
        now = self.clock()
        services = {rt.name: rt.snapshot(now) for rt in self.runtimes.values()}
        for plane in self.planes.values():
            services[plane.name] = plane.snapshot(now, services.get(plane.name))
        return {
            "services": services,
            "routes": {host: vhost.snapshot() for host, vhost in self.table.hosts.items()},
        }

    def after_fork(self) -> None:
        """In a forked child: every service starts over from the endpoints known at the
        fork (see `ServiceRuntime.after_fork`); the transport restarts discovery."""
        now = self.clock()
        for runtime in self.runtimes.values():
            runtime.after_fork(now)

    @property
    def dynamic(self) -> list[Any]:
        """What must run in the background: services' discovery, the control planes, the
        routes file."""
        return [*(rt for rt in self.runtimes.values() if rt.discovery.initial() is None),
                *self.planes.values(), *self._followers]


