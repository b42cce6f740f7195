"""Server-side deadline propagation for ASGI applications.

Wrap an ASGI application in :class:`MeshMiddleware` and every HTTP request that
carries a deadline header runs inside :class:`meshlib.deadline`, so every mesh
request the handler makes (with :class:`meshlib.MeshClient` or
:class:`meshlib.AsyncMeshClient`) inherits what is left of the caller's
deadline::

    from meshlib.asgi import MeshMiddleware

    app = MeshMiddleware(app, snapshot_path="/_mesh")  # shows every open mesh client

Headers read (all optional; when several are present the earliest deadline wins):

* ``x-mesh-timeout-ms``: whole milliseconds left, as meshlib clients send it;
* ``grpc-timeout``: the gRPC format, 1 to 8 digits and a unit ``H`` (hours),
  ``M`` (minutes), ``S`` (seconds), ``m`` (milliseconds), ``u`` (microseconds)
  or ``n`` (nanoseconds), e.g. ``250m``;
* ``x-envoy-expected-rq-timeout-ms``: whole milliseconds, as an Envoy sidecar
  (Istio) sets it on the requests it forwards to the application.

A malformed or negative value is ignored and logged at DEBUG level on the
``meshlib.asgi`` logger; the request is served as if the header were absent.
A value of ``0`` still calls the application: its mesh requests then fail fast
with :class:`meshlib.DeadlineExceeded`.

The middleware has no dependency beyond the standard library and meshlib: it
works with Starlette, FastAPI, Quart or a bare ASGI callable. Only ``http``
scopes are affected; ``websocket`` and ``lifespan`` scopes pass through
untouched (a websocket session is long-lived, a request deadline does not fit it).

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._headers import DEADLINE_HEADER, ENVOY_TIMEOUT_HEADER, GRPC_TIMEOUT_HEADER
from ._middleware import SNAPSHOT_METHODS, SupportsSnapshot, parse_deadline, snapshot_body
from ._registry import client_list, snapshot_sources
from ._scope import current_deadline, deadline, header_source, release_deadline

__all__ = ["ENVOY_TIMEOUT_HEADER", "GRPC_TIMEOUT_HEADER", "MeshMiddleware", "SupportsSnapshot",
           "parse_deadline"]

logger = logging.getLogger("meshlib.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DEADLINE = DEADLINE_HEADER.encode()
_GRPC_TIMEOUT = GRPC_TIMEOUT_HEADER.encode()
_ENVOY_TIMEOUT = ENVOY_TIMEOUT_HEADER.encode()

class MeshMiddleware:
    """ASGI middleware: run each HTTP request inside the caller's mesh deadline.

    ``app`` is any ASGI 3 application. ``snapshot_path`` (off by default)
    serves ``{"services": ...}`` as ``application/json`` on a ``GET`` to
    exactly that path; any request to that path is answered by the middleware
    and never reaches ``app`` (other methods get 405).

    What the snapshot shows:

    * ``clients=None`` (the default): every ``MeshClient`` and
      ``AsyncMeshClient`` open in the process at the time of the request,
      including those built after the middleware (in a FastAPI lifespan
      handler, say, with ``app.add_middleware(MeshMiddleware, ...)``). They
      are held weakly: a closed or collected client drops out.
    * ``clients=[...]``: only those objects (clients or transports), merged.
      A list is kept as it is, not copied, as :attr:`clients`: append to it
      (or to your own list) later and the endpoint sees the addition.

    A service name seen in more than one client appears as ``name``,
    ``name#2``, ... Each endpoint's ``ewma_ms`` is the balancer's latency
    estimate, in which a failure counts as a slow sample (about 1000 ms): a
    fast-failing endpoint reads high on purpose. It is a penalty, not a
    measured latency.

    Only expose ``snapshot_path`` where its audience may see your topology:
    it lists service names, endpoint addresses and their health.

    .. versionadded:: 0.1
    """

    def __init__(self, app: ASGIApp, *, snapshot_path: str | None = None,
                 clients: Iterable[SupportsSnapshot] | None = None) -> None:
        if snapshot_path is not None and not snapshot_path.startswith("/"):
            raise ValueError(f"snapshot_path must start with '/', got {snapshot_path!r}")
        self.app = app
        self.snapshot_path = snapshot_path
        self.clients: list[SupportsSnapshot] | None = client_list(clients)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.snapshot_path is not None and scope.get("path") == self.snapshot_path:
            await self._serve_snapshot(scope, send)
            return
        seconds, source = self._deadline(scope)
        if seconds is None:
            await self.app(scope, receive, send)
            return
        # Same task as the application: the contextvar is visible to it, and to
        # every task it starts (they copy the context). Once the last body chunk
        # has been sent, the caller is answered: work that goes on in this task
        # (Starlette's background tasks) gets the outer deadline back.
        outer = current_deadline()

        async def send_and_release(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                release_deadline(outer)

        with deadline(seconds, source=source):
            await self.app(scope, receive, send_and_release)

    @staticmethod
    def _deadline(scope: Scope) -> tuple[float | None, str]:
        mesh: list[str] = []
        grpc: list[str] = []
        envoy: list[str] = []
        for raw_name, raw_value in scope.get("headers") or ():
            name = bytes(raw_name).lower()
            if name == _DEADLINE:
                mesh.append(bytes(raw_value).decode("latin-1"))
            elif name == _GRPC_TIMEOUT:
                grpc.append(bytes(raw_value).decode("latin-1"))
            elif name == _ENVOY_TIMEOUT:
                envoy.append(bytes(raw_value).decode("latin-1"))
        if not mesh and not grpc and not envoy:
            return None, ""
        return (parse_deadline(mesh, grpc, envoy_timeout_ms=envoy, log=logger),
                header_source(bool(mesh), bool(grpc), bool(envoy)))

    async def _serve_snapshot(self, scope: Scope, send: Send) -> None:
        method = str(scope.get("method", "GET")).upper()
        if method not in SNAPSHOT_METHODS:
            body = json.dumps({"error": "method not allowed"}).encode()
            await _respond(send, 405, body, [(b"allow", b"GET, HEAD")], head=False)
            return
        status, body = snapshot_body(snapshot_sources(self.clients), logger)
        await _respond(send, status, body, [(b"cache-control", b"no-store")],
                       head=method == "HEAD")


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]],
                   *, head: bool) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
