"""``MeshTransport``: the sync httpx transport that carries out a ``Call``'s decisions.

Only I/O lives here (sending, sleeping, threads); every decision is made by
``_call.Call`` and ``_service.ServiceRuntime``, shared with the async twin.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import weakref
from collections.abc import Mapping
from functools import partial
from typing import Any

import httpx
from tenacity import Retrying, stop_after_attempt

from . import testing
from ._attempts import (
    STOP,
    Admitted,
    HedgeRace,
    Launch,
    RetryPredicate,
    aborted,
    answered,
    failed,
    finish,
    last_outcome,
    launch,
    pick,
    stamp,
    superseded,
    undiscovered,
    wait,
)
from ._call import Call, Outcome
from ._discovery._runner import follow
from ._endpoint import EndpointState
from ._mesh import Mesh, ServicesArg
from ._policy import Policy
from ._pool import EndpointPool, PoolSettings
from ._service import ServiceRuntime

__all__ = ["MeshTransport"]

def discard(response: httpx.Response) -> None:
    """Close a response nobody will read (a superseded answer, a losing hedge).

    Its body is not read first: it may be large or slow, and reading it could
    outlast the deadline the next attempt needs. Closing an unread response
    gives up its connection; retries are rare enough for that to be cheap.
    """
    response.close()


class MeshTransport(httpx.BaseTransport):
    """An httpx transport that routes requests for mesh services to their endpoints.

    ``services`` maps service names to discovery URLs or :class:`meshlib.Service`;
    ``None`` reads ``MESHLIB_SERVICES``. ``transport_kwargs`` are httpx transport
    options (``verify``, ``cert``, ``http2``, ``limits``, ...) applied to every
    endpoint pool and to the pass-through transport; ``passthrough=`` supplies a
    transport of your own for hosts that are not services.

    .. versionadded:: 0.1
    """

    def __init__(self, *, services: ServicesArg = None, policy: Policy | None = None,
                 environ: Mapping[str, str] | None = None, **transport_kwargs: Any) -> None:
        passthrough = transport_kwargs.pop("passthrough", None)
        self.mesh = Mesh(services, policy, environ=environ)
        self.clock = self.mesh.clock
        self.settings, self._passthrough_kwargs = PoolSettings.split(transport_kwargs)
        self._passthrough: httpx.BaseTransport | None = passthrough
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self.sleep = testing.sleep
        self._discovery = _DiscoveryThread(self) if self.mesh.dynamic else None

    # -- httpx transport API ------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the mesh if its host is a service, else pass it through."""
        runtime = self.mesh.route(request)
        if runtime is None:
            return self._passthrough_transport().handle_request(request)
        now = self.clock()
        call = Call(runtime, self.mesh.policy_for(runtime), request, now)
        if not runtime.ready.is_set() and not runtime.wait_ready(call.remaining(now)):
            raise undiscovered(call, self.clock())
        runtime.budget.deposit(now)
        retired = runtime.check_due(now)
        if retired:  # a pending empty answer took effect (rare)
            self._retire(retired)
        attempt = self._hedged_attempt if call.can_hedge() else self._attempt
        outcome = attempt(call)
        if call.wants_retry(outcome):
            outcome = self._retry(call, outcome, attempt)
        return finish(call, outcome, self.clock())

    def close(self) -> None:
        """Stop discovery and close every pool (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._discovery is not None:
            self._discovery.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for runtime in self.mesh.runtimes.values():
            for state in [*runtime.states.values(), *runtime.draining]:
                self._close_pool(state)
        if self._passthrough is not None:
            self._passthrough.close()

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service: endpoints, EWMA, breakers, budget."""
        return self.mesh.snapshot()

    # -- the request path -------------------------------------------------------------

    def _retry(self, call: Call, first: Outcome, attempt: Any) -> Outcome:
        pending = [first]

        def next_attempt() -> Outcome:
            return pending.pop() if pending else attempt(call)

        retrying = Retrying(
            stop=stop_after_attempt(call.policy.retries + 1),
            wait=partial(wait, call),
            retry=RetryPredicate(call, self.clock),
            sleep=self.sleep,
            retry_error_callback=last_outcome,
        )
        try:
            result: Outcome = retrying(next_attempt)
        except BaseException:  # interrupted (in backoff, say): release what the retry held
            stale = superseded(call)
            if stale is not None:
                stale.close()
            call.refund()
            raise
        return result

    def _attempt(self, call: Call) -> Outcome:
        """One attempt: pick, admit, send, record. Never raises for transport errors."""
        chosen = pick(call, self.clock())
        if isinstance(chosen, Outcome):
            return chosen
        stale = superseded(call)
        if stale is not None:
            discard(stale)
        sent = launch(call, chosen, self.clock(), hedge=False, concurrent=False)
        return self._transmit(call, chosen.state, sent)

    def _transmit(self, call: Call, state: EndpointState, sent: Launch) -> Outcome:
        if not sent.extensions:  # sent from a worker thread: stamp it as it really leaves
            stamp(call, sent, self.clock())
        pool = self._pool_for(call.runtime, state)
        try:
            response = pool.send(sent.request, sent.extensions, partial(self._release, state),
                                 sent.limit_at)
        except httpx.TransportError as exc:
            outcome = failed(call, state, sent, exc, self.clock())
            self._release(state)
            return outcome
        except BaseException as exc:
            aborted(call, state, sent, exc)
            self._release(state)
            raise
        return answered(call, state, sent, response, self.clock())

    def _hedged_attempt(self, call: Call) -> Outcome:
        """The first attempt plus hedges after the hedge delay; the first good answer wins.

        Decisions stay in this thread; worker threads only send (in the caller's
        context). A losing attempt cannot be interrupted: its response is closed
        when it arrives.
        """
        chosen = pick(call, self.clock())
        if isinstance(chosen, Outcome):
            return chosen
        stale = superseded(call)
        if stale is not None:
            discard(stale)
        executor = self._pool_executor()
        race = HedgeRace(call)
        pending = {self._submit(executor, call, chosen, hedge=False)}
        finished = False
        try:
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, timeout=race.wait_time(self.clock()),
                    return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    won, stale = race.settle(outcome)
                    if stale is not None:
                        discard(stale)
                    if won:
                        finished = True
                        return outcome
                if done:
                    continue
                hedge_to = race.next_hedge(self.clock())
                if hedge_to == STOP:
                    break
                if isinstance(hedge_to, Admitted):
                    pending.add(self._submit(executor, call, hedge_to, hedge=True))
            finished = True
            return race.result(self.clock())
        finally:
            self._abandon(pending)
            if not finished:  # interrupted: nobody will read the answer kept so far
                kept = race.last.response if race.last is not None else None
                if kept is not None:
                    discard(kept)

    def _submit(self, executor: concurrent.futures.ThreadPoolExecutor, call: Call,
                chosen: Admitted, *, hedge: bool) -> concurrent.futures.Future[Outcome]:
        """Start an attempt here (count, span) and send it from a worker thread."""
        sent = launch(call, chosen, self.clock(), hedge=hedge, concurrent=True)
        return executor.submit(contextvars.copy_context().run, self._transmit, call,
                               chosen.state, sent)

    def _abandon(self, pending: set[concurrent.futures.Future[Outcome]]) -> None:
        """Losing attempts: close their responses whenever they arrive."""
        for future in pending:
            future.add_done_callback(_close_outcome)

    # -- pools and endpoints ------------------------------------------------------------

    def _pool_for(self, runtime: ServiceRuntime, state: EndpointState) -> EndpointPool:
        pool = state.pool
        if pool is None:
            with self._lock:
                pool = state.pool
                if pool is None:
                    pool = state.pool = EndpointPool(state.endpoint.host, state.endpoint.port,
                                                     self.settings)
        return pool  # type: ignore[no-any-return]

    def _release(self, state: EndpointState) -> None:
        state.finish()
        if state.retired and state.inflight <= 0:
            self._close_pool(state)

    def _retire(self, states: list[EndpointState]) -> None:
        for state in states:
            self._close_pool(state)

    def _close_pool(self, state: EndpointState) -> None:
        with self._lock:
            pool, state.pool = state.pool, None
        if pool is not None:
            pool.close()

    def _pool_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            with self._lock:
                if self._executor is None:
                    # every hedged request holds a worker per attempt: size it like the
                    # connection limit so that hedging never queues requests behind others
                    workers = max(64, 4 * (self.settings.limits.max_connections or 100))
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=workers, thread_name_prefix="meshlib-hedge")
                executor = self._executor
        return executor

    def _passthrough_transport(self) -> httpx.BaseTransport:
        transport = self._passthrough
        if transport is None:
            with self._lock:
                if self._passthrough is None:
                    self._passthrough = httpx.HTTPTransport(**self._passthrough_kwargs)
                transport = self._passthrough
        return transport


def _close_outcome(future: concurrent.futures.Future[Outcome]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    outcome = future.result()
    if outcome.response is not None:
        outcome.response.close()


class _DiscoveryThread:
    """Runs the background discovery of a sync transport: one thread, one event loop.

    It holds the transport only weakly, and stops by itself when a transport
    that was never closed is garbage-collected.
    """

    def __init__(self, transport: MeshTransport) -> None:
        self.runtimes = transport.mesh.dynamic
        self.clock = transport.clock
        reference = weakref.ref(transport)

        def retire(states: list[EndpointState]) -> None:
            owner = reference()
            if owner is not None:
                owner._retire(states)

        self._retire = retire
        self.loop = asyncio.new_event_loop()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="meshlib-discovery", daemon=True)
        self.thread.start()
        self._started.wait(5.0)
        weakref.finalize(transport, self.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        for runtime in self.runtimes:
            self._tasks.append(self.loop.create_task(follow(runtime, self._retire, self.clock)))
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def stop(self) -> None:
        """Cancel discovery and end the thread."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.loop.stop()

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop)
        except RuntimeError:
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5.0)
