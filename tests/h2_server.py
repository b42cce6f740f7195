"""A real HTTP/2 server on 127.0.0.1 for tests: hypercorn serving a small ASGI app,
over cleartext (h2c, prior knowledge) or TLS (ALPN ``h2``), in a thread of its own.

``GET /`` or ``POST /`` answers JSON naming the HTTP version and the body length;
``?delay_ms=N`` waits N ms before answering. Every request is recorded (method, path,
HTTP version) once it has been read whole.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from hypercorn.asyncio import serve
from hypercorn.config import Config

from servers import free_port

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class H2Server:
    """hypercorn on 127.0.0.1; ``tls`` is ``(certfile, keyfile)`` or ``None`` for h2c."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.requests: list[tuple[str, str, str]] = []
        self._tls = tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="h2-server")

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        version = scope.get("http_version", "")
        self.requests.append((scope["method"], scope["path"], version))
        query = parse_qs(scope.get("query_string", b"").decode())
        delay = float(query.get("delay_ms", ["0"])[0]) / 1000.0
        if delay:
            await asyncio.sleep(delay)
        answer = json.dumps({"http_version": version, "body_bytes": len(body),
                             "method": scope["method"]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def _run(self) -> None:
        config = Config()
        config.bind = [self.address]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 0.5
        if self._tls is not None:
            config.certfile, config.keyfile = self._tls
            config.alpn_protocols = ["h2"]

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await serve(self._app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

        asyncio.run(main())

    def start(self) -> H2Server:
        """Start serving; return once the port accepts connections."""
        self._thread.start()
        self._ready.wait(10.0)
        import socket
        import time
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the HTTP/2 server did not start")

    def stop(self) -> None:
        """Stop serving and join the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "the HTTP/2 server did not stop"

    def __enter__(self) -> H2Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_context(ca_pem: str) -> ssl.SSLContext:
    """An SSL context trusting ``ca_pem`` (for ``verify=``)."""
    return ssl.create_default_context(cafile=ca_pem)
