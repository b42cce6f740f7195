"""Connection pools pinned to one endpoint, that keep the caller's URL (see `_pool`).

`_async/pool.py` is the source and `_sync/pool.py` is generated from it by
`scripts/unasync.py` (`make unasync`): edit the source only.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from typing import Any

import httpcore
import httpx
from httpcore._backends.auto import AutoBackend  # documented by httpcore, not exported
from httpcore._utils import is_socket_readable  # what httpcore's own streams answer with

from .._pool import (
    ATTEMPT_LIMIT,
    PoolSettings,
    async_attempt_limit,
    bounded,
    clamp,
    core_request,
    hidden_error,
    httpx_error,
    is_http2,
    stream_count_broken,
)

__all__ = ["AsyncEndpointPool"]


class _AsyncBoundedStream(httpcore.AsyncNetworkStream):
    """A connection whose reads and writes end when the attempt's deadline does.

    `get_extra_info("is_readable")`, which the pool asks of every idle
    connection before each request, polls the socket found once: anyio answers
    it by rebuilding every socket attribute (a `getpeername` call and a dict)
    each time, the larger part of a request's pool scan at 16 tasks and more.
    """

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._readable: Callable[[], bool] | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        limit = ATTEMPT_LIMIT.get()
        if limit is not None:
            timeout = clamp(timeout, limit, httpcore.ReadTimeout)
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        limit = ATTEMPT_LIMIT.get()
        if limit is not None:
            timeout = clamp(timeout, limit, httpcore.WriteTimeout)
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        stream = await self._stream.start_tls(
            ssl_context, server_hostname, bounded(timeout, httpcore.ConnectTimeout))
        return stream if is_http2(stream) else _AsyncBoundedStream(stream)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            readable = self._readable
            if readable is None:
                sock = self._stream.get_extra_info("socket")
                if sock is None:
                    return self._stream.get_extra_info(info)
                # trio's socket answers itself (as httpcore's trio stream asks it)
                readable = getattr(sock, "is_readable", None) or partial(is_socket_readable, sock)
                self._readable = readable
            return readable()
        return self._stream.get_extra_info(info)


class _AsyncPinnedBackend(AutoBackend):
    """Connects to one endpoint whatever host the URL names.

    `h2c`: every cleartext connection speaks HTTP/2 (`http1=False`), so it is
    left unbounded, as a TLS connection that negotiated `h2` is.
    """

    def __init__(self, host: str, port: int, h2c: bool = False) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.h2c = h2c

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        timeout = bounded(timeout, httpcore.ConnectTimeout)
        stream = await super().connect_tcp(
            self.host, self.port, timeout=timeout, local_address=local_address,
            socket_options=socket_options)
        return stream if self.h2c else _AsyncBoundedStream(stream)


class _AsyncResponseStream(httpx.AsyncByteStream):
    """The response body; calls `on_close` once when the body is closed."""

    __slots__ = ("_on_close", "_stream")

    def __init__(self, stream: Any, on_close: Callable[[], None] | None) -> None:
        self._stream = stream
        self._on_close = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            error = httpx_error(exc)
            if error is None:
                if not stream_count_broken(exc):
                    raise
                raise hidden_error(exc) from exc
            raise error from exc

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        except ValueError as exc:  # the body is over: nothing more to tell the caller
            if not stream_count_broken(exc):
                raise
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


class AsyncEndpointPool:
    """A connection pool to one endpoint of one service."""

    def __init__(self, host: str, port: int, settings: PoolSettings) -> None:
        backend = _AsyncPinnedBackend(host, port, h2c=settings.h2c)
        self._pool = httpcore.AsyncConnectionPool(network_backend=backend,
                                                  **settings.pool_kwargs())
        self._closed = False
        #: HTTP/1.1 only: every wait of a send has a timeout clamped to the attempt's
        #: limit (the streams, connect, TLS, the pool's own wait), so the send need not
        #: also be cancelled at it; HTTP/2's shared reads are not clamped
        self._bounded = not settings.http2

    async def send(self, request: httpx.Request, extensions: dict[str, Any],
                   on_close: Callable[[], None] | None = None,
                   limit_at: float | None = None) -> httpx.Response:
        """Send `request` (its URL unchanged) to the endpoint; with `limit_at`, the
        response headers must arrive by then (`time.monotonic()`).

        A closed pool sends nothing (`httpx.ConnectError`); a pool closed while
        the request was under way closes the connection it used too
        (`httpx.ReadError`): nothing stays open after `aclose()`.
        """
        if self._closed:
            raise httpx.ConnectError("the connection pool is closed")
        async with async_attempt_limit(limit_at, bounded=self._bounded):
            try:
                resp = await self._pool.handle_async_request(core_request(request, extensions))
            except Exception as exc:
                error = httpx_error(exc)
                if error is None:
                    if not stream_count_broken(exc):
                        raise
                    raise hidden_error(exc) from exc
                raise error from exc
        if self._closed:  # closed under this request: its connection may be a new one
            await self._pool.aclose()
            raise httpx.ReadError("the connection pool was closed")
        return httpx.Response(status_code=resp.status, headers=resp.headers,
                              stream=_AsyncResponseStream(resp.stream, on_close),
                              extensions=resp.extensions)

    async def aclose(self) -> None:
        """Close every connection of the pool; it sends nothing more."""
        self._closed = True
        await self._pool.aclose()
