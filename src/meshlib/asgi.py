"""Server-side deadline propagation for ASGI applications.

Wrap an ASGI application in `MeshMiddleware` and every HTTP request that
carries a deadline header runs inside `meshlib.deadline`, so every mesh
request the handler makes (with `meshlib.MeshClient` or
`meshlib.AsyncMeshClient`) inherits what is left of the caller's
deadline:

```
from meshlib.asgi import MeshMiddleware

app = MeshMiddleware(app, snapshot_path="/_mesh")  # shows every open mesh client
```

Headers read (all optional; when several are present the earliest deadline wins):

* `x-mesh-timeout-ms`: whole milliseconds left, as meshlib clients send it;
* `grpc-timeout`: the gRPC format, 1 to 8 digits and a unit `H` (hours),
  `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds)
  or `n` (nanoseconds), e.g. `250m`;
* `x-envoy-expected-rq-timeout-ms`: whole milliseconds, as an Envoy sidecar
  (Istio) sets it on the requests it forwards to the application.

A malformed or negative value is ignored and logged at DEBUG level on the
`meshlib.asgi` logger; the request is served as if the header were absent.
A value of `0` still calls the application: its mesh requests then fail fast
with `meshlib.DeadlineExceeded`.

Mesh errors are answered as a sidecar would answer them: a
`meshlib.DeadlineExceeded` that escapes the application becomes
`504 Gateway Timeout`, any other `meshlib.MeshError` (no endpoints,
circuit open, no route) `503 Service Unavailable`, each with a short
`text/plain` body, and is logged at WARNING on the `meshlib.asgi` logger
once per cause (repeats at DEBUG). Other exceptions propagate unchanged, and
so does a mesh error raised after the response has started.
`MeshMiddleware(app, map_errors=False)` lets mesh errors propagate too.
A `500` response the application sends itself is held back until the
application returns (up to 64 KiB of body), so a framework's error page
(Starlette's, when the middleware wraps a whole Starlette or FastAPI
application) gives way to the mesh error's answer.

The middleware has no dependency beyond the standard library and meshlib: it
works with Starlette, FastAPI, Quart or a bare ASGI callable. Only `http`
scopes are affected; `websocket` and `lifespan` scopes pass through
untouched (a websocket session is long-lived, a request deadline does not fit it).

Added in version 0.1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._error_pages import ErrorLog, error_page
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

    `app` is any ASGI 3 application. `snapshot_path` (off by default)
    serves `{"services": ...}` as `application/json` on a `GET` to
    exactly that path; any request to that path is answered by the middleware
    and never reaches `app` (other methods get 405).

    What the snapshot shows:

    * `clients=None` (the default): every `MeshClient` and
      `AsyncMeshClient` open in the process at the time of the request,
      including those built after the middleware (in a FastAPI lifespan
      handler, say, with `app.add_middleware(MeshMiddleware, ...)`). They
      are held weakly: a closed or collected client drops out.
    * `clients=[...]`: only those objects (clients or transports), merged.
      A list is kept as it is, not copied, as `clients`: append to it
      (or to your own list) later and the endpoint sees the addition.

    A service name seen in more than one client appears as `name`,
    `name#2`, ... Each endpoint's `ewma_ms` is the balancer's latency
    estimate, in which a failure counts as a slow sample (about 1000 ms): a
    fast-failing endpoint reads high on purpose. It is a penalty, not a
    measured latency.

    Only expose `snapshot_path` where its audience may see your topology:
    it lists service names, endpoint addresses and their health.

    `map_errors=True` (the default) answers a `DeadlineExceeded` that
    escapes `app` with 504 and any other `MeshError` with 503, before the
    response has started; `map_errors=False` lets them propagate.

    Added in version 0.1.
    Changed in version 0.3: Mesh errors that escape the application are answered 504 or 503
    (`map_errors`).
    """

    def __init__(self, app: ASGIApp, *, snapshot_path: str | None = None,
                 clients: Iterable[SupportsSnapshot] | None = None,
                 map_errors: bool = True) -> None:
        if snapshot_path is not None and not snapshot_path.startswith("/"):
            raise ValueError(f"snapshot_path must start with '/', got {snapshot_path!r}")
        self.app = app
        self.snapshot_path = snapshot_path
        self.clients: list[SupportsSnapshot] | None = client_list(clients)
        #: whether escaping mesh errors are answered 504/503 (see the module docstring)
        self.map_errors = map_errors
        self._errors = ErrorLog(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.snapshot_path is not None and scope.get("path") == self.snapshot_path:
            await self._serve_snapshot(scope, send)
            return
        seconds, source = self._deadline(scope)
        app = self._mapped if self.map_errors else self.app
        if seconds is None:
            await app(scope, receive, send)
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
            await app(scope, receive, send_and_release)

    async def _mapped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application; answer a mesh error it raises before responding."""
        watch = _ResponseWatch(send)
        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            page = error_page(exc)
            if page is None or watch.started:
                await watch.flush()
                raise
            watch.drop()
            self._errors.log(exc, page)
            head = str(scope.get("method", "GET")).upper() == "HEAD"
            await _respond(send, page.status, page.body, [], head=head,
                           content_type=b"text/plain; charset=utf-8")
            return
        await watch.flush()

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


class _ResponseWatch:
    """The `send` of one request: notes whether the response has started, and holds
    back a `500` response until the application returns.

    An application's own error handler (Starlette's `ServerErrorMiddleware`, when
    the middleware wraps the whole application) sends its 500 page and then
    re-raises: held back, that page can still give way to the 504 or 503 of a
    mesh error. Held up to 64 KiB of body, then sent on.
    """

    __slots__ = ("_held", "_send", "_size", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._held: list[Message] | None = None
        self._size = 0
        self.started = False

    async def __call__(self, message: Message) -> None:
        held = self._held
        if held is not None:
            held.append(message)
            self._size += len(message.get("body", b""))
            if self._size > _HOLD_LIMIT:
                await self.flush()
            return
        if message["type"] == "http.response.start" and not self.started:
            if message.get("status") == 500:
                self._held = [message]
                return
            self.started = True
        await self._send(message)

    async def flush(self) -> None:
        """Send what was held back (the application finished, or raised something else)."""
        held, self._held = self._held, None
        if held:
            self.started = True
            for message in held:
                await self._send(message)

    def drop(self) -> None:
        """Forget what was held back: a mesh error's answer replaces it."""
        self._held = None


#: body bytes of a 500 response held back before it is sent on anyway
_HOLD_LIMIT = 64 * 1024


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]],
                   *, head: bool, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type),
               (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
