"""Endpoint pools on aiohttp's connector: `AsyncMeshClient(pool="aiohttp")`.

The same contract as `meshlib._pool.AsyncEndpointPool` (one pool per
(service, endpoint), the request's URL unchanged, a streaming body that
releases its connection and in-flight count when closed, the attempt bounded
until its response headers by `limit_at`, timeouts from
`extensions["timeout"]`, the `sni_hostname` extension, errors mapped into
httpx's hierarchy), carried by `aiohttp.TCPConnector` instead of httpcore.

How the URL is kept: the connector's resolver answers every name with the
endpoint's address (RECIPES section 11), so `https://users/...` connects to
`10.0.0.7:8443` while TLS sends SNI `users` and verifies the certificate
for `users` (or `Service.tls_server_name`), and `Host` is what the
caller's request says.

HTTP/1.1 only: aiohttp's client does not speak HTTP/2. It takes what the
httpcore pool takes (a response head up to 100 KiB, lines as long and headers
as many as fit in it) and sends request header bytes unchanged
(`meshlib._aiohttp_wire`).

What aiohttp does differently and is switched off here, so that both pools
behave alike: cookies (httpx keeps them), redirects (httpx follows them),
content decoding (httpx decodes), automatic `User-Agent`/`Accept`/
`Content-Type` headers (httpx sets its own), proxies from the environment,
and aiohttp's silent resend of an idempotent request whose reused connection
turned out closed (meshlib counts and retries attempts itself).
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import aiohttp.abc
import httpx
from yarl import URL

from ._aiohttp_wire import RawHeaderRequest, header_text
from ._pool import PoolSettings

__all__ = ["AiohttpEndpointPool"]

#: aiohttp must leave these headers to httpx, which has set them already (or chose not to)
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
#: aiohttp adds these to a request without a body unless present (httpx sends all three)
_AUTO_NAMES = frozenset({b"user-agent", b"accept", b"accept-encoding"})
#: never round a timeout up to a whole second (aiohttp does so above 5 s by default)
_NO_CEIL = float("inf")
_HTTP11 = b"HTTP/1.1"
#: the largest response head httpcore's HTTP/1.1 parser takes (h11's event size limit);
#: aiohttp's defaults (8190 bytes a line, 128 headers) are lifted to it
_MAX_HEAD = 100 * 1024
#: the most header lines that fit in it ("a:\r\n" is the shortest)
_MAX_HEADERS = _MAX_HEAD // 4
_HTTP10 = b"HTTP/1.0"

#: whether the current attempt got its connection (set by the connector, in the
#: attempt's own task): a timeout before that proves the request was never sent
_CONNECTED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "meshlib_aiohttp_connected", default=False)


class _PinnedResolver(aiohttp.abc.AbstractResolver):
    """Answers every name with one endpoint's address."""

    def __init__(self, host: str, port: int) -> None:
        self._answer = [{
            "hostname": host, "host": host, "port": port,
            "family": socket.AF_INET6 if ":" in host else socket.AF_INET,
            "proto": 0, "flags": socket.AI_NUMERICHOST,
        }]

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        return [dict(self._answer[0], hostname=host)]

    async def close(self) -> None:
        pass


class _PinnedConnector(aiohttp.TCPConnector):
    """A connector that marks, in the attempt's context, when it has a connection."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        conn = await super().connect(req, traces, timeout)
        _CONNECTED.set(True)
        return conn


class _Expiry:
    """Cancels the attempt's task when its time is up, and remembers having done so
    (as `asyncio.timeout` does, which Python 3.10 lacks)."""

    __slots__ = ("cancelling", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False
        #: cancellation requests pending before the attempt began (3.11+)
        self.cancelling = 0
        if sys.version_info >= (3, 11):
            self.cancelling = task.cancelling()

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


def _expired(expiry: _Expiry) -> bool:
    """After a `CancelledError`: whether it was the attempt's limit (then the task's
    cancellation is undone) rather than the caller cancelling."""
    if not expiry.fired:
        return False
    if sys.version_info >= (3, 11):
        return expiry.task.uncancel() <= expiry.cancelling
    return True  # pragma: no cover - Python 3.10 has no uncancel


def _timeout_for(timeouts: dict[str, float | None], waits: bool) -> aiohttp.ClientTimeout:
    """httpx's per-operation timeouts (already clamped to the attempt) as aiohttp's.

    aiohttp's `connect` covers getting a connection, waiting for a free one
    included: it is httpx's pool timeout when the pool is full as the attempt
    begins (`waits`; the connection freed is then usually reused), else the
    connect timeout. `sock_connect` is the connect timeout and `sock_read`
    the read timeout, per read, as in httpx. aiohttp has no write timeout: a
    write is bounded by the attempt's limit.
    """
    connect = timeouts.get("connect")
    return aiohttp.ClientTimeout(total=None, connect=timeouts.get("pool") if waits else connect,
                                 sock_connect=connect, sock_read=timeouts.get("read"),
                                 ceil_threshold=_NO_CEIL)


def _mapped(exc: BaseException, *, connected: bool, waited: bool) -> Exception:
    """The httpx exception for an aiohttp (or OS) failure before the response headers.

    `connected`: a connection had been acquired, so the request may have left;
    `waited`: the pool was full when the attempt began.
    """
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return httpx.ConnectError(text)
    if isinstance(exc, (aiohttp.ConnectionTimeoutError, asyncio.TimeoutError)) and not connected:
        return httpx.PoolTimeout(text) if waited else httpx.ConnectTimeout(text)
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's SocketTimeoutError included
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, TLS verification, ...
        return httpx.ConnectError(text)
    # a response head that arrived but could not be parsed is one of these too: an
    # answer (classified as a failed answer), never a refused connection
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError,
                        aiohttp.ClientPayloadError)):
        return httpx.RemoteProtocolError(text)
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        return httpx.ReadError(text) if connected else httpx.ConnectError(text)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(text)
    if isinstance(exc, ValueError):  # aiohttp refused the request as written (headers, ...)
        return httpx.LocalProtocolError(text)
    return httpx.TransportError(text)


def _body_error(exc: BaseException) -> Exception:
    """The httpx exception for a failure while reading a response body."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        return httpx.ReadTimeout(text)
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return httpx.RemoteProtocolError(text)
    return httpx.ReadError(text)


class _AiohttpResponseStream(httpx.AsyncByteStream):
    """An aiohttp response body; closing it releases the connection (back to the pool if
    the body was read to the end, else closed) and then calls `on_close` once."""

    __slots__ = ("_on_close", "_pool", "_response")

    def __init__(self, response: aiohttp.ClientResponse, pool: AiohttpEndpointPool | None,
                 on_close: Callable[[], None] | None) -> None:
        self._response = response
        self._pool = pool
        self._on_close = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise _body_error(exc) from exc
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:  # closed already
            return
        on_close, self._on_close = self._on_close, None
        response = self._response
        try:
            if response.content.at_eof():
                response.release()
            else:
                response.close()
        finally:
            pool._busy -= 1
            if on_close is not None:
                on_close()


class AiohttpEndpointPool:
    """An async connection pool to one endpoint of one service, on aiohttp's connector.

    Same interface as `meshlib._pool.AsyncEndpointPool`. Built inside the
    running event loop (the transport builds pools on a request's path); its
    `aiohttp.ClientSession` is opened on the first request.
    """

    def __init__(self, host: str, port: int, settings: PoolSettings) -> None:
        self._host, self._port = host, port
        self._settings = settings
        self._ssl = settings.ssl_context
        limit = settings.limits.max_connections
        self._limit = limit or 0
        self._session: aiohttp.ClientSession | None = None
        #: attempts holding or waiting for a connection (to tell a pool wait from a connect)
        self._busy = 0
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        settings = self._settings
        connector = _PinnedConnector(
            resolver=_PinnedResolver(self._host, self._port),
            ssl=self._ssl,
            limit=self._limit,
            limit_per_host=0,
            keepalive_timeout=settings.limits.keepalive_expiry,
            use_dns_cache=False,
            local_addr=(settings.local_address, 0) if settings.local_address else None,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            requote_redirect_url=False,
            timeout=aiohttp.ClientTimeout(total=None),
            request_class=RawHeaderRequest,
            max_line_size=_MAX_HEAD,
            max_field_size=_MAX_HEAD,
            max_headers=_MAX_HEADERS,
        )
        # aiohttp resends an idempotent request once, silently, when a reused connection
        # fails; meshlib decides retries itself (and counts attempts), so switch it off.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        self._session = session
        return session

    async def send(self, request: httpx.Request, extensions: dict[str, Any],
                   on_close: Callable[[], None] | None = None,
                   limit_at: float | None = None) -> httpx.Response:
        """Send `request` (its URL unchanged) to the endpoint; with `limit_at`, the
        response headers must arrive by then (`time.monotonic()`).

        A closed pool sends nothing (`httpx.ConnectError`) and opens no session;
        a pool closed while the request was under way releases what it got
        (`httpx.ReadError`).
        """
        if self._closed:
            raise httpx.ConnectError("the connection pool is closed")
        session = self._session or self._open()
        url = request.url
        if url.userinfo:  # httpx has already turned it into an Authorization header
            url = url.copy_with(username=None, password=None)
        raw = request.headers.raw
        # one character per byte: RawHeaderRequest writes each back as that byte
        headers = [(header_text(k), header_text(v)) for k, v in raw]
        stream = request.stream
        data: Any
        if isinstance(stream, httpx.ByteStream):
            data = b"".join(stream) or None  # the bytes themselves: one part
        else:  # a stream: aiohttp frames it (chunked unless a Content-Length was given)
            data = stream
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        # aiohttp's fast path skips nothing; without a body it only adds headers that
        # httpx always sends (unless the caller removed one: then skip them all)
        skip = None
        if data is not None or not _AUTO_NAMES.issubset(k.lower() for k, _ in raw):
            skip = _SKIP_AUTO_HEADERS
        waited = 0 < self._limit <= self._busy
        self._busy += 1
        expiry: _Expiry | None = None
        timer: asyncio.TimerHandle | None = None
        if limit_at is not None:
            task = asyncio.current_task()
            assert task is not None
            expiry = _Expiry(task)
            timer = asyncio.get_running_loop().call_later(
                max(limit_at - time.monotonic(), 0.0), expiry)
        timeout = _timeout_for(extensions.get("timeout") or {}, waited)
        token = _CONNECTED.set(False)
        try:
            response = await session.request(
                request.method, URL(str(url), encoded=True), headers=headers, data=data,
                skip_auto_headers=skip, allow_redirects=False, timeout=timeout, ssl=self._ssl,
                server_hostname=extensions.get("sni_hostname"))
        except asyncio.CancelledError as exc:
            self._busy -= 1
            if expiry is not None and _expired(expiry):
                raise _mapped(asyncio.TimeoutError("the attempt's deadline passed"),
                              connected=_CONNECTED.get(), waited=waited) from exc
            raise
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            self._busy -= 1
            cause: BaseException = exc
            if expiry is not None and _expired(expiry):  # aiohttp turned our cancel into this
                cause = asyncio.TimeoutError("the attempt's deadline passed")
            raise _mapped(cause, connected=_CONNECTED.get(), waited=waited) from exc
        except BaseException:
            self._busy -= 1
            raise
        finally:
            _CONNECTED.reset(token)
            if timer is not None:
                timer.cancel()
        if self._closed:  # closed under this request: let its connection go too
            self._busy -= 1
            response.close()
            raise httpx.ReadError("the connection pool was closed")
        version = _HTTP10 if response.version == aiohttp.HttpVersion10 else _HTTP11
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_AiohttpResponseStream(response, self, on_close),
            extensions={"http_version": version,
                        "reason_phrase": (response.reason or "").encode("ascii", "replace")},
        )

    async def aclose(self) -> None:
        """Close every connection of the pool; it sends nothing more."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
