# Generated from src/meshlib/_async/transport.py by scripts/unasync.py: do not edit.
"""The mesh transport: carries out a `Call`'s decisions, and does the I/O.

Every decision is made by `_call.Call`, `_attempts` and
`_service.ServiceRuntime`; only sending, sleeping and closing live here.
`_async/transport.py` is the source and `_sync/transport.py` is generated
from it by `scripts/unasync.py` (`make unasync`): edit the source only.
What truly differs between threads and tasks (sending hedges concurrently,
running discovery in the background, closing a pool from a callback) is in
each side's `runner.py`, behind the same names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import httpx

from .. import _testmode
from .._attempts import (
    STOP,
    Admitted,
    HedgeRace,
    Launch,
    Retries,
    aborted,
    admit_route,
    answered,
    closed_outcome,
    failed,
    finish,
    launch,
    pick,
    release_route,
    stamp,
    superseded,
    undiscovered,
    unsent,
)
from .._call import Call, Outcome
from .._endpoint import EndpointState
from .._fork import keep, let_go
from .._fork import register as register_fork
from .._mesh import Mesh, ServicesArg
from .._mocks import mocked
from .._policy import Policy
from .._pool import PoolSettings
from .._pools import choose_pool
from .._routes import RoutesArg
from .pool import EndpointPool
from .runner import Runner

__all__ = ["MeshTransport"]

Attempt = Callable[[Call], Outcome]


def discard(response: httpx.Response) -> None:
    """Close a response nobody will read (a superseded answer, a losing hedge).

    Its body is not read first: it may be large or slow, and reading it could
    outlast the deadline the next attempt needs. Closing an unread response
    gives up its connection; retries are rare enough for that to be cheap.
    """
    response.close()


class MeshTransport(httpx.BaseTransport):
    """An httpx transport that routes requests for mesh services to their endpoints.

    `services` maps service names to discovery URLs or `meshlib.Service`;
    `None` reads `MESHLIB_SERVICES`. `routes` maps host names to lists of
    `meshlib.Route` (`None` reads the `MESHLIB_ROUTES` file, if set).
    `transport_kwargs` are httpx transport options (`verify`, `cert`,
    `http2`, `limits`, ...) applied to every endpoint pool and to the
    pass-through transport; `passthrough=` supplies a transport of your own
    for hosts that are not services. `pool` chooses what carries the
    endpoints' connections in the async transport: `"httpcore"` (default) or
    `"aiohttp"` (HTTP/1.1 only, extra `httpx-mesh[aiohttp]`); `None` reads
    `MESHLIB_POOL`. The sync transport always uses httpcore.

    Each attempt ends at its time limit (`attempt_timeout`, or the deadline):
    meshlib's own sockets end their reads and writes then, in both twins. The
    async transport also cancels the send as a whole shortly after the limit,
    which ends an attempt that never touches a socket (a respx mock whose side
    effect sleeps, say); the sync transport cannot interrupt a thread, so such
    an attempt runs until it returns. On HTTP/2 a connection's reads and
    writes serve every request on it, so they keep the client's own timeouts:
    there the async transport's cancellation is what ends an attempt at its
    deadline, and the sync transport's attempts are bounded by those timeouts.

    Added in version 0.1.
    """

    def __init__(self, *, services: ServicesArg = None, policy: Policy | None = None,
                 routes: RoutesArg = None, environ: Mapping[str, str] | None = None,
                 pool: str | None = None, **transport_kwargs: Any) -> None:
        passthrough = transport_kwargs.pop("passthrough", None)
        self.mesh = Mesh(services, policy, routes=routes, environ=environ)
        self.clock = self.mesh.clock
        self.settings, self._passthrough_kwargs = PoolSettings.split(transport_kwargs)
        self._new_pool = choose_pool(EndpointPool, pool, self.mesh.env.pool, self.settings)
        self._passthrough: httpx.BaseTransport | None = passthrough
        self._own_passthrough = passthrough is None  # built here: the child builds its own
        self._lock = threading.Lock()  # never held across I/O
        self._closed = False
        self.sleep = _testmode.sleep
        self._runner = Runner(self)
        register_fork(self)

    # -- httpx transport API ------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through the mesh if its host is a service, else pass it through."""
        target = self.mesh.select(request)  # NoRouteError: nothing sent
        if target is None:
            return self._passthrough_transport().handle_request(request)
        self._runner.enter()
        now = self.clock()
        mesh = self.mesh
        call = Call(target, mesh.policy_for(target), request, now, mesh.client_timeouts,
                    multiplexed=self.settings.http2)
        runtime = call.runtime
        if runtime.closed:  # closed already: nothing is sent, no pool is built
            return finish(call, closed_outcome(call), now)
        if not runtime.ready.is_set():
            if mocked(request):  # a respx mock answers: discovery is not needed
                return self._send_to_mock(call, now)
            if not runtime.wait_ready(call.remaining(now)):
                raise undiscovered(call, self.clock())
        if target.pending:  # a control plane's host, configured since: route it now
            target = mesh.select(request) or target
            call = Call(target, mesh.policy_for(target), request, now, mesh.client_timeouts,
                        multiplexed=call.multiplexed)
            runtime = call.runtime
        admit_route(call, now)  # CircuitOpenError while the route fails everywhere
        try:
            runtime.budget.deposit(now)
            retired = runtime.check_due(now)
            if retired:  # a pending empty answer took effect (rare)
                self._retire(retired)
            attempt = self._hedged_attempt if call.can_hedge() else self._attempt
            outcome = attempt(call)
            if call.wants_retry(outcome):
                outcome = self._retry(call, outcome, attempt)
        except BaseException:
            release_route(call)
            raise
        return finish(call, outcome, self.clock())

    def close(self) -> None:
        """Stop discovery and close every pool (idempotent).

        Requests in flight end with an error (their connections are closed under
        them) and are never sent again: after this no attempt starts and no pool
        is built. Connections made on an event loop that has been closed since
        went with it: they are let go, not closed again.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for runtime in self.mesh.runtimes.values():
                runtime.closed = True
        gone = self._runner.loop_gone()
        self._runner.close()
        for runtime in self.mesh.runtimes.values():
            for state in [*runtime.states.values(), *runtime.draining]:
                if gone:
                    self._take_pool(state)
                else:
                    self._close_pool(state)
        if self._passthrough is not None:
            try:
                self._passthrough.close()
            except RuntimeError:
                if not gone:  # not a connection of a loop closed since
                    raise

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service: endpoints, EWMA, breakers, budget."""
        return self.mesh.snapshot()

    def _after_fork_in_child(self) -> None:
        """In a forked child, share nothing with the parent: its connections stay its own
        (their pools are forgotten, never closed, which would act on the parent's
        sockets), locks its threads may have held are new, each service starts over
        from the endpoints known at the fork, and discovery starts again."""
        self._lock = threading.Lock()
        inherited: list[Any] = [
            state.pool for runtime in self.mesh.runtimes.values()
            for state in [*runtime.states.values(), *runtime.draining]]
        if self._own_passthrough:
            inherited.append(self._passthrough)
            self._passthrough = None
        keep(*inherited)
        let_go(inherited)
        self.mesh.after_fork()
        self._runner.after_fork()

    # -- the request path -------------------------------------------------------------

    def _retry(self, call: Call, outcome: Outcome, attempt: Attempt) -> Outcome:
        """Retry while the call's verdict says so, sleeping the backoff it chose.

        Interrupted anywhere (in the backoff, or while deciding), the responses
        the retry held are closed and its budget token is given back.
        """
        retries = Retries(call)
        try:
            sleep = retries.after(outcome, self.clock())
            while sleep is not None:
                self.sleep(sleep)
                outcome = attempt(call)
                sleep = retries.after(outcome, self.clock())
        except BaseException:
            stale = superseded(call)
            if stale is not None:
                discard(stale)
            if outcome.response is not None:
                discard(outcome.response)
            call.refund()
            raise
        return outcome

    def _pick(self, call: Call) -> Admitted | Outcome:
        """The endpoint for the next attempt (or the outcome that ends the call instead);
        once it is sure to be sent, the response it supersedes is closed."""
        chosen = pick(call, self.clock())
        if isinstance(chosen, Admitted):
            stale = superseded(call)
            if stale is not None:
                try:
                    discard(stale)
                except BaseException:  # interrupted: give back a half-open trial slot
                    chosen.state.breaker.release(chosen.admission)
                    raise
        return chosen

    def _attempt(self, call: Call) -> Outcome:
        """One attempt: pick, admit, send, record. Never raises for transport errors."""
        # nothing to supersede (a first attempt): no coroutine for the pick
        chosen = pick(call, self.clock()) if call.previous is None else self._pick(call)
        if isinstance(chosen, Outcome):
            return chosen
        attempt = launch(call, chosen, self.clock(), hedge=False, concurrent=False)
        return self._transmit(call, chosen.state, attempt)

    def _transmit(self, call: Call, state: EndpointState, attempt: Launch) -> Outcome:
        """Send one attempt and record what came of it (from the caller, a thread or a task)."""
        if not attempt.extensions:  # sent concurrently: stamp it as it really leaves
            stamp(call, attempt, self.clock())
        pool = self._pool_for(state)
        if pool is None:  # the client was closed meanwhile
            outcome = unsent(call, state, attempt)
            self._release(state)
            return outcome
        try:
            response = pool.send(
                attempt.request, attempt.extensions, partial(self._release, state),
                attempt.limit_at)
        except httpx.TransportError as exc:
            outcome = failed(call, state, attempt, exc, self.clock())
            self._release(state)
            return outcome
        except BaseException as exc:  # cancelled or interrupted: count nothing against it
            aborted(call, state, attempt, exc)
            self._release(state)
            raise
        return answered(call, state, attempt, response, self.clock())

    def _hedged_attempt(self, call: Call) -> Outcome:
        """The first attempt plus hedges after the hedge delay; the first good answer wins.

        Decisions stay with the caller; the runner only sends concurrently. Every
        answer that is not returned is closed: a superseded one at once, a losing
        one when it arrives (see the runner's `abandon`), and, when this is
        interrupted, whatever was held.
        """
        chosen = self._pick(call)
        if isinstance(chosen, Outcome):
            return chosen
        race = HedgeRace(call)
        pending = {self._start(call, chosen, hedge=False)}
        unsettled: list[Any] = []  # finished attempts not looked at yet
        outcome: Outcome | None = None
        try:
            while pending:
                done, pending = self._runner.wait_first(
                    pending, race.wait_time(self.clock()))
                unsettled = list(done)
                while unsettled:
                    outcome = unsettled.pop().result()
                    won, stale = race.settle(outcome)
                    if stale is not None:
                        discard(stale)
                    if won:
                        return outcome
                if done:
                    continue
                hedge_to = race.next_hedge(self.clock())
                if hedge_to == STOP:
                    break
                if isinstance(hedge_to, Admitted):
                    pending.add(self._start(call, hedge_to, hedge=True))
            return race.result(self.clock())
        except BaseException:  # interrupted: nobody will read the answers held here
            for held in (race.last, outcome):
                if held is not None and held.response is not None:
                    discard(held.response)
            raise
        finally:
            pending.update(unsettled)  # finished at the same time as the winner: lost too
            self._runner.abandon(pending)

    def _start(self, call: Call, chosen: Admitted, *, hedge: bool) -> Any:
        """Start an attempt now (count, span) and send it concurrently."""
        attempt = launch(call, chosen, self.clock(), hedge=hedge, concurrent=True)
        return self._runner.spawn(self._transmit, call, chosen.state, attempt)

    # -- pools and endpoints ------------------------------------------------------------

    def _pool_for(self, state: EndpointState) -> EndpointPool | None:
        """The endpoint's pool, built on first use; `None` once the transport is closed."""
        pool = state.pool
        if pool is None or self._closed:
            with self._lock:
                if self._closed:
                    return None
                pool = state.pool
                if pool is None:
                    pool = state.pool = self._new_pool(
                        state.endpoint.host, state.endpoint.port, self.settings)
        return pool  # type: ignore[no-any-return]

    def _take_pool(self, state: EndpointState) -> EndpointPool | None:
        with self._lock:
            pool, state.pool = state.pool, None
        return pool  # type: ignore[no-any-return]

    def _release(self, state: EndpointState) -> None:
        """An attempt is over (response closed, failed or cancelled)."""
        state.finish()
        if state.retired and state.inflight <= 0:
            pool = self._take_pool(state)
            if pool is not None:
                self._runner.close_soon(pool)

    def _retire(self, states: list[EndpointState]) -> None:
        for state in states:
            self._close_pool(state)

    def _close_pool(self, state: EndpointState) -> None:
        pool = self._take_pool(state)
        if pool is not None:
            pool.close()

    def _send_to_mock(self, call: Call, now: float) -> httpx.Response:
        """One attempt for a service whose discovery has not answered, sent where
        respx's mock answers it (no endpoint: nothing to fail over to)."""
        request = call.request
        request.extensions, _, _ = call.stamp(request, now)
        call.attempts = 1
        response = self._passthrough_transport().handle_request(request)
        response.extensions["meshlib"] = call.describe(None)
        return response

    def _passthrough_transport(self) -> httpx.BaseTransport:
        transport = self._passthrough
        if transport is None:
            with self._lock:
                if self._passthrough is None:
                    self._passthrough = httpx.HTTPTransport(**self._passthrough_kwargs)
                transport = self._passthrough
        return transport
