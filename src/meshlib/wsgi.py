"""Server-side deadline propagation for WSGI applications.

The WSGI twin of `meshlib.asgi`: wrap a WSGI application (Flask, Django,
Bottle, a bare callable) in `MeshMiddleware` and each request that
carries `x-mesh-timeout-ms` (`HTTP_X_MESH_TIMEOUT_MS`), `grpc-timeout`
(`HTTP_GRPC_TIMEOUT`) or Envoy's `x-envoy-expected-rq-timeout-ms`
(`HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS`) runs inside `meshlib.deadline`, so the mesh
requests it makes inherit what is left of the caller's deadline:

```
from meshlib.wsgi import MeshMiddleware

app.wsgi_app = MeshMiddleware(app.wsgi_app, snapshot_path="/_mesh")
```

Header rules are those of `meshlib.asgi` (earliest deadline wins;
malformed or negative values are ignored with a DEBUG log on the
`meshlib.wsgi` logger; `0` still calls the application).

Mesh errors are answered as in `meshlib.asgi`: a
`meshlib.DeadlineExceeded` that escapes the application becomes
`504 Gateway Timeout`, any other `meshlib.MeshError` ``503 Service
Unavailable` (short `text/plain`` body, logged at WARNING on the
`meshlib.wsgi` logger once per cause), whether it is raised when the
application is called or while its body is produced, as long as no byte of
the response has been sent. `MeshMiddleware(app, map_errors=False)` lets
them propagate. Flask and Django turn every exception into their own 500
page before a wrapper sees it: set Flask's `PROPAGATE_EXCEPTIONS = True`
to let mesh errors reach the middleware.

How the scope covers the response body: a WSGI application does part of its
work when it is called and the rest while the server iterates the returned
iterable (a generator body runs only then), possibly after the middleware has
returned. The middleware therefore copies the current
`contextvars` context, enters the deadline in that copy, and runs the
application call and every `next()` and `close()` on the response
iterable inside it with `contextvars.Context.run()`. The deadline is an
absolute time fixed once, when the request arrives, so time spent between
chunks counts against it; context variables the application sets while being
called stay visible while its body is produced; and nothing leaks into the
server's own context. A list or `wsgi.file_wrapper` response is passed on
as it is (a file keeps the server's fast path); with `map_errors=False`,
requests without a deadline header are passed to the application unwrapped.

Added in version 0.1.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._error_pages import ErrorLog, error_page
from ._headers import DEADLINE_HEADER, ENVOY_TIMEOUT_HEADER, GRPC_TIMEOUT_HEADER
from ._middleware import SNAPSHOT_METHODS, SupportsSnapshot, parse_deadline, snapshot_body
from ._registry import client_list, snapshot_sources
from ._scope import deadline, header_source

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MeshMiddleware"]

logger = logging.getLogger("meshlib.wsgi")


def _environ_key(header: str) -> str:
    """The WSGI environ key of a request header (`HTTP_X_MESH_TIMEOUT_MS`)."""
    return "HTTP_" + header.upper().replace("-", "_")


_DEADLINE_KEY = _environ_key(DEADLINE_HEADER)
_GRPC_TIMEOUT_KEY = _environ_key(GRPC_TIMEOUT_HEADER)
_ENVOY_TIMEOUT_KEY = _environ_key(ENVOY_TIMEOUT_HEADER)


class _ScopedResponse:
    """A response iterable whose iteration and `close()` run in a given context."""

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


def _call(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`: `contextvars.Context.run()` for a request without a context."""
    return function(*args)


def _close(run: Callable[..., Any], result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        run(close)


class _FirstThen:
    """The response iterable after its first chunk was produced: that chunk, then the
    rest, each `next()` and `close()` run by `run` (in the request's context)."""

    __slots__ = ("_first", "_iterator", "_result", "_run")

    def __init__(self, run: Callable[..., Any], first: bytes, iterator: Iterator[bytes],
                 result: Iterable[bytes]) -> None:
        self._run = run
        self._first: bytes | None = first
        self._iterator = iterator
        self._result = result

    def __iter__(self) -> _FirstThen:
        return self

    def __next__(self) -> bytes:
        first = self._first
        if first is not None:
            self._first = None
            return first
        chunk: bytes = self._run(next, self._iterator)
        return chunk

    def close(self) -> None:
        """Close the application's iterable (in the request's context) if it can be."""
        _close(self._run, self._result)


class MeshMiddleware:
    """WSGI middleware: run each request, body included, inside the caller's mesh deadline.

    `app` is any WSGI application. `snapshot_path` (off by default) serves
    `{"services": ...}` as `application/json` on a `GET` to exactly that
    `PATH_INFO`; any request to that path is answered by the middleware and
    never reaches `app` (other methods get 405). With `clients=None` (the
    default) it shows every `MeshClient` and `AsyncMeshClient` open in the
    process when the request arrives, including those built after the
    middleware; with a list, only those objects (the list is kept, not copied,
    as `clients`). See `meshlib.asgi.MeshMiddleware`.

    `map_errors=True` (the default) answers a `DeadlineExceeded` that
    escapes `app` with 504 and any other `MeshError` with 503;
    `map_errors=False` lets them propagate.

    Added in version 0.1.
    Changed in version 0.3: Mesh errors that escape the application are answered 504 or 503
    (`map_errors`).
    """

    def __init__(self, app: WSGIApplication, *, snapshot_path: str | None = None,
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

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        """Serve one WSGI request."""
        if self.snapshot_path is not None and environ.get("PATH_INFO") == self.snapshot_path:
            return self._serve_snapshot(environ, start_response)
        mesh = environ.get(_DEADLINE_KEY)
        grpc = environ.get(_GRPC_TIMEOUT_KEY)
        envoy = environ.get(_ENVOY_TIMEOUT_KEY)
        if mesh is None and grpc is None and envoy is None:
            if self.map_errors:
                return self._mapped(None, environ, start_response)
            return self.app(environ, start_response)
        seconds = parse_deadline(() if mesh is None else (str(mesh),),
                                 () if grpc is None else (str(grpc),),
                                 envoy_timeout_ms=() if envoy is None else (str(envoy),),
                                 log=logger)
        if seconds is None:
            if self.map_errors:
                return self._mapped(None, environ, start_response)
            return self.app(environ, start_response)
        context = contextvars.copy_context()
        # Entered in the copy and never exited there: the copy is this request's
        # own context and is dropped with the response.
        context.run(deadline(seconds, source=header_source(mesh is not None, grpc is not None,
                                                           envoy is not None)).__enter__)
        if self.map_errors:
            return self._mapped(context, environ, start_response)
        return _ScopedResponse(context, context.run(self.app, environ, start_response))

    def _mapped(self, context: contextvars.Context | None, environ: WSGIEnvironment,
                start_response: StartResponse) -> Iterable[bytes]:
        """Call the application (in `context`, if given) and produce its first chunk;
        answer a mesh error raised before any of the body was produced."""
        run: Callable[..., Any] = context.run if context is not None else _call
        try:
            result: Iterable[bytes] = run(self.app, environ, start_response)
        except Exception as exc:
            return self._answer(exc, environ, start_response)
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(result, (list, tuple)) or (isinstance(wrapper, type)
                                                 and type(result) is wrapper):
            # nothing of the application runs while these are sent (and a file
            # keeps the server's fast path)
            return result if context is None else _ScopedResponse(context, result)
        try:
            iterator: Iterator[bytes] = run(iter, result)
            first: bytes = run(next, iterator)
        except StopIteration:
            _close(run, result)
            return []
        except Exception as exc:
            _close(run, result)
            return self._answer(exc, environ, start_response)
        return _FirstThen(run, first, iterator, result)

    def _answer(self, exc: Exception, environ: WSGIEnvironment,
                start_response: StartResponse) -> list[bytes]:
        page = error_page(exc)
        if page is None:
            raise exc
        self._errors.log(exc, page)
        # exc_info lets a server replace headers already given by the application
        start_response(page.status_line, [("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(page.body)))],
                       sys.exc_info())
        return [] if str(environ.get("REQUEST_METHOD", "GET")).upper() == "HEAD" else [page.body]

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
