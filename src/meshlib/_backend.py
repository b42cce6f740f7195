"""A fast loopback HTTP/1.1 test backend on raw :mod:`asyncio` protocols.

This module is stdlib only.  It is used by meshlib's own test-suite, by
``meshlib bench`` and by ``meshlib demo``; it is not part of the public API.

A :class:`Backend` runs one or more tiny HTTP/1.1 servers on loopback
(``127.0.0.1`` and/or ``::1``) on ephemeral ports, in a background thread
with its own event loop.  Each server's behaviour can be changed at run time
from any thread:

* ``delay_ms``: base delay before answering;
* ``status``: status code to answer with;
* ``fail_pct``: percentage of requests answered with ``fail_status``;
* ``retry_after``: add a ``Retry-After`` header to every response;
* ``mode``: ``"normal"``, ``"close"`` (close the connection without
  answering), ``"reset"`` (abort the connection with a TCP RST),
  or ``"stall"`` (keep the socket, never answer, until stopped);
* :meth:`Server.refuse` stops listening (connects are refused) and
  :meth:`Server.restore` listens again on the same port.

Every request may override the behaviour with query parameters
``?delay_ms=``, ``?status=``, ``?fail_pct=`` and ``?retry_after=``.

Every response carries ``X-Backend: host:port`` and a small JSON body::

    {"backend": "127.0.0.1:4711", "method": "GET", "path": "/x",
     "query": "a=1", "headers": {"host": "...", ...}, "body_bytes": 0, "n": 1}

Requests are counted per server when they have been read completely
(headers and body, ``Content-Length`` or chunked), before any behaviour
applies, so a test can assert exactly how many attempts reached a server.

:class:`BackendProcess` runs the same servers in a child process
(``python -m meshlib._backend``), so that a benchmark's client does not share
the interpreter lock with its servers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import http
import ipaddress
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl

__all__ = [
    "Backend",
    "BackendProcess",
    "Mode",
    "RecordedRequest",
    "Server",
    "ServerSettings",
]

Mode = Literal["normal", "close", "reset", "stall"]
_MODES: frozenset[str] = frozenset({"normal", "close", "reset", "stall"})

_MAX_HEAD = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in http.HTTPStatus}


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """The behaviour of one server (immutable; replaced as a whole)."""

    delay_ms: float = 0.0
    status: int = 200
    fail_pct: float = 0.0
    fail_status: int = 503
    retry_after: str | None = None
    mode: Mode = "normal"

    def validated(self) -> ServerSettings:
        """Return ``self`` after checking every field, or raise ``ValueError``."""
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, not {self.delay_ms!r}")
        if not 100 <= self.status <= 999 or not 100 <= self.fail_status <= 999:
            raise ValueError("status and fail_status must be 3-digit HTTP status codes")
        if not 0 <= self.fail_pct <= 100:
            raise ValueError(f"fail_pct must be within 0..100, not {self.fail_pct!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, not {self.mode!r}")
        return self


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as a server received it."""

    backend: str
    """``host:port`` of the server that received it."""
    method: str
    path: str
    """Path without the query string."""
    query: str
    headers: dict[str, str]
    """Lower-cased header names; repeated headers joined with ``", "``."""
    body: bytes
    time: float
    """``time.monotonic()`` when the request had been read completely."""
    n: int
    """1-based sequence number of this request on its server."""

    @property
    def target(self) -> str:
        """The request target as sent (path and query)."""
        return f"{self.path}?{self.query}" if self.query else self.path


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"backend host must be a loopback IP address, not {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"backend host must be a loopback address, not {host!r}")
    return str(ip)


def _parse_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Parse a complete chunked body in ``buf`` from ``start``.

    Return ``(body, end)`` with ``end`` just after the final CRLF, or
    ``None`` if the body is not complete yet.  Raise ``ValueError`` when
    the framing is invalid.
    """
    pos = start
    spans: list[tuple[int, int]] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 1024:
                raise ValueError("chunk size line too long")
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        size = int(size_text, 16)  # ValueError on garbage
        if size < 0:
            raise ValueError("negative chunk size")
        pos = eol + 2
        if size == 0:
            # Trailers, ending with an empty line.
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    body = b"".join(bytes(buf[a:b]) for a, b in spans)
                    return body, eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        spans.append((pos, pos + size))
        pos += size
        if buf[pos : pos + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        pos += 2


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _BadRequest(Exception):
    pass


class _HTTPProtocol(asyncio.Protocol):
    """One server-side HTTP/1.1 connection (keep-alive, pipelining-safe)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False  # a delayed response is pending, or the connection stalls
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._sent_continue = False
        self._eof = False

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server._connections.discard(self)
        self._server._stalled.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._process()

    def eof_received(self) -> bool | None:
        # Half-closed by the client: finish what is pending, then close.
        self._eof = True
        if not self._busy and self._transport is not None:
            self._transport.close()
        return True

    # -- control -----------------------------------------------------------
    def abort(self) -> None:
        """Drop the connection now (used by stop, refuse and close modes)."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()

    def _reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0)."""
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    # -- parsing -----------------------------------------------------------
    def _process(self) -> None:
        while not self._busy and not self._closing and self._buf:
            try:
                req = self._parse()
            except _BadRequest as exc:
                self._write_error(400, str(exc))
                return
            if req is None:
                return
            self._handle(req)

    def _parse(self) -> _Request | None:
        buf = self._buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > _MAX_HEAD:
                raise _BadRequest("request head too large")
            return None
        lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(f"bad request line {lines[0]!r}")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(f"bad header line {line!r}")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body_start = head_end + 4
        te = headers.get("transfer-encoding")
        if te is not None and "chunked" in te.lower():
            self._maybe_continue(headers)
            try:
                parsed = _parse_chunked(buf, body_start)
            except ValueError as exc:
                raise _BadRequest(f"bad chunked body: {exc}") from None
            if parsed is None:
                return None
            body, end = parsed
        else:
            cl_text = headers.get("content-length")
            length = 0
            if cl_text is not None:
                try:
                    length = int(cl_text)
                except ValueError:
                    raise _BadRequest(f"bad content-length {cl_text!r}") from None
                if length < 0:
                    raise _BadRequest("negative content-length")
            end = body_start + length
            if len(buf) < end:
                if length:
                    self._maybe_continue(headers)
                return None
            body = bytes(buf[body_start:end])
        del buf[:end]
        self._sent_continue = False
        path, _, query = target.partition("?")
        conn = headers.get("connection", "").lower()
        keep_alive = "keep-alive" in conn if version == "HTTP/1.0" else "close" not in conn
        return _Request(method, path, query, headers, body, keep_alive)

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if (
            not self._sent_continue
            and headers.get("expect", "").lower() == "100-continue"
            and self._transport is not None
        ):
            self._sent_continue = True
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- answering ---------------------------------------------------------
    def _handle(self, req: _Request) -> None:
        server = self._server
        n = server._record(req)
        settings = server._settings
        if settings.mode != "normal":
            if settings.mode == "stall":
                self._busy = True
                server._stalled.add(self)
            elif settings.mode == "close":
                self._closing = True
                if self._transport is not None:
                    self._transport.close()
            else:
                self._reset()
            return

        delay_ms = settings.delay_ms
        status = settings.status
        fail_pct = settings.fail_pct
        retry_after = settings.retry_after
        if req.query:
            try:
                for key, value in parse_qsl(req.query):
                    if key == "delay_ms":
                        delay_ms = float(value)
                    elif key == "status":
                        status = int(value)
                    elif key == "fail_pct":
                        fail_pct = float(value)
                    elif key == "retry_after":
                        retry_after = value
            except ValueError as exc:
                self._write_error(400, f"bad query override: {exc}")
                return
            if not 100 <= status <= 999:
                self._write_error(400, f"bad status override {status}")
                return
        if fail_pct > 0 and server._random.random() * 100.0 < fail_pct:
            status = settings.fail_status

        body = b""
        if status not in _NO_BODY_STATUSES and not 100 <= status < 200:
            body = json.dumps(
                {
                    "backend": server.address,
                    "method": req.method,
                    "path": req.path,
                    "query": req.query,
                    "headers": req.headers,
                    "body_bytes": len(req.body),
                    "n": n,
                },
                separators=(",", ":"),
            ).encode()
        reason = _REASONS.get(status) or _reason(status).encode()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            server._backend_header,
            b"Content-Type: application/json\r\n",
        ]
        if status not in _NO_BODY_STATUSES:
            head.append(b"Content-Length: %d\r\n" % len(body))
        if retry_after is not None:
            head.append(b"Retry-After: %s\r\n" % retry_after.encode("latin-1"))
        if not req.keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        if req.method != "HEAD":
            head.append(body)
        payload = b"".join(head)

        if delay_ms > 0:
            self._busy = True
            loop = server._loop_or_raise()
            self._timer = loop.call_later(
                delay_ms / 1000.0, self._send_delayed, payload, req.keep_alive
            )
        else:
            self._send(payload, req.keep_alive)

    def _send_delayed(self, payload: bytes, keep_alive: bool) -> None:
        self._timer = None
        self._busy = False
        if self._closing:
            return
        self._send(payload, keep_alive)
        if not self._closing:
            self._process()
        if self._eof and not self._busy and self._transport is not None:
            self._closing = True
            self._transport.close()

    def _send(self, payload: bytes, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(payload)
        if not keep_alive:
            self._closing = True
            transport.close()

    def _write_error(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        payload = (
            b"HTTP/1.1 %d %s\r\n%sContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, _reason(status).encode(), self._server._backend_header, len(body), body)
        )
        self._send(payload, keep_alive=False)


class Server:
    """One loopback HTTP server of a :class:`Backend`.

    Behaviour setters and readers are thread-safe; they may be called from
    any thread except the backend's own event-loop thread (which only runs
    this module's code).
    """

    def __init__(
        self,
        owner: Backend,
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
        self._connections: set[_HTTPProtocol] = set()
        self._stalled: set[_HTTPProtocol] = set()
        self._backend_header = b""

    # -- identity ----------------------------------------------------------
    @property
    def address(self) -> str:
        """``host:port`` (IPv6 as ``[::1]:port``)."""
        return _format_address(self.host, self.port)

    @property
    def url(self) -> str:
        """``http://host:port``."""
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
    ) -> ServerSettings:
        """Change some of the behaviour; unspecified fields keep their value.

        ``retry_after=None`` removes the header (``False``, the default,
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
        with self._lock:
            self._settings = dataclasses.replace(self._settings, **changes).validated()
            return self._settings

    def reset_settings(self) -> None:
        """Back to a healthy, fast server (``ServerSettings()``)."""
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
        """Percentage (0..100) of requests answered with ``fail_status``."""
        return self._settings.fail_pct

    @fail_pct.setter
    def fail_pct(self, value: float) -> None:
        self.set(fail_pct=value)

    @property
    def mode(self) -> Mode:
        """``normal``, ``close``, ``reset`` or ``stall``."""
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
        process dies.  :meth:`restore` listens on the same port again.
        """
        self._owner._call(lambda: self._refuse(close_connections))

    def restore(self) -> None:
        """Listen again on the same port after :meth:`refuse`."""
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
        """Connections currently stalled by ``mode="stall"``."""
        return len(self._stalled)

    def reset_counts(self) -> None:
        """Forget counted and recorded requests."""
        with self._lock:
            self._count = 0
            self._records.clear()

    def wait_for_count(self, n: int, timeout: float = 5.0) -> bool:
        """Poll until :attr:`count` reaches ``n``; return whether it did."""
        deadline = time.monotonic() + timeout
        while self._count < n:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    # -- loop-thread internals ----------------------------------------------
    def _record(self, req: _Request) -> int:
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
            lambda: _HTTPProtocol(self),
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


def _per_server(value: Any, n: int, name: str) -> list[Any]:
    """Expand one value, or check a sequence of ``n`` values (one per server)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} servers")
        return list(value)
    return [value] * n


class Backend:
    """A set of loopback HTTP/1.1 test servers on a background event loop.

    ::

        with Backend(3, delay_ms=[0, 0, 50]) as backend:
            httpx.get(backend.urls[0] + "/hello?status=503")
            backend[2].set(mode="stall")
            assert backend[0].count == 1

    Per-server arguments take one value for every server or a sequence with
    one value per server.  ``host`` is ``"127.0.0.1"``, ``"::1"`` or a
    sequence of them (one per server).  ``seed`` makes ``fail_pct``
    deterministic (server ``i`` uses ``seed + i``).
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
        host: str | Sequence[str] = "127.0.0.1",
        record_limit: int = 1000,
        seed: int | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a Backend needs at least one server")
        hosts = [host] * n if isinstance(host, str) else _per_server(list(host), n, "host")
        delays = _per_server(delay_ms, n, "delay_ms")
        statuses = _per_server(status, n, "status")
        fails = _per_server(fail_pct, n, "fail_pct")
        fail_statuses = _per_server(fail_status, n, "fail_status")
        retry_afters: list[str | int | None] = (
            [retry_after] * n
            if retry_after is None or isinstance(retry_after, (str, int))
            else _per_server(list(retry_after), n, "retry_after")
        )
        modes: list[Mode] = _per_server(mode if isinstance(mode, str) else list(mode), n, "mode")
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
            )
            self.servers.append(
                Server(
                    self,
                    _check_loopback(hosts[i]),
                    settings,
                    record_limit,
                    None if seed is None else seed + i,
                )
            )

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> Backend:
        """Start the event-loop thread and every server; return ``self``."""
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
        """The server whose ``host:port`` is ``address``."""
        for server in self.servers:
            if server.address == address:
                return server
        raise KeyError(address)

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every server (IPv6 as ``[::1]:port``)."""
        return [s.address for s in self.servers]

    @property
    def urls(self) -> list[str]:
        """``http://host:port`` of every server."""
        return [s.url for s in self.servers]

    @property
    def static_url(self) -> str:
        """A ``static://`` discovery URL naming every server."""
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
        """:meth:`Server.set` on every server."""
        for server in self.servers:
            server.set(**changes)

    def reset_settings(self) -> None:
        """Every server back to healthy and fast; listening again if refused."""
        for server in self.servers:
            server.reset_settings()
            if not server.listening and self.running:
                server.restore()

    def wait_for_count(self, n: int, timeout: float = 5.0) -> bool:
        """Poll until :attr:`count` reaches ``n``; return whether it did."""
        deadline = time.monotonic() + timeout
        while self._total < n:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True


class BackendProcess:
    """The servers of a :class:`Backend` in a child Python process.

    Used by benchmarks so that client and servers do not share one
    interpreter lock.  Behaviour is fixed at start, except through the
    per-request query overrides and :meth:`set`.
    """

    def __init__(
        self,
        n: int = 1,
        *,
        delay_ms: float | Sequence[float] = 0.0,
        fail_pct: float | Sequence[float] = 0.0,
        status: int | Sequence[int] = 200,
        seed: int | None = None,
        cpu: int | None = None,
    ) -> None:
        self._config: dict[str, Any] = {
            "n": n,
            "delay_ms": _per_server(delay_ms, n, "delay_ms"),
            "fail_pct": _per_server(fail_pct, n, "fail_pct"),
            "status": _per_server(status, n, "status"),
            "seed": seed,
            "cpu": cpu,
        }
        self._proc: subprocess.Popen[str] | None = None
        self.addresses: list[str] = []

    @property
    def urls(self) -> list[str]:
        """``http://host:port`` of every server."""
        return [f"http://{a}" for a in self.addresses]

    @property
    def static_url(self) -> str:
        """A ``static://`` discovery URL naming every server."""
        return "static://" + ",".join(self.addresses)

    def start(self) -> BackendProcess:
        """Spawn the child and wait until it listens; return ``self``."""
        # Make sure the child imports this very meshlib (installed or not).
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "meshlib._backend", json.dumps(self._config)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("backend process failed to start")
        self.addresses = list(json.loads(line)["addresses"])
        return self

    def set(self, index: int | None = None, **changes: Any) -> None:
        """:meth:`Server.set` in the child (``index=None``: every server)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("backend process is not running")
        proc.stdin.write(json.dumps({"index": index, "set": changes}) + "\n")
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        if "error" in reply:
            raise ValueError(reply["error"])

    def stop(self) -> None:
        """Ask the child to stop (closing its stdin) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> BackendProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _serve_child(config: dict[str, Any]) -> int:
    cpu = config.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(cpu)})
    backend = Backend(
        int(config["n"]),
        delay_ms=config["delay_ms"],
        fail_pct=config["fail_pct"],
        status=config["status"],
        seed=config.get("seed"),
        record_limit=1,
    )
    with backend:
        print(json.dumps({"addresses": backend.addresses}), flush=True)
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
                index = cmd.get("index")
                targets = backend.servers if index is None else [backend.servers[int(index)]]
                for server in targets:
                    server.set(**cmd["set"])
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                print(json.dumps({"error": str(exc)}), flush=True)
            else:
                print(json.dumps({"ok": True}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run backend servers until stdin closes (``python -m meshlib._backend``).

    With one JSON argument (as :class:`BackendProcess` passes), serve that
    configuration.  Otherwise parse options, print the URLs, and serve.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1 and args[0].startswith("{"):
        return _serve_child(json.loads(args[0]))
    parser = argparse.ArgumentParser(prog="python -m meshlib._backend")
    parser.add_argument("-n", type=int, default=1, help="number of servers")
    parser.add_argument("--delay-ms", type=float, nargs="*", default=[0.0])
    parser.add_argument("--fail-pct", type=float, nargs="*", default=[0.0])
    ns = parser.parse_args(args)

    def fit(values: list[float]) -> float | list[float]:
        return values[0] if len(values) == 1 else values

    with Backend(ns.n, delay_ms=fit(ns.delay_ms), fail_pct=fit(ns.fail_pct)) as backend:
        for url in backend.urls:
            print(url, flush=True)
        print(backend.static_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
