"""A service as the user configures it (`Service`), and its live state (`ServiceRuntime`).

The runtime holds the endpoint set discovery last gave, the per-endpoint
statistics and breakers, the retry budget and recent latencies. It picks
endpoints and records outcomes; it does no I/O, so the sync and async
transports share it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._balancer import Balancer, make_balancer
from ._breaker import REFUSED, EndpointBreaker, breaker_config
from ._budget import BudgetLedger
from ._cap import RequestCap
from ._discovery import Discovery, EndpointSetTracker, Update
from ._ejection import EjectionLedger
from ._endpoint import Endpoint, EndpointState
from ._errors import CircuitOpenError, ConfigError, NoEndpointsError, TooSlow, redact_url
from ._latency import LatencyWindow
from ._policy import Policy, not_a_policy
from ._route_health import RouteHealthTable
from ._service_snapshot import service_snapshot
from ._window import Window

__all__ = ["Service", "ServiceRuntime"]

Transition = Callable[[str, str, str, str], None]  # service, endpoint, old, new


def static_hint(value: object) -> str:
    """`"; did you mean 'static://127.0.0.1:8001'?"` for a bare `host:port` list."""
    if not isinstance(value, str) or not value or "://" in value:
        return ""
    parts = [p.strip() for p in value.split(",")]
    if all(p.rpartition(":")[2].isdigit() and p.rpartition(":")[0] for p in parts):
        return f"; did you mean 'static://{','.join(parts)}'?"
    return ""


class Service:
    """A logical service: where its endpoints come from, and optionally its own policy.

    `discovery` is a discovery URL (`static://`, `dns+srv://`, `dns://`,
    `file://`, `etcd://`, `consul://`, `k8s://`), or `xds:///LISTENER`
    for a service whose routes and clusters an xDS control plane gives (its
    `policy` then sits under each cluster's own settings). `tls_server_name` is the name
    the server certificate is checked against for `https://SERVICE/...`
    (default: the service name).

    Added in version 0.1.
    """

    __slots__ = ("discovery", "policy", "tls_server_name")

    def __init__(self, discovery: str, *, policy: Policy | None = None,
                 tls_server_name: str | None = None) -> None:
        if not isinstance(discovery, str) or "://" not in discovery:
            raise ConfigError(f"Service discovery must be a discovery URL, got {discovery!r}"
                              f"{static_hint(discovery)}")
        if policy is not None and not isinstance(policy, Policy):
            raise not_a_policy("Service policy", policy)
        if tls_server_name is not None and (not isinstance(tls_server_name, str)
                                            or not tls_server_name):
            raise ConfigError(f"Service tls_server_name must be a name, got {tls_server_name!r}")
        self.discovery = discovery
        self.policy = policy
        self.tls_server_name = tls_server_name

    def __repr__(self) -> str:
        return (f"Service({self.discovery!r}, policy={self.policy!r}, "
                f"tls_server_name={self.tls_server_name!r})")



def _sanitize(endpoint: Endpoint) -> Endpoint:
    if endpoint.weight > 0:
        return endpoint
    return Endpoint(endpoint.host, endpoint.port, 0.01, endpoint.zone, endpoint.priority)


class ServiceRuntime:
    """Live state of one service inside one transport."""

    def __init__(self, name: str, service: Service, discovery: Discovery, policy: Policy, *,
                 zone: str | None = None, on_transition: Transition | None = None,
                 on_route_transition: Transition | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.discovery = discovery
        self.policy = policy
        self.zone = zone
        #: the transport was closed: no attempt starts, nothing that fails counts
        self.closed = False
        self.clock = clock
        self.sni = service.tls_server_name
        self.budget = BudgetLedger(policy.retry_budget)
        self.latencies = LatencyWindow()
        #: golden signals of the service's logical requests
        self.window = Window(clock())
        self.states: dict[str, EndpointState] = {}
        self._groups: tuple[tuple[EndpointState, ...], ...] = ()
        #: per priority group, its endpoints whose breaker is closed; rebuilt on discovery
        #: updates and breaker transitions, so a pick never filters a large set
        self._healthy: tuple[tuple[EndpointState, ...], ...] = ()
        self._balancers: dict[str, Balancer] = {}
        self._on_transition = on_transition
        self._on_route_transition = on_route_transition
        self._tracker = EndpointSetTracker(name, discovery.url)
        self._lock = threading.Lock()
        self._tracker_lock = threading.Lock()
        self.ready = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.draining: set[EndpointState] = set()
        #: which endpoints are out, and the ejection cap
        self.ejections = EjectionLedger(breaker_config(policy.breaker).max_ejection_percent,
                                        self._lock)
        #: endpoints whose breaker is not closed (the ledger's set; the pick reads it)
        self._unhealthy = self.ejections.out
        #: slow start: no endpoint ramps up after this time (the hot path's one check)
        self._ramp_end = -1.0
        self.rng = random.Random()
        #: the fail-fast state of each route of this service (configured or implicit)
        self.routes = RouteHealthTable(breaker_config(policy.breaker), self._route_transition)
        #: the cap on logical requests in flight (an xDS cluster's max_requests), if any
        self.cap: RequestCap | None = None
        initial = discovery.initial()
        if initial is not None:
            self.apply(initial, clock())

    # -- discovery side ---------------------------------------------------------------

    def apply(self, update: Update, now: float) -> list[EndpointState]:
        """Take a discovery answer; return retired endpoints that are idle (close their pools)."""
        with self._tracker_lock:  # answers (discovery) and due() (requests) race otherwise
            accepted = self._tracker.accept(update, now)
        retired: list[EndpointState] = []
        if accepted is not None:
            retired = self._replace(accepted, now)
        if self._tracker.current is not None:  # a failure is no answer: requests keep waiting
            self._mark_ready()
        return retired

    def retire_all(self, now: float) -> list[EndpointState]:
        """The service is gone (a control plane dropped its cluster): retire every endpoint
        at once; return the idle ones (busy ones drain as their responses end)."""
        with self._tracker_lock:
            self._tracker.current = ()
            self._tracker.empty_since = None
        return self._replace((), now)

    def _replace(self, endpoints: tuple[Endpoint, ...], now: float) -> list[EndpointState]:
        with self._lock:
            fresh: dict[str, EndpointState] = {}
            # slow start applies to endpoints that join a set already serving traffic
            ramp = self.policy.slow_start is not None and bool(self.states)
            for raw in endpoints:
                endpoint = _sanitize(raw)
                state = self.states.get(endpoint.address) or fresh.get(endpoint.address)
                if state is None:
                    state = EndpointState(endpoint)
                    state.breaker = self._new_breaker(state, now)
                    if ramp:
                        self._start_ramp(state, now)
                else:
                    state.endpoint = endpoint
                fresh[endpoint.address] = state
            gone = [s for a, s in self.states.items() if a not in fresh]
            self.states = fresh
            priorities = sorted({s.endpoint.priority for s in fresh.values()})
            self._groups = tuple(
                tuple(s for s in fresh.values() if s.endpoint.priority == p) for p in priorities
            )
            self._rebuild_healthy()
            idle: list[EndpointState] = []
            # endpoints that finished draining since the last update were closed by the
            # transport when their last response ended: stop tracking them
            self.draining = {s for s in self.draining if s.inflight > 0}
            for state in gone:
                state.retired = True
                self.ejections.forget(state.address)  # its ejection slot is free again
                self.routes.forget(state.address)
                if state.inflight == 0:
                    idle.append(state)
                else:
                    self.draining.add(state)
            return idle

    def _new_breaker(self, owner: EndpointState, now: float) -> EndpointBreaker:
        def transition(name: str, old: str, new: str) -> None:
            if self.states.get(name) is not owner:
                return  # a retired endpoint (perhaps re-added since, as a new state)
            with self._lock:
                self._rebuild_healthy()
            if new == "closed":
                self.ejections.forget(name)
                # it proved healthy: drop its failure penalty at once (else the 10 s
                # EWMA starves it for many seconds), and ramp it up if configured
                owner.forgive()
                if self.policy.slow_start is not None:
                    self._start_ramp(owner, self.clock())
            else:
                self.ejections.opened(name)
            if self._on_transition is not None:
                self._on_transition(self.name, name, old, new)

        return EndpointBreaker(breaker_config(self.policy.breaker), owner.address, transition,
                               now)

    def _rebuild_healthy(self) -> None:
        """Recompute the closed endpoints of each group (caller holds `_lock`); a group
        whose endpoints are all closed keeps its own tuple (same object: cheap to match)."""
        healthy = []
        for group in self._groups:
            closed = tuple(s for s in group if s.breaker.closed)
            healthy.append(group if len(closed) == len(group) else closed)
        self._healthy = tuple(healthy)

    def _start_ramp(self, state: EndpointState, now: float) -> None:
        slow = self.policy.slow_start
        assert slow is not None
        state.ramp_from = now
        self._ramp_end = max(self._ramp_end, now + slow.window)

    def _route_transition(self, route: str, old: str, new: str) -> None:
        if self._on_route_transition is not None:
            self._on_route_transition(self.name, route, old, new)

    def _mark_ready(self) -> None:
        if self.ready.is_set():
            return
        self.ready.set()
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that waiter's event loop is closed: nobody is waiting
                continue

    def check_due(self, now: float) -> list[EndpointState]:
        """Apply a pending empty answer whose grace has passed; return idle retired endpoints."""
        if self._tracker.empty_since is None:
            return []  # nothing pending: the common case costs one attribute read
        with self._tracker_lock:
            accepted = self._tracker.due(now)
        return self._replace(accepted, now) if accepted is not None else []

    def unready_message(self, waited: float) -> str:
        """Why a request found no endpoint after waiting `waited` s for discovery's first
        good answer: the last discovery failure, if there was one."""
        where = f"discovery for service {self.name!r} ({self._tracker.url})"
        reason = self._tracker.failing
        if reason is None:
            return f"{where} has not answered after {waited:.2f} s"
        return redact_url(f"{where} has given no good answer after {waited:.2f} s; "
                          f"last error: {reason}")

    def wait_ready(self, timeout: float) -> bool:
        """Block until discovery has given a first good answer (a set, possibly empty;
        not a failure), at most `timeout` seconds."""
        return self.ready.wait(max(timeout, 0.0))

    async def wait_ready_async(self, timeout: float) -> bool:
        """Wait (async) until discovery has answered once, at most `timeout` seconds."""
        if self.ready.is_set():
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiters.append((loop, future))
        if self.ready.is_set():
            return True
        try:
            await asyncio.wait_for(future, max(timeout, 0.0))
        except asyncio.TimeoutError:
            return self.ready.is_set()
        finally:
            if not future.done() or future.cancelled():
                # timed out or cancelled: forget this waiter, or a long registry outage
                # would pile up one future per request
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, future))
        return True

    def after_fork(self, now: float) -> None:
        """In a forked child: start from the endpoints known at the fork with fresh
        state (no pools, nothing in flight, new locks and breakers), since the parent's
        threads and connections did not come along."""
        current = tuple(state.endpoint for state in self.states.values())
        self._lock = threading.Lock()
        self._tracker_lock = threading.Lock()
        ready, self.ready = self.ready.is_set(), threading.Event()
        if ready:
            self.ready.set()
        self._waiters = []  # futures of the parent's event loops
        self.states, self.draining = {}, set()
        self.ejections = EjectionLedger(self.ejections.percent, self._lock)
        self._unhealthy = self.ejections.out
        self._groups, self._healthy = (), ()
        self._balancers = {}
        self.budget = BudgetLedger(self.policy.retry_budget)
        self.latencies = LatencyWindow()
        self.window = Window(now)
        self.routes = RouteHealthTable(breaker_config(self.policy.breaker),
                                       self._route_transition)
        if self.cap is not None:  # nothing of the parent's is in flight here
            self.cap = RequestCap(self.cap.limit)
        if current:
            self._replace(current, now)

    # -- request side -----------------------------------------------------------------

    def balancer(self, name: str) -> Balancer:
        """This service's balancer of that kind (one per kind, created on first use)."""
        balancer = self._balancers.get(name)
        if balancer is None:
            balancer = self._balancers.setdefault(name, make_balancer(name))
        return balancer

    def pick(self, balancer: Balancer, exclude: frozenset[str] | set[str], now: float,
             within: float | None = None) -> tuple[EndpointState, int]:
        """Choose and admit an endpoint: the lowest priority group with an available
        endpoint, preferring endpoints not in `exclude` and in the client's zone.

        With `within` (seconds left), endpoints whose latency estimate does not fit
        are left out (deadline-aware admission). Returns the endpoint and what its
        breaker granted (`ADMITTED` or `TRIAL`). Raises `NoEndpointsError` when
        discovery knows none, `CircuitOpenError` when every endpoint's breaker is
        open, and `TooSlow` when the only available endpoints cannot answer in time.
        """
        groups = self._groups
        if not groups:
            raise NoEndpointsError(f"no endpoints known for service {self.name!r}")
        too_slow = False
        for _ in range(4):  # a half-open trial may be taken by another caller meanwhile
            candidates = self._candidates(groups, exclude, now)
            if within is not None and candidates:
                fitting = [s for s in candidates if s.fits(within, now)]
                if not fitting:
                    too_slow = True
                    break
                candidates = fitting
            if not candidates:
                break
            if self._unhealthy:
                # a breaker due for its trial gets it now, whatever its (penalised) cost:
                # an ejected endpoint is probed after reset_timeout at any traffic level
                due = self._due_trial(candidates, exclude, now, within)
                if due is not None:
                    admission = due.breaker.admit(now)
                    if admission != REFUSED:
                        return due, admission
            state = balancer.pick(candidates, now)
            if now < self._ramp_end and state.ramp_from is not None and len(candidates) > 1:
                state = self._slow_start(balancer, candidates, state, now)
            admission = state.breaker.admit(now)
            if admission != REFUSED:
                return state, admission
        if too_slow:
            raise TooSlow(f"no endpoint of service {self.name!r} usually answers within "
                          f"{within:.3f} s")
        raise CircuitOpenError(
            f"every endpoint of service {self.name!r} has an open circuit breaker; "
            f"next trial in {self.next_trial(now):.1f} s; nothing was sent"
        )

    def next_trial(self, now: float) -> float:
        """Seconds until the first endpoint breaker of this service lets a trial through."""
        waits = [s.breaker.next_trial(now) for s in self.states.values()]
        return min(waits, default=0.0)

    def _due_trial(self, candidates: Sequence[EndpointState], exclude: frozenset[str] | set[str],
                   now: float, within: float | None) -> EndpointState | None:
        """An endpoint whose breaker is due for its trial, as good a choice as the
        candidates by priority and zone (scans the unhealthy set only: it is small)."""
        first = candidates[0].endpoint
        for address in tuple(self._unhealthy):
            state = self.states.get(address)
            if state is None or address in exclude:
                continue
            breaker = state.breaker
            if breaker.closed or not breaker.available(now):
                continue
            endpoint = state.endpoint
            if endpoint.priority > first.priority:
                continue
            if self.zone is not None and first.zone == self.zone and endpoint.zone != self.zone:
                continue
            if within is not None and not state.fits(within, now):
                continue
            return state
        return None

    def _slow_start(self, balancer: Balancer, candidates: Sequence[EndpointState],
                    state: EndpointState, now: float) -> EndpointState:
        """Slow start: keep a ramping endpoint's pick with probability equal to its
        ramp factor, else pick again among the others (its share scales by the factor)."""
        slow = self.policy.slow_start
        ramp_from = state.ramp_from
        if slow is None or ramp_from is None:
            return state
        elapsed = now - ramp_from
        if elapsed >= slow.window:
            state.ramp_from = None
            return state
        if self.rng.random() < slow.factor(elapsed):
            return state
        return balancer.pick([s for s in candidates if s is not state], now)

    def _candidates(self, groups: tuple[tuple[EndpointState, ...], ...],
                    exclude: frozenset[str] | set[str], now: float,
                    ) -> Sequence[EndpointState]:
        if not exclude and self.zone is None:
            if not self._unhealthy:
                return groups[0]  # the common case: every breaker closed, first attempt
            healthy = self._healthy
            if len(healthy) == len(groups) and healthy and healthy[0]:
                return healthy[0]  # some breakers open: the kept set of closed ones
        fallback: list[EndpointState] = []
        for group in groups:
            available = [s for s in group if s.breaker.available(now)]
            if not available:
                continue
            if exclude:
                fresh = [s for s in available if s.address not in exclude]
                if not fresh:
                    fallback = fallback or available
                    continue
                available = fresh
            return self._zoned(available)
        return self._zoned(fallback) if fallback else fallback

    def _zoned(self, candidates: list[EndpointState]) -> list[EndpointState]:
        zone = self.zone
        if zone is None:
            return candidates
        local = [s for s in candidates if s.endpoint.zone == zone]
        return local or candidates

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready state (see `meshlib._service_snapshot.service_snapshot()`)."""
        return service_snapshot(self, now)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
