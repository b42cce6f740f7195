"""What threads do for the sync transport: hedges, background discovery, closing pools.

The async twin (`_async/runner.py`, tasks) has the same names for the same
steps; `_sync/transport.py` (generated from `_async/transport.py`) drives
this one. Discovery runs in one background thread with its own event loop;
hedges are sent from a thread pool, in the caller's context. A losing attempt
cannot be interrupted: its response is closed when it arrives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .._call import Outcome
from .._discovery._runner import follow
from .._endpoint import EndpointState
from .._fork import keep
from .._mesh import Mesh
from .._pool import PoolSettings

if TYPE_CHECKING:
    from .pool import EndpointPool


class Owner(Protocol):
    """The transport a runner works for (`MeshTransport`), as far as the runner sees it."""

    @property
    def mesh(self) -> Mesh:
        """Its services."""
        ...

    @property
    def settings(self) -> PoolSettings:
        """Its pool settings (the connection limit sizes the worker pool)."""
        ...

    def _retire(self, states: list[EndpointState]) -> None:
        """Close the pools of endpoints that discovery retired."""

__all__ = ["Runner"]


class Runner:
    """Threads: a discovery thread, and a worker pool for concurrent attempts."""

    def __init__(self, transport: Owner) -> None:
        self.settings = transport.settings
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._discovery = _DiscoveryThread(transport) if transport.mesh.dynamic else None
        self._owner = weakref.ref(transport)
        #: a forked child whose discovery thread has not been started again yet
        self._forked = False
        self._closed = False

    def enter(self) -> None:
        """Before each request: in a forked child, start discovery again (once); else
        nothing to do (discovery started with the transport)."""
        if self._forked:
            self._restart()

    def after_fork(self) -> None:
        """In a forked child: the parent's discovery thread and hedge workers did not
        come along. Forget them (the thread's loop is kept, never closed: closing would
        act on the parent's watch connections); the first request starts discovery."""
        self._lock = threading.Lock()
        self._executor = None
        if self._discovery is not None:
            self._discovery.forget()
            self._discovery = None
            self._forked = not self._closed

    def _restart(self) -> None:
        with self._lock:  # once, whichever request comes first
            if not self._forked:
                return
            self._forked = False
        owner = self._owner()
        if owner is None or self._closed:
            return
        self._discovery = _DiscoveryThread(owner)  # starts a thread: not under the lock
        if self._closed:  # closed meanwhile: close() did not see this thread
            self._discovery.stop()

    def spawn(self, send: Callable[..., Outcome], *args: Any,
              ) -> concurrent.futures.Future[Outcome]:
        """Send an attempt concurrently: from a worker thread, in the caller's context."""
        return self._workers().submit(contextvars.copy_context().run, send, *args)

    def wait_first(self, pending: set[concurrent.futures.Future[Outcome]], timeout: float,
                   ) -> tuple[set[concurrent.futures.Future[Outcome]],
                              set[concurrent.futures.Future[Outcome]]]:
        """Wait up to `timeout` seconds for one of `pending` to finish: (done, pending)."""
        done, not_done = concurrent.futures.wait(
            pending, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return done, not_done

    def abandon(self, pending: set[concurrent.futures.Future[Outcome]]) -> None:
        """Losing attempts: close their responses whenever they arrive."""
        for future in pending:
            future.add_done_callback(_close_outcome)

    def close_soon(self, pool: EndpointPool) -> None:
        """Close a retired endpoint's pool from a callback (its last response ended)."""
        pool.close()

    def loop_gone(self) -> bool:
        """Whether the pools' event loop has been closed: threads have none, never."""
        return False

    def close(self) -> None:
        """Stop discovery and the worker threads."""
        self._closed = True
        if self._discovery is not None:
            self._discovery.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _workers(self) -> concurrent.futures.ThreadPoolExecutor:
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

    def __init__(self, transport: Owner) -> None:
        self.runtimes = transport.mesh.dynamic
        self.clock = transport.mesh.clock
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
        self._finalizer = weakref.finalize(transport, self.stop)

    def forget(self) -> None:
        """In a forked child (where this thread does not run): never stop or close it,
        which would act on the parent's loop; keep its loop and tasks unused."""
        self._finalizer.detach()
        keep(self.loop, *self._tasks)

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
