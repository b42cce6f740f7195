"""The loopback backend's behaviour: one asyncio protocol per connection.

It reads requests (`.parsing`), records each on its
`Server`, then acts on the server's current settings: stall,
drop or reset the connection, or answer (after a delay, possibly with the
error status and `Retry-After`) with a JSON body naming the endpoint.
Refusing connections is the listener's job (`.control.Server.refuse()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
from typing import Protocol
from urllib.parse import parse_qsl

from .parsing import NO_BODY_STATUSES, REASONS, BadRequest, Request, parse_request, reason
from .settings import Mode, ServerSettings

_MODES: dict[str, Mode] = {"normal": "normal", "close": "close", "reset": "reset", "stall": "stall"}

__all__ = ["HTTPProtocol", "Served"]


class Served(Protocol):
    """What a connection needs of the server that accepted it (`Server`)."""

    _connections: set[HTTPProtocol]
    _stalled: set[HTTPProtocol]
    _settings: ServerSettings
    _random: random.Random
    _backend_header: bytes

    @property
    def address(self) -> str: ...

    def _record(self, req: Request) -> int: ...

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop: ...


class HTTPProtocol(asyncio.Protocol):
    """One server-side HTTP/1.1 connection (keep-alive, pipelining-safe)."""

    def __init__(self, server: Served) -> None:
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
        # Half-closed by the client: finish what is pending, then close. A stalled
        # connection has nothing pending: the client gave up, so close it now (else it
        # would sit in CLOSE_WAIT until the server stops).
        self._eof = True
        stalled = self in self._server._stalled
        if (stalled or not self._busy) and self._transport is not None:
            self._closing = True
            self._server._stalled.discard(self)
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
                req = parse_request(self._buf, self._maybe_continue)
            except BadRequest as exc:
                self._write_error(400, str(exc))
                return
            if req is None:
                return
            self._sent_continue = False
            self._handle(req)

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if (
            not self._sent_continue
            and headers.get("expect", "").lower() == "100-continue"
            and self._transport is not None
        ):
            self._sent_continue = True
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- answering ---------------------------------------------------------
    def _handle(self, req: Request) -> None:
        server = self._server
        n = server._record(req)
        settings = server._settings
        mode: Mode = settings.mode
        if req.query and settings.query_overrides and "mode=" in req.query:
            # a per-request fault (``?mode=close``): one route that drops, beside healthy ones
            for key, value in parse_qsl(req.query):
                if key == "mode" and value in _MODES:
                    mode = _MODES[value]
        if mode == "normal" and settings.drop_pct > 0 and (
            server._random.random() * 100.0 < settings.drop_pct
        ):
            mode = "close"
        if mode != "normal":
            if mode == "stall":
                self._busy = True
                server._stalled.add(self)
            elif mode == "close":
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
        if req.query and settings.query_overrides:
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
        if status not in NO_BODY_STATUSES and not 100 <= status < 200:
            body = json.dumps(
                {
                    "endpoint": server.address,
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
        phrase = REASONS.get(status) or reason(status).encode()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, phrase),
            server._backend_header,
            b"Content-Type: application/json\r\n",
        ]
        if status not in NO_BODY_STATUSES:
            head.append(b"Content-Length: %d\r\n" % len(body))
        if retry_after is not None and status >= 400:
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
            % (status, reason(status).encode(), self._server._backend_header, len(body), body)
        )
        self._send(payload, keep_alive=False)

