"""What the endpoint pools of both twins share (`_async/pool.py`, `_sync/pool.py`).

Connection pools pinned to one endpoint, that keep the caller's URL.

Each (service, endpoint) gets an `httpcore` connection pool whose network
backend connects to the endpoint's address whatever host the URL names. The
request keeps `http://SERVICE/...` all the way down, so TLS SNI and the
certificate check use the service name (never the IP), `response.request.url`
is what the caller wrote, and respx mocks keyed on the service URL still
match (respx patches httpcore's pool). httpcore pools by scheme, host and
port, not by endpoint, which is why there is one pool per endpoint.

httpcore's exceptions are mapped to httpx's here, once, to the most
specific type, as httpx's own transport does.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ssl
import sys
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpcore
import httpx

__all__ = [
    "ATTEMPT_LIMIT",
    "PoolSettings",
    "async_attempt_limit",
    "attempt_limit",
    "bounded",
    "clamp",
    "core_request",
    "hidden_error",
    "httpx_error",
    "is_http2",
    "map_httpcore_exceptions",
    "stream_count_broken",
]

_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def httpx_error(exc: Exception) -> httpx.HTTPError | None:
    """The most specific httpx exception for an httpcore one (`None`: not httpcore's).

    Callers write `except Exception as exc` around the httpcore call and raise
    the result `from exc`: a plain `try` costs nothing until something is
    raised, where a `contextmanager` costs a generator on every use.
    """
    for source, target in _EXCEPTIONS:
        if isinstance(exc, source):
            return target(str(exc))
    return None


#: what anyio's and trio's semaphores say when released once too often
_OVER_RELEASED = "semaphore released too many times"


def stream_count_broken(exc: BaseException) -> bool:
    """Whether `exc` is httpcore's HTTP/2 stream count breaking: its stream semaphore
    released once too often while a cancelled or failed stream is cleaned up (the
    family of encode/httpcore#1022). httpcore then raises a bare `ValueError` in
    place of the error it was handling."""
    return isinstance(exc, ValueError) and str(exc).lower() == _OVER_RELEASED


def hidden_error(exc: BaseException) -> BaseException:
    """What to raise for httpcore's broken stream count (`stream_count_broken`): the
    exception its clean-up hid (`__context__`), as httpx's if it is httpcore's, so a
    cancellation stays a cancellation and a timeout a timeout; without one,
    `httpx.RemoteProtocolError`, which counts as possibly sent."""
    context = exc.__context__
    while context is not None and stream_count_broken(context):  # one hid another
        context = context.__context__
    if context is None:
        return httpx.RemoteProtocolError(f"the HTTP/2 connection lost count of its streams "
                                         f"({exc})")
    if isinstance(context, Exception):
        return httpx_error(context) or context
    return context


@contextlib.contextmanager
def map_httpcore_exceptions() -> Iterator[None]:
    """Re-raise httpcore's exceptions as the most specific httpx exception."""
    try:
        yield
    except Exception as exc:
        error = httpx_error(exc)
        if error is None:
            raise
        raise error from exc


#: httpx transport arguments that configure the endpoint pools too
_POOL_KEYS = frozenset({"verify", "cert", "trust_env", "http1", "http2", "limits",
                        "local_address", "socket_options"})


class PoolSettings:
    """What every endpoint pool of a transport shares: one SSL context, limits, HTTP versions."""

    def __init__(self, *, verify: ssl.SSLContext | str | bool = True, cert: Any = None,
                 trust_env: bool = True, http1: bool = True, http2: bool = False,
                 limits: httpx.Limits | None = None, local_address: str | None = None,
                 socket_options: Any = None) -> None:
        self.ssl_context = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        self.http1 = http1
        self.http2 = http2
        #: cleartext connections speak HTTP/2 with prior knowledge (httpcore's h2c)
        self.h2c = http2 and not http1
        self.limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self.local_address = local_address
        self.socket_options = socket_options

    @classmethod
    def split(cls, transport_kwargs: dict[str, Any]) -> tuple[PoolSettings, dict[str, Any]]:
        """Settings for the endpoint pools from httpx transport arguments, and the
        arguments for the pass-through `httpx.HTTPTransport` (sharing the SSL context)."""
        pool = {k: v for k, v in transport_kwargs.items() if k in _POOL_KEYS}
        settings = cls(**pool)
        passthrough = {k: v for k, v in transport_kwargs.items() if k != "cert"}
        passthrough["verify"] = settings.ssl_context
        return settings, passthrough

    def pool_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an httpcore pool."""
        return {
            "ssl_context": self.ssl_context,
            "max_connections": self.limits.max_connections,
            "max_keepalive_connections": self.limits.max_keepalive_connections,
            "keepalive_expiry": self.limits.keepalive_expiry,
            "http1": self.http1,
            "http2": self.http2,
            "local_address": self.local_address,
            "socket_options": self.socket_options,
        }


_CoreRequest = httpcore.Request
_CoreURL = httpcore.URL


def core_request(request: httpx.Request, extensions: dict[str, Any]) -> httpcore.Request:
    """The httpcore request for one attempt of `request` (its URL unchanged).

    The attributes are set directly, as `httpcore.Request.__init__` would set
    them from values httpx has already validated (bytes, a header list, a
    stream): its checks cost about a tenth of an attempt's own work.
    """
    if "target" in extensions:  # httpcore rewrites the target: let it
        return _slow_core_request(request, extensions)
    url = request.url
    core_url = _CoreURL.__new__(_CoreURL)
    core_url.scheme = url.raw_scheme
    core_url.host = url.raw_host
    core_url.port = url.port
    core_url.target = url.raw_path
    core = _CoreRequest.__new__(_CoreRequest)
    core.method = request.method.encode("ascii")
    core.url = core_url
    core.headers = request.headers.raw
    core.stream = request.stream
    core.extensions = extensions
    return core


def _slow_core_request(request: httpx.Request, extensions: dict[str, Any]) -> httpcore.Request:
    url = request.url
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                         target=url.raw_path),
        headers=request.headers.raw,
        content=request.stream,
        extensions=extensions,
    )


#: the time (``time.monotonic()``) by which the current attempt must have its response
#: headers; set around each send, read by the endpoint streams
_ATTEMPT_LIMIT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshlib_attempt_limit", default=None)
ATTEMPT_LIMIT = _ATTEMPT_LIMIT


def bounded(timeout: float | None, exc: type[Exception]) -> float | None:
    """`timeout` shortened to what the attempt has left; raise `exc` if nothing is left.

    Per-operation timeouts alone let a server that trickles its answer a byte at a
    time outlive any deadline; this bounds the whole attempt.
    """
    limit = _ATTEMPT_LIMIT.get()
    if limit is None:
        return timeout
    return clamp(timeout, limit, exc)


def clamp(timeout: float | None, limit: float, exc: type[Exception]) -> float | None:
    """`timeout` shortened to what is left before `limit`; raise `exc` if nothing is.

    The endpoint streams read `ATTEMPT_LIMIT` themselves and call this only when
    it is set (a function call fewer per read and write).
    """
    left = limit - time.monotonic()
    if left <= 0:
        raise exc("the attempt's deadline passed")
    return left if timeout is None or timeout > left else timeout


def is_http2(stream: httpcore.NetworkStream | httpcore.AsyncNetworkStream) -> bool:
    """Whether TLS negotiated HTTP/2. Its connection multiplexes many requests, so one
    request's deadline must not end reads that serve the others: only per-operation
    timeouts apply there (an async attempt's deadline cancels its own request). A
    cleartext HTTP/2 connection (h2c, `http1=False`) is never bounded either."""
    ssl_object = stream.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"




_RESPX = "respx"
#: how long after its limit an async attempt is cancelled as a whole: late enough that
#: the streams' own timeouts (which tell a connect timeout from a read timeout) come first
_CANCEL_SLACK = 0.02
#: ``BaseEventLoop.time`` is ``time.monotonic()``: a limit is a loop time as it is
_MONOTONIC_LOOP_TIME = asyncio.BaseEventLoop.time


class attempt_limit:
    """Bound one sync send: the endpoint streams end their reads and writes at `limit_at`.

    A thread cannot be interrupted, so only I/O through meshlib's own network
    streams is bounded: a mocked httpcore pool (respx) or a custom transport
    that blocks is waited for until it returns.
    """

    __slots__ = ("_limit_at", "_token")

    def __init__(self, limit_at: float | None, *, bounded: bool = False) -> None:
        # `bounded`: the async twin's; a thread has no send to cancel
        self._limit_at = limit_at

    def __enter__(self) -> None:
        self._token = _ATTEMPT_LIMIT.set(self._limit_at)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _ATTEMPT_LIMIT.reset(self._token)


class async_attempt_limit:
    """Bound one async send until its response headers, as a whole, at `limit_at`.

    The endpoint streams end their reads and writes at the limit (as in the
    sync twin); and the send itself is cancelled shortly after it, which also
    ends an attempt that never touches a socket (a respx mock whose side
    effect sleeps, say). That raises `httpx.ReadTimeout`.

    This is `asyncio.timeout_at` cut down to one timer handle: it runs on
    every attempt, and costs about half as much. `bounded`: every wait the
    pool's send can make (for a pooled connection, the connect, TLS, each read
    and write) has a timeout clamped to the limit, so the timer could only fire
    after one of them and none is armed, unless respx is loaded (it replaces
    the pool's send: a mock's side effect touches no stream).
    """

    __slots__ = ("_bound", "_cancelling", "_expired", "_handle", "_limit_at", "_task",
                 "_token")

    def __init__(self, limit_at: float | None, *, bounded: bool = False) -> None:
        self._limit_at = None if bounded and _RESPX not in sys.modules else limit_at
        self._bound = limit_at
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> None:
        self._token = _ATTEMPT_LIMIT.set(self._bound)
        task = asyncio.current_task()
        if self._limit_at is None or task is None:
            return
        self._task = task
        if sys.version_info >= (3, 11):
            self._cancelling = task.cancelling()
        loop = asyncio.get_running_loop()
        if type(loop).time is _MONOTONIC_LOOP_TIME:  # asyncio's own loops: the same clock
            when = self._limit_at + _CANCEL_SLACK
        else:
            when = loop.time() + (self._limit_at - time.monotonic()) + _CANCEL_SLACK
        self._handle = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        _ATTEMPT_LIMIT.reset(self._token)
        if self._handle is None:
            return
        self._handle.cancel()
        if self._expired and exc_type is asyncio.CancelledError and self._ours():
            raise httpx.ReadTimeout("the attempt's deadline passed") from None

    def _ours(self) -> bool:
        """Withdraw our cancellation; whether it was the only one (else the caller's
        cancellation goes on)."""
        if sys.version_info >= (3, 11):
            return self._task.uncancel() <= self._cancelling
        return True  # Python 3.10 cannot tell two cancellations apart
