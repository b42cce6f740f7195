"""The loopback backend in a thread: `Backend` runs its servers on a private event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from .control import Server
from .settings import Mode, RecordedRequest, ServerSettings, check_loopback

__all__ = ["Backend", "per_server"]


def per_server(value: Any, n: int, name: str) -> list[Any]:
    """Expand one value, or check a sequence of `n` values (one per server)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} servers")
        return list(value)
    return [value] * n


class Backend:
    """A set of loopback HTTP/1.1 test servers on a background event loop.

    ```
    with Backend(3, delay_ms=[0, 0, 50]) as backend:
        httpx.get(backend.urls[0] + "/hello?status=503")
        backend[2].set(mode="stall")
        assert backend[0].count == 1
    ```

    Per-server arguments take one value for every server or a sequence with
    one value per server.  `host` is `"127.0.0.1"`, `"::1"` or a
    sequence of them (one per server).  `seed` makes `fail_pct`
    deterministic (server `i` uses `seed + i`).
    """

    def __init__(
        self,
        n: int = 1,
        *,
        delay_ms: float | Sequence[float] = 0.0,
        status: int | Sequence[int] = 200,
        fail_pct: float | Sequence[float] = 0.0,
        fail_status: int | Sequence[int] = 503,
        retry_after: str | int | Sequence[str | int | None] | None = None,
        mode: Mode | Sequence[Mode] = "normal",
        drop_pct: float = 0.0,
        query_overrides: bool = True,
        host: str | Sequence[str] = "127.0.0.1",
        record_limit: int = 1000,
        seed: int | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a Backend needs at least one server")
        hosts = [host] * n if isinstance(host, str) else per_server(list(host), n, "host")
        delays = per_server(delay_ms, n, "delay_ms")
        statuses = per_server(status, n, "status")
        fails = per_server(fail_pct, n, "fail_pct")
        fail_statuses = per_server(fail_status, n, "fail_status")
        retry_afters: list[str | int | None] = (
            [retry_after] * n
            if retry_after is None or isinstance(retry_after, (str, int))
            else per_server(list(retry_after), n, "retry_after")
        )
        modes: list[Mode] = per_server(mode if isinstance(mode, str) else list(mode), n, "mode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._total = 0
        self._total_lock = threading.Lock()
        self.servers: list[Server] = []
        for i in range(n):
            settings = ServerSettings(
                delay_ms=float(delays[i]),
                status=int(statuses[i]),
                fail_pct=float(fails[i]),
                fail_status=int(fail_statuses[i]),
                retry_after=None if retry_afters[i] is None else str(retry_afters[i]),
                mode=modes[i],
                drop_pct=float(drop_pct),
                query_overrides=query_overrides,
            )
            self.servers.append(
                Server(
                    self,
                    check_loopback(hosts[i]),
                    settings,
                    record_limit,
                    None if seed is None else seed + i,
                )
            )

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> Backend:
        """Start the event-loop thread and every server; return `self`."""
        if self._thread is not None:
            raise RuntimeError("backend already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def startup() -> None:
                for server in self.servers:
                    await server._listen()

            try:
                loop.run_until_complete(startup())
            except BaseException as exc:
                ready.set_exception(exc)
            else:
                ready.set_result(None)
                loop.run_forever()
            finally:
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()

        self._thread = threading.Thread(target=run, name="meshlib-test-backend", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout=10)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            self._loop = None
            raise
        return self

    def stop(self) -> None:
        """Close every server and connection (stalled ones too), join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return

        async def shutdown() -> None:
            for server in self.servers:
                await server._shutdown()

        try:
            if not loop.is_closed():
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._thread = None
            self._loop = None

    @property
    def running(self) -> bool:
        """Whether the backend thread runs."""
        return self._thread is not None

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- thread plumbing ---------------------------------------------------
    def _call(self, fn: Any) -> None:
        async def wrapper() -> None:
            fn()

        self._call_coro(wrapper())

    def _call_coro(self, coro: Any) -> None:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("backend is not running")
        if self._thread is threading.current_thread():
            raise RuntimeError("cannot control the backend from its own thread")
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)

    def _total_add(self) -> None:
        with self._total_lock:
            self._total += 1

    # -- access ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.servers)

    def __getitem__(self, index: int) -> Server:
        return self.servers[index]

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)

    def __repr__(self) -> str:
        return f"<Backend {self.addresses}>"

    def server(self, address: str) -> Server:
        """The server whose `host:port` is `address`."""
        for server in self.servers:
            if server.address == address:
                return server
        raise KeyError(address)

    @property
    def addresses(self) -> list[str]:
        """`host:port` of every server (IPv6 as `[::1]:port`)."""
        return [s.address for s in self.servers]

    @property
    def urls(self) -> list[str]:
        """`http://host:port` of every server."""
        return [s.url for s in self.servers]

    @property
    def static_url(self) -> str:
        """A `static://` discovery URL naming every server."""
        return "static://" + ",".join(self.addresses)

    @property
    def count(self) -> int:
        """Requests counted by all servers since the last reset."""
        return self._total

    @property
    def counts(self) -> dict[str, int]:
        """Per-server request counts, keyed by address."""
        return {s.address: s.count for s in self.servers}

    @property
    def requests(self) -> list[RecordedRequest]:
        """Recorded requests of every server, in arrival order."""
        merged = [r for s in self.servers for r in s.requests]
        merged.sort(key=lambda r: r.time)
        return merged

    def reset_counts(self) -> None:
        """Forget counted and recorded requests on every server."""
        with self._total_lock:
            self._total = 0
        for server in self.servers:
            server.reset_counts()

    def set(self, **changes: Any) -> None:
        """`Server.set()` on every server."""
        for server in self.servers:
            server.set(**changes)

    def reset_settings(self) -> None:
        """Every server back to healthy and fast; listening again if refused."""
        for server in self.servers:
            server.reset_settings()
            if not server.listening and self.running:
                server.restore()

    def wait_for_count(self, n: int, timeout: float = 5.0) -> bool:
        """Poll until `count` reaches `n`; return whether it did."""
        deadline = time.monotonic() + timeout
        while self._total < n:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

