"""The ADS subscription state machine (state of the world, by name), without I/O.

`AdsProtocol` decides what to send and what to believe; the driver
(`meshlib._xds.client`) only carries `Request` objects to the
stream and responses back, and tells it when a stream starts and ends. The
clock is injected, so that the does-not-exist timers can be tested without
waiting.

What it subscribes to follows the graph, by name, as gRPC's client does:
the listener; the RouteConfiguration its HttpConnectionManager names (unless
the routes are inline); the clusters its routes name (`cluster` and
`weighted_clusters`) together with those of the configuration in use (make
before break: a cluster stays subscribed until a configuration that no
longer needs it is in use); the ClusterLoadAssignment of each EDS cluster
(its `eds_service_name`, or its name).

The rules, per resource type:

- each type has its own version and nonce. An ACK is a request with the
  response's version and nonce; a NACK carries the last accepted version, the
  response's nonce and `error_detail` naming the resource and the reason. A
  request that changes the names of a type carries the type's current
  version and nonce (a re-request, not an ACK).
- a response is accepted or rejected whole: if any resource it holds that
  this client asked for is invalid (or any resource cannot be decoded), the
  response is NACKed and every resource of that type stays as it was.
  Resources nobody asked for are ignored.
- a response carrying the nonce of the response just handled is a duplicate
  and is ignored; a response of a type never asked for is ignored (as Envoy
  and gRPC do) and shows in `AdsProtocol.status()`.
- a name asked for and not delivered within `resource_timeout` (15 s, as
  gRPC) of the request is reported as not existing; timers run only while a
  stream is up, and start again on the next stream.
- a listener or cluster missing from a response of its type has been
  deleted (LDS and CDS responses list every resource asked for), unless the
  server has the `ignore_resource_deletion` feature; a missing route
  configuration or endpoint assignment is not a deletion.
- on a new stream every type asked for is requested again with the version
  held, so that a server may skip what did not change.

What consumers see is `AdsProtocol.config`: the last complete,
consistent `XdsConfig`. It changes only to
another complete graph: when the newest resources make one, that one; when
they do not (a route names a cluster not yet received, the listener was
deleted), the configuration in use keeps its routes and takes the newest
clusters and endpoints it already names, if they are all there. Every
failure (a NACK, a lost stream, a resource that does not exist) keeps what
was there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import messages
from .resources import (
    ClusterSpec,
    EndpointsSpec,
    ListenerSpec,
    ResourceError,
    RouteConfigSpec,
    VirtualHostSpec,
    XdsConfig,
    decode_cluster,
    decode_endpoints,
    decode_listener,
    decode_route_configuration,
)

__all__ = [
    "RESOURCE_TIMEOUT",
    "SHORT_NAMES",
    "TYPE_NAMES",
    "TYPE_ORDER",
    "AdsProtocol",
    "Nack",
    "Request",
]

logger = logging.getLogger("meshlib.xds")

#: seconds a requested resource may take to arrive before it is reported as not existing
RESOURCE_TIMEOUT = 15.0

#: the four resource types, in the order requests are sent
TYPE_ORDER = (messages.LISTENER, messages.ROUTE, messages.CLUSTER, messages.ENDPOINT)
#: short names used in status, versions and logs
SHORT_NAMES = {messages.LISTENER: "lds", messages.ROUTE: "rds", messages.CLUSTER: "cds",
               messages.ENDPOINT: "eds"}
#: the message name of each type, for error messages
TYPE_NAMES = {messages.LISTENER: "Listener", messages.ROUTE: "RouteConfiguration",
              messages.CLUSTER: "Cluster", messages.ENDPOINT: "ClusterLoadAssignment"}

#: google.rpc.Code INVALID_ARGUMENT, the code of every NACK's error_detail
INVALID_ARGUMENT = 3


@dataclass(frozen=True, slots=True)
class Request:
    """A DiscoveryRequest to send: `kind` says why (`subscribe`: a first request or a
    change of names; `ack`; `nack`, with `error` for `error_detail.message`)."""

    type_url: str
    version_info: str
    response_nonce: str
    resource_names: tuple[str, ...]
    kind: Literal["subscribe", "ack", "nack"] = "subscribe"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Nack:
    """The last response this client NACKed: its type, the first resource named in the
    error (`None` when it could not be named), the error, and the clock's time."""

    type_url: str
    resource: str | None
    error: str
    at: float


_Spec = ListenerSpec | RouteConfigSpec | ClusterSpec | EndpointsSpec


def _name_of(type_url: str, message: Any) -> str:
    return str(message.cluster_name if type_url == messages.ENDPOINT else message.name)


_CLASSES = {messages.LISTENER: messages.Listener, messages.ROUTE: messages.RouteConfiguration,
            messages.CLUSTER: messages.Cluster, messages.ENDPOINT: messages.ClusterLoadAssignment}
_DECODERS: dict[str, Callable[[Any], _Spec]] = {
    messages.LISTENER: decode_listener, messages.ROUTE: decode_route_configuration,
    messages.CLUSTER: decode_cluster, messages.ENDPOINT: decode_endpoints}


@dataclass(slots=True)
class _TypeState:
    """What the client holds and asks for, for one resource type."""

    type_url: str
    version: str = ""
    nonce: str = ""
    wanted: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    #: name -> when its does-not-exist timer fires (only while a stream is up)
    timers: dict[str, float] = field(default_factory=dict)
    #: names the server said (or let time out) do not exist
    missing: set[str] = field(default_factory=set)


class AdsProtocol:
    """The subscription state machine of one ADS stream's worth of resources.

    `listener_name` is the Listener to follow; `clock` returns seconds
    (monotonic); `resource_timeout` is the does-not-exist timer;
    `ignore_resource_deletion` keeps listeners and clusters that a response
    stops listing (the server feature of that name).
    """

    def __init__(self, listener_name: str, *, clock: Callable[[], float],
                 resource_timeout: float = RESOURCE_TIMEOUT,
                 ignore_resource_deletion: bool = False) -> None:
        if not listener_name:
            raise ValueError("the listener name is empty")
        self.listener_name = listener_name
        self.clock = clock
        self.resource_timeout = resource_timeout
        self.ignore_resource_deletion = ignore_resource_deletion
        self._types = {t: _TypeState(t) for t in TYPE_ORDER}
        self._types[messages.LISTENER].wanted = (listener_name,)
        self.streaming = False
        #: the last complete, consistent configuration (``None`` until there is one)
        self.config: XdsConfig | None = None
        #: the last response NACKed
        self.last_nack: Nack | None = None
        #: the last response ignored (a type never asked for), as a reason
        self.last_ignored: str | None = None

    # -- the stream ---------------------------------------------------------------------

    def start_stream(self) -> list[Request]:
        """A stream opened: the requests to send first (every type asked for, with the
        versions held and no nonce)."""
        self.streaming = True
        now = self.clock()
        requests = []
        for state in self._types.values():
            state.nonce = ""
            state.timers.clear()
            if state.wanted:
                requests.append(Request(state.type_url, state.version, "", state.wanted))
                self._arm(state, state.wanted, now)
        return requests

    def end_stream(self) -> None:
        """The stream ended: its nonces mean nothing any more, and timers stop."""
        self.streaming = False
        for state in self._types.values():
            state.nonce = ""
            state.timers.clear()

    def _arm(self, state: _TypeState, names: Iterable[str], now: float) -> None:
        for name in names:
            if name not in state.resources and name not in state.missing:
                state.timers.setdefault(name, now + self.resource_timeout)

    # -- timers -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `poll()` next has something to do (`None`: nothing pending)."""
        deadlines = [t for s in self._types.values() for t in s.timers.values()]
        return min(deadlines) if deadlines else None

    def poll(self) -> bool:
        """Fire due does-not-exist timers; whether `config` changed."""
        now = self.clock()
        fired = False
        for state in self._types.values():
            for name, deadline in list(state.timers.items()):
                if deadline <= now:
                    del state.timers[name]
                    state.missing.add(name)
                    fired = True
                    logger.warning("xds: %s %r does not exist (not received within %g s)",
                                   TYPE_NAMES[state.type_url], name, self.resource_timeout)
        return fired and self._rebuild()

    # -- responses ------------------------------------------------------------------------

    def receive(self, response: Any) -> tuple[list[Request], bool]:
        """Handle one DiscoveryResponse: the requests to send (ACK or NACK first, then any
        change of names), and whether `config` changed."""
        type_url = response.type_url
        state = self._types.get(type_url)
        if state is None:
            self.last_ignored = f"a response of type {type_url or '(none)'}, never asked for"
            logger.warning("xds: ignoring %s", self.last_ignored)
            return [], False
        if response.nonce and response.nonce == state.nonce:
            logger.debug("xds: ignoring a repeated %s response (nonce %s)",
                         SHORT_NAMES[type_url], response.nonce)
            return [], False
        state.nonce = response.nonce
        decoded, errors = self._decode(state, response)
        if errors:
            error = "; ".join(message for _, message in errors)
            self.last_nack = Nack(type_url, errors[0][0], error, self.clock())
            logger.warning("xds: NACK %s version %r: %s", SHORT_NAMES[type_url],
                           response.version_info, error)
            return [Request(type_url, state.version, state.nonce, state.wanted, "nack",
                            error)], False
        self._accept(state, response.version_info, decoded)
        requests = [Request(type_url, state.version, state.nonce, state.wanted, "ack")]
        changed = self._rebuild()
        requests.extend(self._resubscribe())
        # a resubscription can only drop resources or arm timers; the graph built
        # above already accounts for what is held
        return requests, changed

    def _decode(self, state: _TypeState, response: Any
                ) -> tuple[dict[str, _Spec], list[tuple[str | None, str]]]:
        type_url = state.type_url
        label = TYPE_NAMES[type_url]
        decoded: dict[str, _Spec] = {}
        errors: list[tuple[str | None, str]] = []
        wanted = set(state.wanted)
        for index, resource in enumerate(response.resources):
            where = f"resource #{index}"
            any_message, wrapped_name = resource, None
            if resource.type_url == messages.RESOURCE_WRAPPER:
                try:
                    wrapper = messages.Resource.FromString(resource.value)
                except Exception as exc:
                    errors.append((None, f"{where}: cannot decode the Resource wrapper: {exc}"))
                    continue
                any_message, wrapped_name = wrapper.resource, wrapper.name or None
            if any_message.type_url != type_url:
                errors.append((None, f"{where} is a {any_message.type_url or '(no type)'}, "
                                     f"in a response of type {type_url}"))
                continue
            message = _CLASSES[type_url]()
            try:
                message.ParseFromString(any_message.value)
            except Exception as exc:
                errors.append((wrapped_name, f"{where}: cannot decode the {label}: {exc}"))
                continue
            name = _name_of(type_url, message)
            if not name:
                errors.append((None, f"{where}: the {label} has no name"))
                continue
            if name in decoded or name in (n for n, _ in errors):
                errors.append((name, f"{label} {name!r} appears twice in the response"))
                continue
            if name not in wanted:
                continue
            try:
                decoded[name] = _DECODERS[type_url](message)
            except ResourceError as exc:
                errors.append((name, f"{label} {name!r}: {exc}"))
        return decoded, errors

    def _accept(self, state: _TypeState, version: str, decoded: Mapping[str, _Spec]) -> None:
        state.version = version
        for name, spec in decoded.items():
            if state.resources.get(name) != spec:
                logger.info("xds: %s %r updated (version %s)", TYPE_NAMES[state.type_url],
                            name, version)
            state.resources[name] = spec
            state.timers.pop(name, None)
            state.missing.discard(name)
        if state.type_url not in (messages.LISTENER, messages.CLUSTER):
            return
        for name in state.wanted:
            if name in decoded:
                continue
            if name in state.resources:
                if self.ignore_resource_deletion:
                    logger.warning("xds: the server no longer lists %s %r; keeping it "
                                   "(ignore_resource_deletion)", TYPE_NAMES[state.type_url],
                                   name)
                    continue
                logger.warning("xds: %s %r was deleted", TYPE_NAMES[state.type_url], name)
                del state.resources[name]
            state.timers.pop(name, None)
            state.missing.add(name)

    # -- subscriptions ----------------------------------------------------------------------

    def _candidate_routes(self) -> RouteConfigSpec | None:
        listener = self._types[messages.LISTENER].resources.get(self.listener_name)
        if listener is None:
            return None
        if listener.route_config is not None:
            route_config: RouteConfigSpec = listener.route_config
            return route_config
        found: RouteConfigSpec | None = self._types[messages.ROUTE].resources.get(
            listener.route_config_name)
        return found

    def _wanted(self) -> dict[str, tuple[str, ...]]:
        listener = self._types[messages.LISTENER].resources.get(self.listener_name)
        routes: tuple[str, ...] = ()
        if listener is not None and listener.route_config_name:
            routes = (listener.route_config_name,)
        clusters: dict[str, None] = {}
        candidate = self._candidate_routes()
        if candidate is not None:
            clusters.update(dict.fromkeys(candidate.cluster_names()))
        if self.config is not None:
            clusters.update(dict.fromkeys(self.config.clusters))
        held = self._types[messages.CLUSTER].resources
        endpoints: dict[str, None] = {}
        for name in clusters:
            spec = held.get(name) or (self.config.clusters.get(name) if self.config else None)
            if spec is not None and spec.eds_name is not None:
                endpoints[spec.eds_name] = None
        return {messages.LISTENER: (self.listener_name,), messages.ROUTE: routes,
                messages.CLUSTER: tuple(sorted(clusters)),
                messages.ENDPOINT: tuple(sorted(endpoints))}

    def _resubscribe(self) -> list[Request]:
        """Follow the graph: ask for new names, forget names no longer needed."""
        requests = []
        now = self.clock()
        # one pass per type in order; a type's names depend only on the types before it
        for type_url in TYPE_ORDER:
            wanted = self._wanted()[type_url]
            state = self._types[type_url]
            if wanted == state.wanted:
                continue
            dropped = set(state.wanted) - set(wanted)
            for name in dropped:
                state.resources.pop(name, None)
                state.timers.pop(name, None)
                state.missing.discard(name)
            state.wanted = wanted
            if self.streaming:
                requests.append(Request(type_url, state.version, state.nonce, wanted))
                self._arm(state, wanted, now)
        return requests

    # -- the configuration ------------------------------------------------------------------

    def _rebuild(self) -> bool:
        """Make `config` the newest complete graph; whether it changed."""
        new = self._build_candidate() or self._refresh_current()
        if new is None or new == self.config:
            return False
        self.config = new
        return True

    def _leaves(self, cluster_names: Iterable[str]
                ) -> tuple[dict[str, ClusterSpec], dict[str, EndpointsSpec]] | None:
        held_clusters = self._types[messages.CLUSTER].resources
        held_endpoints = self._types[messages.ENDPOINT].resources
        clusters: dict[str, ClusterSpec] = {}
        endpoints: dict[str, EndpointsSpec] = {}
        for name in cluster_names:
            cluster = held_clusters.get(name)
            if cluster is None:
                return None
            clusters[name] = cluster
            if cluster.load_assignment is not None:
                endpoints[name] = cluster.load_assignment
                continue
            assignment = held_endpoints.get(cluster.eds_name)
            if assignment is None:
                return None
            endpoints[name] = assignment
        return clusters, endpoints

    def _versions(self, lds: str, rds: str) -> dict[str, str]:
        return {"lds": lds, "rds": rds, "cds": self._types[messages.CLUSTER].version,
                "eds": self._types[messages.ENDPOINT].version}

    def _build_candidate(self) -> XdsConfig | None:
        listener = self._types[messages.LISTENER].resources.get(self.listener_name)
        routes = self._candidate_routes()
        if listener is None or routes is None:
            return None
        leaves = self._leaves(routes.cluster_names())
        if leaves is None:
            return None
        rds_version = "" if listener.route_config else self._types[messages.ROUTE].version
        virtual_hosts = routes.virtual_hosts
        if listener.max_stream_duration is not None:
            virtual_hosts = _with_default_timeout(virtual_hosts, listener.max_stream_duration)
        return XdsConfig(self.listener_name, routes.name, virtual_hosts, leaves[0], leaves[1],
                         self._versions(self._types[messages.LISTENER].version, rds_version))

    def _refresh_current(self) -> XdsConfig | None:
        current = self.config
        if current is None:
            return None
        leaves = self._leaves(current.clusters)
        if leaves is None:
            return None
        return XdsConfig(current.listener, current.route_config_name, current.virtual_hosts,
                         leaves[0], leaves[1],
                         self._versions(current.versions.get("lds", ""),
                                        current.versions.get("rds", "")))

    # -- introspection ----------------------------------------------------------------------

    def waiting_for(self) -> list[str]:
        """What the newest graph lacks, as phrases (empty when it is complete)."""
        def state_of(type_url: str, name: str) -> str:
            missing = name in self._types[type_url].missing
            return (f"{TYPE_NAMES[type_url]} {name!r} "
                    f"({'does not exist' if missing else 'not received yet'})")

        listener = self._types[messages.LISTENER].resources.get(self.listener_name)
        if listener is None:
            return [state_of(messages.LISTENER, self.listener_name)]
        routes = self._candidate_routes()
        if routes is None:
            return [state_of(messages.ROUTE, listener.route_config_name or "")]
        lacking = []
        clusters = self._types[messages.CLUSTER].resources
        for name in routes.cluster_names():
            cluster = clusters.get(name)
            if cluster is None:
                lacking.append(state_of(messages.CLUSTER, name))
            elif (cluster.eds_name is not None
                  and cluster.eds_name not in self._types[messages.ENDPOINT].resources):
                lacking.append(state_of(messages.ENDPOINT, cluster.eds_name))
        return lacking

    def status(self) -> dict[str, Any]:
        """Per type: `version`, `nonce`, `subscribed` names and `held` names;
        `does_not_exist` names per type; `last_nack` (or `None`); `waiting_for`."""
        types = {}
        missing = {}
        for type_url, state in self._types.items():
            short = SHORT_NAMES[type_url]
            types[short] = {"type_url": type_url, "version": state.version,
                            "nonce": state.nonce, "subscribed": list(state.wanted),
                            "held": sorted(state.resources)}
            if state.missing:
                missing[short] = sorted(state.missing)
        nack = None
        if self.last_nack is not None:
            nack = {"type": SHORT_NAMES[self.last_nack.type_url],
                    "resource": self.last_nack.resource, "error": self.last_nack.error,
                    "at": self.last_nack.at}
        return {"listener": self.listener_name, "types": types, "does_not_exist": missing,
                "last_nack": nack, "last_ignored": self.last_ignored,
                "waiting_for": self.waiting_for()}


def _with_default_timeout(virtual_hosts: tuple[VirtualHostSpec, ...],
                          default: float) -> tuple[VirtualHostSpec, ...]:
    """The virtual hosts with `default` as the timeout of routes that have none."""
    return tuple(
        replace(vhost, routes=tuple(route if route.timeout is not None or route.kind != "route"
                                    else replace(route, timeout=default)
                                    for route in vhost.routes))
        for vhost in virtual_hosts)
