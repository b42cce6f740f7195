"""Server-side deadline propagation for WSGI applications.

The WSGI twin of :mod:`meshlib.asgi`: wrap a WSGI application (Flask, Django,
Bottle, a bare callable) in :class:`MeshMiddleware` and each request that
carries ``x-mesh-timeout-ms`` (``HTTP_X_MESH_TIMEOUT_MS``), ``grpc-timeout``
(``HTTP_GRPC_TIMEOUT``) or Envoy's ``x-envoy-expected-rq-timeout-ms``
(``HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS``) runs inside :class:`meshlib.deadline`, so the mesh
requests it makes inherit what is left of the caller's deadline::

    from meshlib.wsgi import MeshMiddleware

    app.wsgi_app = MeshMiddleware(app.wsgi_app, snapshot_path="/_mesh")

Header rules are those of :mod:`meshlib.asgi` (earliest deadline wins;
malformed or negative values are ignored with a DEBUG log on the
``meshlib.wsgi`` logger; ``0`` still calls the application).

How the scope covers the response body: a WSGI application does part of its
work when it is called and the rest while the server iterates the returned
iterable (a generator body runs only then), possibly after the middleware has
returned. The middleware therefore copies the current
:mod:`contextvars` context, enters the deadline in that copy, and runs the
application call and every ``next()`` and ``close()`` on the response
iterable inside it with :meth:`contextvars.Context.run`. The deadline is an
absolute time fixed once, when the request arrives, so time spent between
chunks counts against it; context variables the application sets while being
called stay visible while its body is produced; and nothing leaks into the
server's own context. Requests without a deadline header are passed to the
application unwrapped (no overhead, ``wsgi.file_wrapper`` responses keep
their fast path).

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ._headers import DEADLINE_HEADER, ENVOY_TIMEOUT_HEADER, GRPC_TIMEOUT_HEADER
from ._middleware import SNAPSHOT_METHODS, SupportsSnapshot, parse_deadline, snapshot_body
from ._registry import client_list, snapshot_sources
from ._scope import deadline, header_source

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MeshMiddleware"]

logger = logging.getLogger("meshlib.wsgi")


def _environ_key(header: str) -> str:
    """The WSGI environ key of a request header (``HTTP_X_MESH_TIMEOUT_MS``)."""
    return "HTTP_" + header.upper().replace("-", "_")


_DEADLINE_KEY = _environ_key(DEADLINE_HEADER)
_GRPC_TIMEOUT_KEY = _environ_key(GRPC_TIMEOUT_HEADER)
_ENVOY_TIMEOUT_KEY = _environ_key(ENVOY_TIMEOUT_HEADER)


class _ScopedResponse:
    """A response iterable whose iteration and ``close()`` run in a given context."""

    __slots__ = ("_context", "_iterator", "_result")

    def __init__(self, context: contextvars.Context, result: Iterable[bytes]) -> None:
        self._context = context
        self._result = result
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> _ScopedResponse:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._result)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        """Close the application's iterable (in the request's context) if it can be."""
        close = getattr(self._result, "close", None)
        if close is not None:
            self._context.run(close)


class MeshMiddleware:
    """WSGI middleware: run each request, body included, inside the caller's mesh deadline.

    ``app`` is any WSGI application. ``snapshot_path`` (off by default) serves
    ``{"services": ...}`` as ``application/json`` on a ``GET`` to exactly that
    ``PATH_INFO``; any request to that path is answered by the middleware and
    never reaches ``app`` (other methods get 405). With ``clients=None`` (the
    default) it shows every ``MeshClient`` and ``AsyncMeshClient`` open in the
    process when the request arrives, including those built after the
    middleware; with a list, only those objects (the list is kept, not copied,
    as :attr:`clients`). See :class:`meshlib.asgi.MeshMiddleware`.

    .. versionadded:: 0.1
    """

    def __init__(self, app: WSGIApplication, *, snapshot_path: str | None = None,
                 clients: Iterable[SupportsSnapshot] | None = None) -> None:
        if snapshot_path is not None and not snapshot_path.startswith("/"):
            raise ValueError(f"snapshot_path must start with '/', got {snapshot_path!r}")
        self.app = app
        self.snapshot_path = snapshot_path
        self.clients: list[SupportsSnapshot] | None = client_list(clients)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        """Serve one WSGI request."""
        if self.snapshot_path is not None and environ.get("PATH_INFO") == self.snapshot_path:
            return self._serve_snapshot(environ, start_response)
        mesh = environ.get(_DEADLINE_KEY)
        grpc = environ.get(_GRPC_TIMEOUT_KEY)
        envoy = environ.get(_ENVOY_TIMEOUT_KEY)
        if mesh is None and grpc is None and envoy is None:
            return self.app(environ, start_response)
        seconds = parse_deadline(() if mesh is None else (str(mesh),),
                                 () if grpc is None else (str(grpc),),
                                 envoy_timeout_ms=() if envoy is None else (str(envoy),),
                                 log=logger)
        if seconds is None:
            return self.app(environ, start_response)
        context = contextvars.copy_context()
        # Entered in the copy and never exited there: the copy is this request's
        # own context and is dropped with the response.
        context.run(deadline(seconds, source=header_source(mesh is not None, grpc is not None,
                                                           envoy is not None)).__enter__)
        return _ScopedResponse(context, context.run(self.app, environ, start_response))

    def _serve_snapshot(self, environ: WSGIEnvironment,
                        start_response: StartResponse) -> list[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method not in SNAPSHOT_METHODS:
            body = json.dumps({"error": "method not allowed"}).encode()
            start_response("405 Method Not Allowed", [
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                ("Allow", "GET, HEAD"),
            ])
            return [body]
        status, body = snapshot_body(snapshot_sources(self.clients), logger)
        start_response("200 OK" if status == 200 else "500 Internal Server Error", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ])
        return [] if method == "HEAD" else [body]
