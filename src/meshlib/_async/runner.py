"""What tasks do for the async transport: hedges, background discovery, closing pools.

The sync twin (`_sync/runner.py`, threads) has the same names for the same
steps; `_async/transport.py` and the generated `_sync/transport.py` drive
either one. Discovery runs as tasks on the event loop of the first request
(again on a new loop, if the transport moves to one); losing hedges are
cancelled, which releases their connections and in-flight counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from .._call import Outcome
from .._discovery._runner import follow
from .._endpoint import EndpointState
from .._fork import keep
from .._mesh import Mesh

if TYPE_CHECKING:
    from .pool import AsyncEndpointPool



class Owner(Protocol):
    """The transport a runner works for (`AsyncMeshTransport`), as far as the runner sees it."""

    @property
    def mesh(self) -> Mesh:
        """Its services."""
        ...

    async def _retire(self, states: list[EndpointState]) -> None:
        """Close the pools of endpoints that discovery retired."""

__all__ = ["Runner"]


class Runner:
    """Tasks on the running event loop: discovery, concurrent attempts, closing pools."""

    def __init__(self, transport: Owner) -> None:
        self.mesh = transport.mesh
        # Discovery tasks live on the loop; they hold the transport only weakly, so a
        # client dropped without aclose() is collected and its tasks and pools end.
        reference = weakref.ref(transport)

        async def retire(states: list[EndpointState]) -> None:
            owner = reference()
            if owner is not None:
                await owner._retire(states)

        self._retire = retire
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Future[None]] = set()  # closes in progress
        self._closed = False
        weakref.finalize(transport, self._abandoned)

    def _abandoned(self) -> None:
        """The transport was garbage-collected without `aclose()`: stop its discovery
        and close its pools on their loop (from whatever thread the collector runs in)."""
        loop, tasks = self._loop, self._tasks
        if self._closed or loop is None or loop.is_closed() or not tasks:
            return
        self._closed = True
        self._tasks = []
        mesh = self.mesh

        async def shut() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for runtime in mesh.runtimes.values():
                for state in [*runtime.states.values(), *runtime.draining]:
                    pool, state.pool = state.pool, None
                    if pool is not None:
                        with contextlib.suppress(Exception):
                            await pool.aclose()

        def start() -> None:
            closing = asyncio.ensure_future(shut())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(start)

    def enter(self) -> None:
        """Before each request: follow the running event loop (start discovery on it)."""
        if asyncio.get_running_loop() is not self._loop:
            self._follow_loop()

    def _follow_loop(self) -> None:
        """Start discovery tasks on the running loop (again, if the loop changed), and
        forget the connections of a previous loop that has been closed."""
        loop = asyncio.get_running_loop()
        if self._loop is loop or self._closed:
            return
        mesh = self.mesh
        old = self._loop
        if old is not None and old.is_closed():
            for runtime in mesh.runtimes.values():
                for state in runtime.states.values():
                    state.pool = None
        for task in self._tasks:
            if not task.done():
                task.cancel()
        self._loop = loop
        self._tasks = [
            loop.create_task(follow(rt, self._retire, mesh.clock),
                             name=f"meshlib-discovery-{rt.name}")
            for rt in mesh.dynamic
        ]

    def after_fork(self) -> None:
        """In a forked child: forget the parent's event loop and discovery tasks, so that
        the child's first request starts discovery on its own loop. They are kept, never
        cancelled: cancelling would close the parent's watch connections."""
        keep(self._loop, *self._tasks, *self._closing)
        self._loop = None
        self._tasks = []
        self._closing = set()

    def spawn(self, send: Callable[..., Awaitable[Outcome]], *args: Any,
              ) -> asyncio.Future[Outcome]:
        """Send an attempt concurrently: in its own task."""
        return asyncio.ensure_future(send(*args))

    async def wait_first(self, pending: set[asyncio.Future[Outcome]], timeout: float,
                         ) -> tuple[set[asyncio.Future[Outcome]], set[asyncio.Future[Outcome]]]:
        """Wait up to `timeout` seconds for one of `pending` to finish: (done, pending)."""
        return await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)

    async def abandon(self, pending: set[asyncio.Future[Outcome]]) -> None:
        """Losing attempts: cancel them and wait, so their connections are released; close
        the answers of those that finished anyway (now, or when they do)."""
        if not pending:
            return
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending)  # the caller's own cancellation still propagates
        finally:
            for task in pending:
                if task.done():
                    await _close_answer(task)
                else:  # the caller was cancelled meanwhile: close it when it ends
                    task.add_done_callback(self._close_later)

    def _close_later(self, task: asyncio.Future[Outcome]) -> None:
        closing = asyncio.ensure_future(_close_answer(task))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def close_soon(self, pool: AsyncEndpointPool) -> None:
        """Close a retired endpoint's pool from a callback (its last response ended)."""
        task = asyncio.ensure_future(pool.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def loop_gone(self) -> bool:
        """Whether the event loop the pools were last used on has been closed since (its
        connections went with it)."""
        loop = self._loop
        return loop is not None and loop.is_closed()

    async def aclose(self) -> None:
        """Stop discovery."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks and self._loop is asyncio.get_running_loop():
            await asyncio.gather(*tasks, return_exceptions=True)


async def _close_answer(task: asyncio.Future[Outcome]) -> None:
    """Close the response of a finished attempt nobody will read."""
    if task.cancelled() or task.exception() is not None:
        return
    response = task.result().response
    if response is not None:
        await response.aclose()
