"""``AsyncMeshTransport``: the async twin of ``MeshTransport``.

Only I/O lives here (sending, sleeping, tasks); every decision is made by
``_call.Call`` and ``_service.ServiceRuntime``, shared with the sync twin.
Discovery runs as tasks on the event loop of the first request; losing
hedges are cancelled, which releases their connection and in-flight count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial
from typing import Any

import httpx
from tenacity import AsyncRetrying, stop_after_attempt

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
from ._pool import AsyncEndpointPool, PoolSettings

__all__ = ["AsyncMeshTransport"]



async def adiscard(response: httpx.Response) -> None:
    """Close a response nobody will read (see ``_transport.discard``)."""
    await response.aclose()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """An async httpx transport that routes requests for mesh services to their endpoints.

    Same arguments as :class:`meshlib.MeshTransport`.

    .. versionadded:: 0.1
    """

    def __init__(self, *, services: ServicesArg = None, policy: Policy | None = None,
                 environ: Mapping[str, str] | None = None, **transport_kwargs: Any) -> None:
        passthrough = transport_kwargs.pop("passthrough", None)
        self.mesh = Mesh(services, policy, environ=environ)
        self.clock = self.mesh.clock
        self.settings, self._passthrough_kwargs = PoolSettings.split(transport_kwargs)
        self._passthrough: httpx.AsyncBaseTransport | None = passthrough
        self._closed = False
        self.sleep = testing.asleep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dynamic = self.mesh.dynamic
        self._closing: set[asyncio.Future[None]] = set()

    # -- httpx transport API ------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the mesh if its host is a service, else pass it through."""
        runtime = self.mesh.route(request)
        if runtime is None:
            return await self._passthrough_transport().handle_async_request(request)
        if asyncio.get_running_loop() is not self._loop:
            self._ensure_loop()
        now = self.clock()
        call = Call(runtime, self.mesh.policy_for(runtime), request, now)
        if not runtime.ready.is_set() and not await runtime.wait_ready_async(
                call.remaining(now)):
            raise undiscovered(call, self.clock())
        runtime.budget.deposit(now)
        retired = runtime.check_due(now)
        if retired:  # a pending empty answer took effect (rare)
            await self._retire(retired)
        attempt = self._hedged_attempt if call.can_hedge() else self._attempt
        outcome = await attempt(call)
        if call.wants_retry(outcome):
            outcome = await self._retry(call, outcome, attempt)
        return finish(call, outcome, self.clock())

    async def aclose(self) -> None:
        """Stop discovery and close every pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks and self._loop is asyncio.get_running_loop():
            await asyncio.gather(*tasks, return_exceptions=True)
        for runtime in self.mesh.runtimes.values():
            for state in [*runtime.states.values(), *runtime.draining]:
                await self._close_pool(state)
        if self._passthrough is not None:
            await self._passthrough.aclose()

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service: endpoints, EWMA, breakers, budget."""
        return self.mesh.snapshot()

    # -- discovery ----------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        """Follow the running event loop: start discovery tasks on it (again, if the loop
        changed), and forget the connections of a previous loop that has been closed."""
        loop = asyncio.get_running_loop()
        if self._loop is loop or self._closed:
            return
        old = self._loop
        if old is not None and old.is_closed():
            for runtime in self.mesh.runtimes.values():
                for state in runtime.states.values():
                    state.pool = None
        for task in self._tasks:
            if not task.done():
                task.cancel()
        self._loop = loop
        self._tasks = [
            loop.create_task(follow(rt, self._retire, self.clock),
                             name=f"meshlib-discovery-{rt.name}")
            for rt in self._dynamic
        ]

    # -- the request path -------------------------------------------------------------

    async def _retry(self, call: Call, first: Outcome, attempt: Any) -> Outcome:
        pending = [first]

        async def next_attempt() -> Outcome:
            if pending:
                return pending.pop()
            outcome: Outcome = await attempt(call)
            return outcome

        retrying = AsyncRetrying(
            stop=stop_after_attempt(call.policy.retries + 1),
            wait=partial(wait, call),
            retry=RetryPredicate(call, self.clock),
            sleep=self.sleep,
            retry_error_callback=last_outcome,
        )
        try:
            result: Outcome = await retrying(next_attempt)
        except BaseException:  # cancelled (in backoff, say): release what the retry held
            stale = superseded(call)
            if stale is not None:
                await stale.aclose()
            call.refund()
            raise
        return result

    async def _attempt(self, call: Call) -> Outcome:
        """One attempt: pick, admit, send, record. Never raises for transport errors."""
        chosen = pick(call, self.clock())
        if isinstance(chosen, Outcome):
            return chosen
        stale = superseded(call)
        if stale is not None:
            await adiscard(stale)
        sent = launch(call, chosen, self.clock(), hedge=False, concurrent=False)
        return await self._transmit(call, chosen.state, sent)

    async def _transmit(self, call: Call, state: EndpointState, sent: Launch) -> Outcome:
        if not sent.extensions:  # sent from its own task: stamp it as it really leaves
            stamp(call, sent, self.clock())
        pool = self._pool_for(state)
        try:
            response = await pool.send(sent.request, sent.extensions,
                                       partial(self._release, state), sent.limit_at)
        except httpx.TransportError as exc:
            outcome = failed(call, state, sent, exc, self.clock())
            self._release(state)
            return outcome
        except BaseException as exc:  # cancelled (a losing hedge, or the caller): count nothing
            aborted(call, state, sent, exc)
            self._release(state)
            raise
        return answered(call, state, sent, response, self.clock())

    async def _hedged_attempt(self, call: Call) -> Outcome:
        """The first attempt plus hedges after the hedge delay; the first good answer wins.

        Losing attempts are cancelled, which releases their connections.
        """
        chosen = pick(call, self.clock())
        if isinstance(chosen, Outcome):
            return chosen
        stale = superseded(call)
        if stale is not None:
            await adiscard(stale)
        race = HedgeRace(call)
        pending = {self._start(call, chosen, hedge=False)}
        finished = False
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=race.wait_time(self.clock()),
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    outcome = task.result()
                    won, stale = race.settle(outcome)
                    if stale is not None:
                        await adiscard(stale)
                    if won:
                        finished = True
                        return outcome
                if done:
                    continue
                hedge_to = race.next_hedge(self.clock())
                if hedge_to == STOP:
                    break
                if isinstance(hedge_to, Admitted):
                    pending.add(self._start(call, hedge_to, hedge=True))
            finished = True
            return race.result(self.clock())
        finally:
            await _cancel_all(pending)
            if not finished:  # cancelled: nobody will read the answer kept so far
                kept = race.last.response if race.last is not None else None
                if kept is not None:
                    await kept.aclose()

    def _start(self, call: Call, chosen: Admitted, *, hedge: bool) -> asyncio.Task[Outcome]:
        """Start an attempt now (count, span) and send it in its own task."""
        sent = launch(call, chosen, self.clock(), hedge=hedge, concurrent=True)
        return asyncio.ensure_future(self._transmit(call, chosen.state, sent))

    # -- pools and endpoints ------------------------------------------------------------

    def _pool_for(self, state: EndpointState) -> AsyncEndpointPool:
        pool = state.pool
        if pool is None:
            pool = state.pool = AsyncEndpointPool(state.endpoint.host, state.endpoint.port,
                                                  self.settings)
        return pool  # type: ignore[no-any-return]

    def _release(self, state: EndpointState) -> None:
        state.finish()
        if state.retired and state.inflight <= 0 and state.pool is not None:
            pool, state.pool = state.pool, None
            task = asyncio.ensure_future(pool.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _retire(self, states: list[EndpointState]) -> None:
        for state in states:
            await self._close_pool(state)

    async def _close_pool(self, state: EndpointState) -> None:
        pool, state.pool = state.pool, None
        if pool is not None:
            await pool.aclose()

    def _passthrough_transport(self) -> httpx.AsyncBaseTransport:
        if self._passthrough is None:
            self._passthrough = httpx.AsyncHTTPTransport(**self._passthrough_kwargs)
        return self._passthrough


async def _cancel_all(tasks: set[asyncio.Task[Outcome]]) -> None:
    """Cancel losing attempts and wait for them, so their connections are released."""
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)  # the caller's own cancellation still propagates
    for task in tasks:
        if task.cancelled() or task.exception() is not None:
            continue
        outcome = task.result()
        if outcome.response is not None:
            await outcome.response.aclose()
