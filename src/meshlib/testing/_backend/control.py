"""Control of the loopback backend: one `Server`, its settings and records.

A `Server` is one listening socket of a `Backend`; its
setters may be called from any thread but the backend's own event-loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import socket
import threading
import time
from typing import Any, Literal, Protocol

from .parsing import Request
from .protocol import HTTPProtocol
from .settings import Mode, RecordedRequest, ServerSettings, check_loopback, format_address


class Owner(Protocol):
    """What a `Server` needs of the backend that runs it (`Backend`)."""

    _loop: asyncio.AbstractEventLoop | None

    def _call(self, fn: Any) -> None: ...

    def _call_coro(self, coro: Any) -> None: ...

    def _total_add(self) -> None: ...

__all__ = ["Mode", "Owner", "RecordedRequest", "Server", "ServerSettings", "check_loopback",
           "format_address"]

class Server:
    """One loopback HTTP server of a `Backend`.

    Behaviour setters and readers are thread-safe; they may be called from
    any thread except the backend's own event-loop thread (which only runs
    this module's code).
    """

    def __init__(
        self,
        owner: Owner,
        host: str,
        settings: ServerSettings,
        record_limit: int,
        seed: int | None,
    ) -> None:
        self._owner = owner
        self.host = host
        self.port = 0
        self._settings = settings.validated()
        self._lock = threading.Lock()
        self._count = 0
        self._records: collections.deque[RecordedRequest] = collections.deque(maxlen=record_limit)
        self._random = random.Random(seed)
        self._aserver: asyncio.Server | None = None
        self._connections: set[HTTPProtocol] = set()
        self._stalled: set[HTTPProtocol] = set()
        self._backend_header = b""

    # -- identity ----------------------------------------------------------
    @property
    def address(self) -> str:
        """`host:port` (IPv6 as `[::1]:port`)."""
        return format_address(self.host, self.port)

    @property
    def url(self) -> str:
        """`http://host:port`."""
        return f"http://{self.address}"

    def __repr__(self) -> str:
        return f"<Server {self.address} {self._settings}>"

    # -- behaviour ---------------------------------------------------------
    @property
    def settings(self) -> ServerSettings:
        """The current behaviour."""
        return self._settings

    def set(
        self,
        *,
        delay_ms: float | None = None,
        status: int | None = None,
        fail_pct: float | None = None,
        fail_status: int | None = None,
        retry_after: str | int | Literal[False] | None = False,
        mode: Mode | None = None,
        drop_pct: float | None = None,
        query_overrides: bool | None = None,
    ) -> ServerSettings:
        """Change some of the behaviour; unspecified fields keep their value.

        `retry_after=None` removes the header (`False`, the default,
        leaves it unchanged).  Returns the new settings.
        """
        changes: dict[str, Any] = {}
        if delay_ms is not None:
            changes["delay_ms"] = float(delay_ms)
        if status is not None:
            changes["status"] = int(status)
        if fail_pct is not None:
            changes["fail_pct"] = float(fail_pct)
        if fail_status is not None:
            changes["fail_status"] = int(fail_status)
        if retry_after is not False:
            changes["retry_after"] = None if retry_after is None else str(retry_after)
        if mode is not None:
            changes["mode"] = mode
        if drop_pct is not None:
            changes["drop_pct"] = float(drop_pct)
        if query_overrides is not None:
            changes["query_overrides"] = bool(query_overrides)
        with self._lock:
            self._settings = dataclasses.replace(self._settings, **changes).validated()
            return self._settings

    def reset_settings(self) -> None:
        """Back to a healthy, fast server (`ServerSettings()`)."""
        with self._lock:
            self._settings = ServerSettings()

    @property
    def delay_ms(self) -> float:
        """Base delay before answering, in milliseconds."""
        return self._settings.delay_ms

    @delay_ms.setter
    def delay_ms(self, value: float) -> None:
        self.set(delay_ms=value)

    @property
    def status(self) -> int:
        """Status code of a normal answer."""
        return self._settings.status

    @status.setter
    def status(self, value: int) -> None:
        self.set(status=value)

    @property
    def fail_pct(self) -> float:
        """Percentage (0..100) of requests answered with `fail_status`."""
        return self._settings.fail_pct

    @fail_pct.setter
    def fail_pct(self, value: float) -> None:
        self.set(fail_pct=value)

    @property
    def mode(self) -> Mode:
        """`normal`, `close`, `reset` or `stall`."""
        return self._settings.mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self.set(mode=value)

    def close_connections(self) -> None:
        """Drop every open connection (including stalled ones) right now."""
        self._owner._call(self._close_connections)

    def refuse(self, *, close_connections: bool = True) -> None:
        """Stop listening, so that new connects are refused.

        By default the open connections are dropped as well, as when a
        process dies.  `restore()` listens on the same port again.
        """
        self._owner._call(lambda: self._refuse(close_connections))

    def restore(self) -> None:
        """Listen again on the same port after `refuse()`."""
        self._owner._call_coro(self._listen())

    @property
    def listening(self) -> bool:
        """Whether the server accepts connections."""
        return self._aserver is not None

    # -- counters ----------------------------------------------------------
    @property
    def count(self) -> int:
        """How many requests were read completely since the last reset."""
        return self._count

    @property
    def requests(self) -> list[RecordedRequest]:
        """The most recent requests (bounded), oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def last_request(self) -> RecordedRequest | None:
        """The most recent request, if any."""
        with self._lock:
            return self._records[-1] if self._records else None

    @property
    def connection_count(self) -> int:
        """Currently open connections."""
        return len(self._connections)

    @property
    def stalled_count(self) -> int:
        """Connections currently stalled by `mode="stall"`."""
        return len(self._stalled)

    def reset_counts(self) -> None:
        """Forget counted and recorded requests."""
        with self._lock:
            self._count = 0
            self._records.clear()

    def wait_for_count(self, n: int, timeout: float = 5.0) -> bool:
        """Poll until `count` reaches `n`; return whether it did."""
        deadline = time.monotonic() + timeout
        while self._count < n:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    # -- loop-thread internals ----------------------------------------------
    def _record(self, req: Request) -> int:
        with self._lock:
            self._count += 1
            n = self._count
            self._records.append(
                RecordedRequest(
                    backend=self.address,
                    method=req.method,
                    path=req.path,
                    query=req.query,
                    headers=req.headers,
                    body=req.body,
                    time=time.monotonic(),
                    n=n,
                )
            )
        self._owner._total_add()
        return n

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        loop = self._owner._loop
        if loop is None:
            raise RuntimeError("backend is not running")
        return loop

    async def _listen(self) -> None:
        if self._aserver is not None:
            return
        loop = self._loop_or_raise()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._aserver = await loop.create_server(
            lambda: HTTPProtocol(self),
            host=self.host,
            port=self.port,
            family=family,
            reuse_address=True,
            backlog=1024,
        )
        if self.port == 0:
            self.port = self._aserver.sockets[0].getsockname()[1]
            self._backend_header = b"X-Backend: %s\r\n" % self.address.encode()

    def _close_connections(self) -> None:
        for proto in list(self._connections):
            proto.abort()
        self._stalled.clear()

    def _refuse(self, close_connections: bool) -> None:
        if self._aserver is not None:
            self._aserver.close()
            self._aserver = None
        if close_connections:
            self._close_connections()

    async def _shutdown(self) -> None:
        aserver = self._aserver
        self._refuse(close_connections=True)
        if aserver is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(aserver.wait_closed(), 1.0)

