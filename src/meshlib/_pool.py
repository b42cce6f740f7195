"""Connection pools pinned to one endpoint, that keep the caller's URL.

Each (service, endpoint) gets an ``httpcore`` connection pool whose network
backend connects to the endpoint's address whatever host the URL names. The
request keeps ``http://SERVICE/...`` all the way down, so TLS SNI and the
certificate check use the service name (never the IP), ``response.request.url``
is what the caller wrote, and respx mocks keyed on the service URL still
match (respx patches httpcore's pool). httpcore pools by scheme, host and
port, not by endpoint, which is why there is one pool per endpoint.

httpcore's exceptions are mapped to httpx's here, once, to the most
specific type, as httpx's own transport does.
"""

from __future__ import annotations

import contextlib
import contextvars
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpcore
import httpx
from httpcore._backends.auto import AutoBackend  # public in httpcore's docs, not exported

__all__ = [
    "AsyncEndpointPool",
    "EndpointPool",
    "PoolSettings",
    "map_httpcore_exceptions",
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


@contextlib.contextmanager
def map_httpcore_exceptions() -> Iterator[None]:
    """Re-raise httpcore's exceptions as the most specific httpx exception."""
    try:
        yield
    except Exception as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


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
        self.limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self.local_address = local_address
        self.socket_options = socket_options

    @classmethod
    def split(cls, transport_kwargs: dict[str, Any]) -> tuple[PoolSettings, dict[str, Any]]:
        """Settings for the endpoint pools from httpx transport arguments, and the
        arguments for the pass-through ``httpx.HTTPTransport`` (sharing the SSL context)."""
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


def _core_request(request: httpx.Request, extensions: dict[str, Any]) -> httpcore.Request:
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=request.stream,
        extensions=extensions,
    )


#: the time (``time.monotonic()``) by which the current attempt must have its response
#: headers; set around each send, read by the endpoint streams
_ATTEMPT_LIMIT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshlib_attempt_limit", default=None)


def _bounded(timeout: float | None, exc: type[Exception]) -> float | None:
    """``timeout`` shortened to what the attempt has left; raise ``exc`` if nothing is left.

    Per-operation timeouts alone let a server that trickles its answer a byte at a
    time outlive any deadline; this bounds the whole attempt.
    """
    limit = _ATTEMPT_LIMIT.get()
    if limit is None:
        return timeout
    left = limit - time.monotonic()
    if left <= 0:
        raise exc("the attempt's deadline passed")
    return left if timeout is None or timeout > left else timeout


def _is_http2(stream: httpcore.NetworkStream | httpcore.AsyncNetworkStream) -> bool:
    """Whether TLS negotiated HTTP/2. Its connection multiplexes many requests, so one
    request's deadline must not end reads that serve the others: only per-operation
    timeouts apply there."""
    ssl_object = stream.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"


class _BoundedStream(httpcore.NetworkStream):
    """A connection whose reads and writes end when the attempt's deadline does."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(
            ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        return stream if _is_http2(stream) else _BoundedStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _AsyncBoundedStream(httpcore.AsyncNetworkStream):
    """The async twin of :class:`_BoundedStream`."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        stream = await self._stream.start_tls(
            ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        return stream if _is_http2(stream) else _AsyncBoundedStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore.SyncBackend):
    """Connects to one endpoint whatever host the URL names."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return _BoundedStream(super().connect_tcp(
            self.host, self.port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))


class _AsyncPinnedBackend(AutoBackend):
    """Connects to one endpoint whatever host the URL names (asyncio or trio)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return _AsyncBoundedStream(await super().connect_tcp(
            self.host, self.port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))


class _ResponseStream(httpx.SyncByteStream):
    """The response body; calls ``on_close`` once when the body is closed."""

    __slots__ = ("_on_close", "_stream")

    def __init__(self, stream: Iterable[bytes], on_close: Callable[[], None] | None) -> None:
        self._stream = stream
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        with map_httpcore_exceptions():
            yield from self._stream

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


class _AsyncResponseStream(httpx.AsyncByteStream):
    """The async response body; calls ``on_close`` once when the body is closed."""

    __slots__ = ("_on_close", "_stream")

    def __init__(self, stream: Any, on_close: Callable[[], None] | None) -> None:
        self._stream = stream
        self._on_close = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_httpcore_exceptions():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


class EndpointPool:
    """A sync connection pool to one endpoint of one service."""

    def __init__(self, host: str, port: int, settings: PoolSettings) -> None:
        self._pool = httpcore.ConnectionPool(network_backend=_PinnedBackend(host, port),
                                             **settings.pool_kwargs())

    def send(self, request: httpx.Request, extensions: dict[str, Any],
             on_close: Callable[[], None] | None = None,
             limit_at: float | None = None) -> httpx.Response:
        """Send ``request`` (its URL unchanged) to the endpoint; with ``limit_at``, the
        response headers must arrive by then (``time.monotonic()``)."""
        token = _ATTEMPT_LIMIT.set(limit_at)
        try:
            with map_httpcore_exceptions():
                resp = self._pool.handle_request(_core_request(request, extensions))
        finally:
            _ATTEMPT_LIMIT.reset(token)
        assert isinstance(resp.stream, Iterable)
        return httpx.Response(status_code=resp.status, headers=resp.headers,
                              stream=_ResponseStream(resp.stream, on_close),
                              extensions=resp.extensions)

    def close(self) -> None:
        """Close every connection of the pool."""
        self._pool.close()


class AsyncEndpointPool:
    """An async connection pool to one endpoint of one service."""

    def __init__(self, host: str, port: int, settings: PoolSettings) -> None:
        self._pool = httpcore.AsyncConnectionPool(network_backend=_AsyncPinnedBackend(host, port),
                                                  **settings.pool_kwargs())

    async def send(self, request: httpx.Request, extensions: dict[str, Any],
                   on_close: Callable[[], None] | None = None,
                   limit_at: float | None = None) -> httpx.Response:
        """Send ``request`` (its URL unchanged) to the endpoint; with ``limit_at``, the
        response headers must arrive by then (``time.monotonic()``)."""
        token = _ATTEMPT_LIMIT.set(limit_at)
        try:
            with map_httpcore_exceptions():
                resp = await self._pool.handle_async_request(
                    _core_request(request, extensions))
        finally:
            _ATTEMPT_LIMIT.reset(token)
        return httpx.Response(status_code=resp.status, headers=resp.headers,
                              stream=_AsyncResponseStream(resp.stream, on_close),
                              extensions=resp.extensions)

    async def aclose(self) -> None:
        """Close every connection of the pool."""
        await self._pool.aclose()
