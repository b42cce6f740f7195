"""AsyncMeshClient on each connection pool: the same scenarios, the same guarantees.

Every test here runs twice, with ``pool="httpcore"`` (the default) and with
``pool="aiohttp"``, against real loopback servers: routing with the caller's URL
kept, request bodies and headers, streaming, TLS verified against the service
name, IPv6, connection limits, retries that respect the idempotency gate,
deadlines, cancellation, the error types, and no leak of file descriptors or
tasks after 10,000 requests with cancellations. The HTTP version scenarios run
on the httpcore pool over HTTP/1.1, h2c and HTTP/2 over TLS against a real
HTTP/2 server (``h2_server``). Then the configuration of the pool (``pool=``,
``MESHLIB_POOL``) and how respx relates to each pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
import trustme

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Breaker, Hedge, Policy, Service
from meshlib.testing._backend import Backend, BackendProcess
from test_tls import TLSServer

POOLS = ["httpcore", "aiohttp"]
FAST = Policy(backoff=Backoff(base=0.001, max=0.005), breaker=Breaker(failures=10**6))
NO_RETRY = FAST.replace(retries=0)


@pytest.fixture(params=POOLS)
def pool(request: pytest.FixtureRequest) -> str:
    """The pool under test."""
    name: str = request.param
    return name


def _inflight(client: meshlib.AsyncMeshClient, service: str = "svc") -> int:
    snap = client.snapshot()["services"][service]
    return sum(e["inflight"] for e in snap["endpoints"])


# -- a scripted raw HTTP server, for what the loopback Backend does not do -------------


class ScriptedServer:
    """A raw TCP server on 127.0.0.1: each connection's request is read, then
    ``script(conn, stop)`` answers it (or not) byte by byte as the test wants."""

    def __init__(self, script: Callable[[socket.socket, threading.Event], None]) -> None:
        self._script = script
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    @property
    def static_url(self) -> str:
        return f"static://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            worker.start()
            self._threads.append(worker)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests.append(data)
                self._script(conn, self._stop)
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]],
                                    ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(script: Callable[[socket.socket, threading.Event], None]) -> ScriptedServer:
        server = ScriptedServer(script)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


Scripted = Callable[[Callable[[socket.socket, threading.Event], None]], ScriptedServer]


# -- routing, bodies, headers, streaming ----------------------------------------------


async def test_get_is_routed_and_keeps_the_callers_url(pool: str, backends: BackendFactory) -> None:
    """http://svc/... reaches an endpoint with Host: svc; the URL and query stay as written."""
    b = backends(2)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool) as client:
        response = await client.get("http://svc/v1/me?x=1&y=%20z")
        assert _inflight(client) == 0
    assert response.status_code == 200
    assert str(response.request.url) == "http://svc/v1/me?x=1&y=%20z"
    assert response.http_version == "HTTP/1.1"
    assert response.reason_phrase == "OK"
    body = response.json()
    assert body["headers"]["host"] == "svc"
    assert body["path"] == "/v1/me" and body["query"] == "x=1&y=%20z"
    assert body["headers"]["user-agent"].startswith("python-httpx/")
    assert 0 < int(body["headers"]["x-mesh-timeout-ms"]) <= 10000
    info = response.extensions["meshlib"]
    assert info["endpoint"] == response.headers["x-backend"] and info["attempts"] == 1


async def test_request_bodies_and_headers_arrive_as_sent(pool: str,
                                                         backends: BackendFactory) -> None:
    """JSON, bytes, a one-shot async stream and a multipart file upload arrive whole;
    repeated headers stay repeated and no header is added by the pool."""
    b = backends(1)

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"defgh", b"i" * 70000):
            yield part

    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool) as client:
        r = await client.post("http://svc/j", json={"a": 1})
        assert r.json()["body_bytes"] == len(b'{"a":1}')
        assert r.json()["headers"]["content-type"] == "application/json"
        r = await client.put("http://svc/b", content=b"xyz" * 1000,
                             headers=[("X-Dup", "1"), ("X-Dup", "2"), ("X-Case", "Keep")])
        sent = r.json()["headers"]
        assert r.json()["body_bytes"] == 3000 and r.json()["method"] == "PUT"
        assert sent["x-dup"] == "1, 2" and sent["x-case"] == "Keep"
        assert "content-type" not in sent
        r = await client.post("http://svc/s", content=chunks())
        assert r.json()["body_bytes"] == 3 + 5 + 70000
        assert r.json()["headers"]["transfer-encoding"] == "chunked"
        r = await client.post("http://svc/f", files={"f": ("a.txt", b"hello " * 100)},
                              data={"k": "v"})
        assert r.json()["headers"]["content-type"].startswith("multipart/form-data; boundary=")
        assert r.json()["body_bytes"] == int(r.json()["headers"]["content-length"]) > 600
        r = await client.request("DELETE", "http://svc/d")
        assert r.json()["method"] == "DELETE"
        r = await client.head("http://svc/h")
        assert r.status_code == 200 and r.content == b""
        assert _inflight(client) == 0


async def test_the_pool_adds_no_header_of_its_own(pool: str, backends: BackendFactory) -> None:
    """Headers the caller removed from the client stay absent (no pool User-Agent)."""
    b = backends(1)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool) as client:
        del client.headers["user-agent"]
        del client.headers["accept"]
        sent = (await client.get("http://svc/")).json()["headers"]
    assert "user-agent" not in sent and "accept" not in sent
    assert sent["accept-encoding"] == "gzip, deflate"


def _response_script(head: bytes, parts: list[bytes], pause: float = 0.0
                     ) -> Callable[[socket.socket, threading.Event], None]:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        for part in parts:
            if pause and stop.wait(pause):
                return
            conn.sendall(part)
    return script


@pytest.mark.parametrize("head", [
    b"X-Big: " + b"a" * 9000 + b"\r\n",
    b"".join(b"Set-Cookie: c%d=v\r\n" % i for i in range(150)),
], ids=["one-9000-byte-header", "150-set-cookie-lines"])
async def test_large_response_headers_are_accepted(pool: str, scripted: Scripted,
                                                   head: bytes) -> None:
    """Every pool takes the response heads httpcore takes (a header of 9,000 bytes, 150
    Set-Cookie lines): 200, the endpoint stays healthy, the route stays open."""
    server = scripted(_response_script(b"HTTP/1.1 200 OK\r\n" + head
                                       + b"Content-Length: 2\r\nConnection: close\r\n\r\nok",
                                       []))
    async with meshlib.AsyncMeshClient(services={"svc": server.static_url}, pool=pool,
                                       policy=Policy(retries=0)) as client:
        for _ in range(6):  # more than the breaker's 5 failures
            response = await client.get("http://svc/")
            assert response.status_code == 200 and response.text == "ok"
        endpoint = client.snapshot()["services"]["svc"]["endpoints"][0]
    assert endpoint["breaker"] == "closed" and endpoint["failures"] == 0
    assert len(response.headers.raw) == head.count(b"\r\n") + 2


async def test_an_oversized_response_head_is_an_answer_not_a_refusal(
        pool: str, scripted: Scripted) -> None:
    """A head beyond what httpcore takes fails alike on every pool, as a protocol error of
    an answer: it never counts as a refused connection (the endpoint is not ejected)."""
    server = scripted(_response_script(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 200_000
                                       + b"\r\nContent-Length: 2\r\n\r\nok", []))
    async with meshlib.AsyncMeshClient(services={"svc": server.static_url}, pool=pool,
                                       policy=Policy(retries=0)) as client:
        for _ in range(5):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("http://svc/")
        endpoint = client.snapshot()["services"]["svc"]["endpoints"][0]
    assert endpoint["breaker"] == "closed"  # a refused connection would have ejected it


async def test_request_header_bytes_go_out_unchanged(pool: str, scripted: Scripted) -> None:
    """Header bytes that are not UTF-8 (Latin-1 b"Zo\\xeb") and UTF-8 ones arrive as sent."""
    server = scripted(_response_script(b"HTTP/1.1 204 No Content\r\n\r\n", []))
    async with meshlib.AsyncMeshClient(services={"svc": server.static_url}, pool=pool,
                                       policy=NO_RETRY) as client:
        response = await client.get("http://svc/", headers=[
            (b"X-Latin", b"Zo\xeb"), (b"X-Utf8", "Zoë".encode())])
    assert response.status_code == 204
    head = server.requests[0]
    assert b"\r\nX-Latin: Zo\xeb\r\n" in head
    assert b"\r\nX-Utf8: Zo\xc3\xab\r\n" in head


async def test_streamed_response_and_repeated_response_headers(pool: str,
                                                               scripted: Scripted) -> None:
    """client.stream() yields a large body in parts; repeated response headers stay apart."""
    body = bytes(range(256)) * 4096  # 1 MiB
    head = (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Dup: 1\r\n"
            b"X-Dup: 2\r\nContent-Length: %d\r\n\r\n" % len(body))
    server = scripted(_response_script(head, [body[i:i + 65536]
                                              for i in range(0, len(body), 65536)]))
    async with meshlib.AsyncMeshClient(services={"svc": server.static_url}, pool=pool,
                                       policy=NO_RETRY) as client:
        async with client.stream("GET", "http://svc/big") as response:
            assert response.headers.get_list("x-dup") == ["1", "2"]
            assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
            assert _inflight(client) == 1  # the body is still being read
            parts = [part async for part in response.aiter_bytes()]
        assert b"".join(parts) == body and len(parts) > 1
        assert _inflight(client) == 0
        assert client.cookies.get("a") == "1"  # httpx keeps cookies, as with any transport


async def test_a_body_closed_early_releases_its_connection(pool: str, scripted: Scripted) -> None:
    """Leaving a stream half read closes that connection (never reused) and the in-flight
    count goes back to 0; with max_connections=1 the next request still gets through."""
    body = b"x" * 200000
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    server = scripted(_response_script(head, [body[:1000], body[1000:]], pause=0.05))
    async with meshlib.AsyncMeshClient(services={"svc": server.static_url}, pool=pool,
                                       policy=NO_RETRY,
                                       limits=httpx.Limits(max_connections=1)) as client:
        async with client.stream("GET", "http://svc/") as response:
            async for _ in response.aiter_bytes():
                break
        assert _inflight(client) == 0
        response = await client.get("http://svc/", timeout=5)
        assert len(response.content) == len(body)
    assert server.connections == 2


async def test_gzip_is_decoded_once_by_httpx(pool: str, scripted: Scripted) -> None:
    """Content-Encoding is decoded by httpx, not by the pool: the caller gets the text."""
    import gzip
    payload = gzip.compress(b"hello " * 50)
    head = (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
            % len(payload))
    server = scripted(_response_script(head, [payload]))
    async with meshlib.AsyncMeshClient(services={"svc": server.static_url}, pool=pool) as c:
        response = await c.get("http://svc/")
    assert response.text == "hello " * 50
    assert response.num_bytes_downloaded == len(payload)


async def test_ipv6_endpoint(pool: str, backends: BackendFactory) -> None:
    """An endpoint on [::1] is reached, with Host still the service name."""
    try:
        b: Backend = backends(1, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool) as client:
        response = await client.get("http://svc/six")
    assert response.extensions["meshlib"]["endpoint"].startswith("[::1]:")
    assert response.json()["headers"]["host"] == "svc"


async def test_pass_through_hosts_stay_plain_httpx(pool: str, backends: BackendFactory) -> None:
    """A host that is not a service is sent by httpx's own transport, whatever the pool."""
    b = backends(1)
    async with meshlib.AsyncMeshClient(services={"svc": "static://127.0.0.1:1"},
                                       pool=pool) as client:
        response = await client.get(b.urls[0] + "/plain")
    assert "meshlib" not in response.extensions
    assert "x-mesh-timeout-ms" not in response.json()["headers"]


async def test_connection_limit_is_honoured_per_endpoint(pool: str,
                                                         backends: BackendFactory) -> None:
    """limits=httpx.Limits(max_connections=2): 20 concurrent requests use 2 connections."""
    b = backends(1, delay_ms=20)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       limits=httpx.Limits(max_connections=2)) as client:
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, b[0].connection_count)
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        responses = await asyncio.gather(*[client.get("http://svc/") for _ in range(20)])
        watcher.cancel()
        assert all(r.status_code == 200 for r in responses)
        assert _inflight(client) == 0
    assert b.count == 20
    assert 1 <= peak <= 2


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA) -> Iterator[Callable[..., TLSServer]]:
    started: list[TLSServer] = []

    def start(*names: str) -> TLSServer:
        server = TLSServer(ca.issue_cert(*names))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def _tls_get(pool: str, url: str, services: dict[str, Any], **kwargs: Any
                   ) -> httpx.Response:
    async with meshlib.AsyncMeshClient(services=services, policy=NO_RETRY, pool=pool,
                                       **kwargs) as client:
        response = await client.get(url)
        await response.aread()
        return response


async def test_tls_is_verified_against_the_service_name(
        pool: str, tls: Callable[..., TLSServer], ca: trustme.CA) -> None:
    """https://users/ reaches 127.0.0.1, sends SNI "users" and verifies "users"; the
    connection is reused for the next request."""
    server = tls("users")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with meshlib.AsyncMeshClient(services={"users": server.static_url},
                                       policy=NO_RETRY, pool=pool, verify=context) as client:
        response = await client.get("https://users/v1")
        assert response.json() == {"host": "users", "path": "/v1", "sni": "users"}
        assert response.request.url == httpx.URL("https://users/v1")
        assert (await client.get("https://users/v2")).json()["path"] == "/v2"
    assert server.snis == ["users"]  # one handshake: the connection was kept


async def test_tls_server_name_overrides_the_checked_name(
        pool: str, tls: Callable[..., TLSServer], ca: trustme.CA) -> None:
    """Service(tls_server_name="other") sends SNI "other" and accepts a cert for "other"."""
    server = tls("other")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    services = {"users": Service(server.static_url, tls_server_name="other")}
    response = await _tls_get(pool, "https://users/", services, verify=context)
    assert response.json()["sni"] == "other" and response.json()["host"] == "users"


async def test_tls_for_another_name_or_an_unknown_ca_fails(
        pool: str, tls: Callable[..., TLSServer], ca: trustme.CA) -> None:
    """A certificate for another name, or for the IP, or from an untrusted CA: ConnectError."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    other = tls("other")
    with pytest.raises(httpx.ConnectError) as info:
        await _tls_get(pool, "https://users/", {"users": other.static_url}, verify=context)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert "mismatch" in str(info.value).lower()
    by_ip = tls("127.0.0.1")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await _tls_get(pool, "https://users/", {"users": by_ip.static_url}, verify=context)
    users = tls("users")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await _tls_get(pool, "https://users/", {"users": users.static_url})


class _MutualTLSServer(TLSServer):
    """A TLSServer that requires a client certificate issued by ``ca``."""

    def __init__(self, cert: trustme.LeafCert, ca: trustme.CA) -> None:
        super().__init__(cert)
        wrapped: ssl.SSLSocket = self.httpd.socket  # type: ignore[assignment]
        wrapped.context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(wrapped.context)


async def test_client_certificate_from_the_shared_context(pool: str, ca: trustme.CA) -> None:
    """The one SSLContext (verify=) carries a client certificate to every endpoint;
    without it the server refuses the handshake."""
    # With TLS 1.3 the server's "certificate required" alert comes on the first read;
    # httpcore sometimes lets it escape as a raw ssl.SSLError (a race, not meshlib's
    # mapping); the aiohttp pool always maps it into httpx's hierarchy.
    refused = (httpx.HTTPError, ssl.SSLError) if pool == "httpcore" else httpx.HTTPError
    server = _MutualTLSServer(ca.issue_cert("users"), ca)
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with pytest.raises(refused):
            await _tls_get(pool, "https://users/", {"users": server.static_url}, verify=context)
        ca.issue_cert("client.test").configure_cert(context)
        response = await _tls_get(pool, "https://users/", {"users": server.static_url},
                                  verify=context)
        assert response.status_code == 200
    finally:
        server.stop()


# -- failures, retries and the idempotency gate -----------------------------------------


async def test_connect_refused_is_retried_elsewhere_even_for_post(
        pool: str, backends: BackendFactory) -> None:
    """A refused connect proves nothing was sent: a POST is retried on another endpoint."""
    b = backends(2)
    b[0].refuse()
    policy = FAST.replace(balancer="round-robin", retries=2)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=policy) as client:
        for _ in range(4):
            response = await client.post("http://svc/", content=b"once")
            assert response.extensions["meshlib"]["endpoint"] == b.addresses[1]
        assert _inflight(client) == 0
    assert b[0].count == 0 and b[1].count == 4


async def test_refused_without_retries_is_a_connect_error(pool: str,
                                                          backends: BackendFactory) -> None:
    b = backends(1)
    b[0].refuse()
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=NO_RETRY) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://svc/")
        assert _inflight(client) == 0


async def test_a_dropped_post_is_never_sent_twice(pool: str, backends: BackendFactory) -> None:
    """The server reads a POST then closes: RemoteProtocolError, and the POST went out once
    (neither meshlib nor the pool resends it)."""
    b = backends(2, mode="close")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=FAST.replace(retries=3)) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("http://svc/", content=b"pay")
        assert _inflight(client) == 0
    assert b.count == 1


async def test_a_dropped_get_is_retried_on_another_endpoint(pool: str,
                                                            backends: BackendFactory) -> None:
    """A GET whose connection dropped is idempotent: retried elsewhere, one send each."""
    b = backends(2, mode=["close", "normal"])
    policy = FAST.replace(balancer="round-robin", retries=2)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=policy) as client:
        retried = 0
        for _ in range(4):
            response = await client.get("http://svc/")
            assert response.extensions["meshlib"]["endpoint"] == b.addresses[1]
            retried += response.extensions["meshlib"]["attempts"] - 1
    assert retried >= 1
    assert b[0].count == retried  # each failed attempt reached the server exactly once
    assert b[1].count == 4


async def test_a_reset_connection_is_a_read_or_protocol_error(pool: str,
                                                              backends: BackendFactory) -> None:
    b = backends(1, mode="reset")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=NO_RETRY) as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await client.post("http://svc/", content=b"x")
    assert b.count == 1


async def test_a_malformed_or_truncated_answer_is_a_protocol_error(pool: str,
                                                                   scripted: Scripted) -> None:
    garbage = scripted(_response_script(b"NOT HTTP AT ALL\r\n\r\n", []))
    async with meshlib.AsyncMeshClient(services={"svc": garbage.static_url}, pool=pool,
                                       policy=NO_RETRY) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("http://svc/")
    short = scripted(_response_script(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", []))
    async with meshlib.AsyncMeshClient(services={"svc": short.static_url}, pool=pool,
                                       policy=NO_RETRY) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("http://svc/")
        assert _inflight(client) == 0


async def test_503_is_retried_and_counted_once_per_attempt(pool: str,
                                                           backends: BackendFactory) -> None:
    b = backends(2, status=[503, 200])
    policy = FAST.replace(balancer="round-robin", retries=2)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=policy) as client:
        retried = 0
        for _ in range(4):
            response = await client.get("http://svc/")
            assert response.status_code == 200
            retried += response.extensions["meshlib"]["attempts"] - 1
    assert retried >= 1
    assert b[0].count == retried and b[1].count == 4


# -- deadlines, timeouts, cancellation ---------------------------------------------------


async def test_deadline_ends_a_stalled_attempt(pool: str, backends: BackendFactory) -> None:
    b = backends(2, mode="stall")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=FAST.replace(timeout=0.3)) as client:
        start = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            await client.get("http://svc/")
        assert time.monotonic() - start < 1.5
        assert _inflight(client) == 0


async def test_read_timeout_is_an_httpx_read_timeout(pool: str, backends: BackendFactory) -> None:
    """httpx's own read timeout, shorter than the deadline: ReadTimeout (sent)."""
    b = backends(1, mode="stall")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=NO_RETRY.replace(timeout=5.0)) as client:
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post("http://svc/", content=b"x", timeout=httpx.Timeout(0.2))
        assert time.monotonic() - start < 1.5


async def test_deadline_bounds_an_attempt_that_trickles_its_headers(pool: str,
                                                                    scripted: Scripted) -> None:
    """Each header line comes quickly, but the attempt ends at its deadline."""
    lines = [f"x-trickle-{i}: y\r\n".encode() for i in range(30)]
    server = scripted(_response_script(b"HTTP/1.1 200 OK\r\n", lines, pause=0.1))
    async with meshlib.AsyncMeshClient(services={"svc": server.static_url}, pool=pool,
                                       policy=NO_RETRY.replace(timeout=0.5)) as client:
        start = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            await client.get("http://svc/")
        assert time.monotonic() - start < 1.5
        assert _inflight(client) == 0


async def test_pool_timeout_when_every_connection_is_busy(pool: str,
                                                          backends: BackendFactory) -> None:
    """max_connections=1 and a slow request holds it: the next one times out waiting for
    the pool (PoolTimeout, never sent), and the slow one still completes."""
    b = backends(1, delay_ms=800)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=NO_RETRY,
                                       limits=httpx.Limits(max_connections=1)) as client:
        slow = asyncio.ensure_future(client.get("http://svc/"))
        await asyncio.sleep(0.2)
        with pytest.raises(httpx.PoolTimeout):
            await client.post("http://svc/", content=b"x", timeout=httpx.Timeout(5, pool=0.1))
        assert (await slow).status_code == 200
        assert _inflight(client) == 0
    assert b.count == 1


async def test_cancelling_a_request_releases_its_connection(pool: str,
                                                            backends: BackendFactory) -> None:
    """A cancelled request leaves nothing checked out: in-flight 0, and with
    max_connections=1 the next request gets the (only) connection slot."""
    b = backends(1, mode="stall")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=NO_RETRY.replace(timeout=10.0),
                                       limits=httpx.Limits(max_connections=1)) as client:
        for _ in range(3):
            task = asyncio.ensure_future(client.get("http://svc/"))
            await asyncio.sleep(0.1)
            assert _inflight(client) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _inflight(client) == 0
        b.set(mode="normal")
        response = await client.get("http://svc/", timeout=httpx.Timeout(5, pool=1.0))
        assert response.status_code == 200
        assert _inflight(client) == 0


async def test_losing_hedges_are_cancelled_and_released(pool: str,
                                                        backends: BackendFactory) -> None:
    b = backends(2, delay_ms=[1000, 0])
    policy = FAST.replace(hedge=Hedge(delay=0.05), balancer="round-robin")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, pool=pool,
                                       policy=policy) as client:
        hedged = []
        for _ in range(4):
            start = time.monotonic()
            response = await client.get("http://svc/")
            assert time.monotonic() - start < 0.6
            assert response.extensions["meshlib"]["endpoint"] == b.addresses[1]
            hedged.append(response.extensions["meshlib"]["hedged"])
        assert any(hedged)
        assert _inflight(client) == 0


# -- no leaks --------------------------------------------------------------------------


# -- HTTP/1.1 and HTTP/2 (h2c and TLS) on the httpcore pool ----------------------------

#: how each HTTP version is asked for: client options, the URL scheme, the version seen
VERSIONS: dict[str, tuple[dict[str, Any], str, str]] = {
    "http1": ({}, "http", "HTTP/1.1"),
    "h2c": ({"http1": False, "http2": True}, "http", "HTTP/2"),
    "h2": ({"http2": True}, "https", "HTTP/2"),
}


@pytest.fixture(params=list(VERSIONS))
def version(request: pytest.FixtureRequest) -> str:
    """The HTTP version under test (httpcore pool)."""
    name: str = request.param
    return name


@pytest.fixture
def h2_endpoint(version: str, ca: trustme.CA, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """A real server for ``version`` (hypercorn for HTTP/2, h11 for HTTP/1.1), with the
    client options that reach it as service ``svc``."""
    from h2_server import H2Server

    options, scheme, expected = VERSIONS[version]
    tls = None
    if scheme == "https":
        cert = ca.issue_cert("svc")
        cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        tls = (str(cert_file), str(key_file))
        context = ssl.create_default_context()
        ca.configure_trust(context)
        options = {**options, "verify": context}
    with H2Server(tls=tls) as server:
        yield {"options": options, "base": f"{scheme}://svc", "expected": expected,
               "services": {"svc": f"static://{server.address}"}, "server": server}


async def test_each_http_version_routes_and_carries_bodies(h2_endpoint: dict[str, Any]) -> None:
    """GET and POST reach the endpoint over the version asked for (h2c is HTTP/2 too)."""
    e = h2_endpoint
    async with meshlib.AsyncMeshClient(services=e["services"], policy=NO_RETRY,
                                       **e["options"]) as client:
        response = await client.get(f"{e['base']}/v")
        posted = await client.post(f"{e['base']}/p", content=b"x" * 70000)
        assert _inflight(client) == 0
    assert response.http_version == e["expected"]
    assert response.json()["http_version"] == e["expected"].removeprefix("HTTP/")
    assert posted.json()["body_bytes"] == 70000 and posted.json()["method"] == "POST"
    assert str(response.request.url) == f"{e['base']}/v"


async def test_a_short_deadline_ends_only_its_own_request(h2_endpoint: dict[str, Any]) -> None:
    """A GET under meshlib.deadline(0.2) beside a POST answered in 1 s on the same
    connection: the GET times out, the POST gets its 200, nothing counts against the
    endpoint."""
    e = h2_endpoint
    async with meshlib.AsyncMeshClient(services=e["services"], policy=Policy(retries=0),
                                       **e["options"]) as client:
        assert (await client.get(f"{e['base']}/warm")).status_code == 200  # one connection

        async def short() -> BaseException | None:
            try:
                with meshlib.deadline(0.2):
                    await client.get(f"{e['base']}/slow?delay_ms=3000")
            except httpx.TimeoutException as exc:
                return exc
            return None

        timed_out, posted = await asyncio.wait_for(asyncio.gather(
            short(), client.post(f"{e['base']}/post?delay_ms=1000", content=b"x")), 10)
        endpoint = client.snapshot()["services"]["svc"]["endpoints"][0]
    assert isinstance(timed_out, meshlib.DeadlineExceeded)
    assert posted.status_code == 200
    assert endpoint["failures"] == 0 and endpoint["breaker"] == "closed"
    assert sum(1 for r in e["server"].requests if r[0] == "POST") == 1


async def test_a_cancelled_request_leaves_the_connection_serving(
        h2_endpoint: dict[str, Any]) -> None:
    """Cancelling a slow request releases its in-flight count; the others on the same
    connection, and the next ones, are answered; nothing counts against the endpoint."""
    e = h2_endpoint
    async with meshlib.AsyncMeshClient(services=e["services"], policy=NO_RETRY,
                                       **e["options"]) as client:
        assert (await client.get(f"{e['base']}/warm")).status_code == 200
        slow = asyncio.ensure_future(client.get(f"{e['base']}/slow?delay_ms=3000"))
        beside = asyncio.ensure_future(client.get(f"{e['base']}/beside?delay_ms=300"))
        await asyncio.sleep(0.1)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert (await asyncio.wait_for(beside, 10)).status_code == 200
        assert (await client.get(f"{e['base']}/after")).status_code == 200
        assert _inflight(client) == 0
        endpoint = client.snapshot()["services"]["svc"]["endpoints"][0]
    assert endpoint["failures"] == 0 and endpoint["breaker"] == "closed"


def test_a_short_deadline_ends_only_its_own_request_sync(h2_endpoint: dict[str, Any]) -> None:
    """The same on the sync client, from two threads: the POST is never failed by the
    GET's deadline, and the GET's timeout counts against nobody."""
    e = h2_endpoint
    results: dict[str, Any] = {}
    with meshlib.MeshClient(services=e["services"], policy=Policy(retries=0),
                            timeout=httpx.Timeout(1.5), **e["options"]) as client:
        assert client.get(f"{e['base']}/warm").status_code == 200

        def short() -> None:
            try:
                with meshlib.deadline(0.2):
                    results["get"] = client.get(f"{e['base']}/slow?delay_ms=3000")
            except httpx.HTTPError as exc:
                results["get"] = exc

        def post() -> None:
            try:
                # answered well before the GET's read timeout (1.5 s), which on the sync
                # client bounds the GET on a shared HTTP/2 connection (docs/pools.md)
                results["post"] = client.post(f"{e['base']}/post?delay_ms=500", content=b"x")
            except httpx.HTTPError as exc:
                results["post"] = exc

        threads = [threading.Thread(target=short), threading.Thread(target=post)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
        endpoint = client.snapshot()["services"]["svc"]["endpoints"][0]
    assert isinstance(results["post"], httpx.Response) and results["post"].status_code == 200
    assert isinstance(results["get"], httpx.TimeoutException)
    assert endpoint["failures"] == 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_no_leak_after_10000_requests_with_cancellations(pool: str) -> None:
    """10,000 requests from 16 tasks, one in ten cancelled mid-flight (waiting for a
    40 ms answer): afterwards nothing is in flight, the pools hold at most their
    limit of connections, and closing the client gives back every file descriptor
    and task. Bounded: 120 s at most."""
    total, tasks, limit = 10_000, 16, 8
    with BackendProcess(2) as servers:
        await asyncio.sleep(0)
        fds_before = _open_fds()
        tasks_before = len(asyncio.all_tasks())
        client = meshlib.AsyncMeshClient(services={"svc": servers.static_url}, pool=pool,
                                         policy=NO_RETRY.replace(timeout=10.0),
                                         limits=httpx.Limits(max_connections=limit))
        counter = iter(range(total))
        deadline = time.monotonic() + 120
        ok = cancelled = 0

        async def worker() -> None:
            nonlocal ok, cancelled
            for i in counter:
                if time.monotonic() > deadline:
                    return
                if i % 10 == 0:
                    attempt = asyncio.ensure_future(client.get("http://svc/?delay_ms=40"))
                    await asyncio.sleep(0.005)
                    attempt.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await attempt
                    cancelled += 1
                else:
                    response = await client.get("http://svc/")
                    assert response.status_code == 200
                    ok += 1

        async with client:
            await asyncio.gather(*[worker() for _ in range(tasks)])
            assert ok + cancelled == total, "the 120 s bound cut the run short"
            assert _inflight(client) == 0
            # at most `limit` connections per endpoint, one fd each
            assert _open_fds() <= fds_before + 2 * limit + 4
        for _ in range(100):  # connections close asynchronously
            if _open_fds() <= fds_before:
                break
            await asyncio.sleep(0.02)
        assert _open_fds() <= fds_before
        assert len(asyncio.all_tasks()) <= tasks_before


# -- configuration ---------------------------------------------------------------------


async def test_default_pool_is_httpcore_and_respx_intercepts_it() -> None:
    """Without pool= or MESHLIB_POOL, respx mocks keyed on the service URL match."""
    with respx.mock(assert_all_called=True) as mock:
        mock.get("http://users/v1").respond(201)
        async with meshlib.AsyncMeshClient(services={"users": "static://127.0.0.1:9"}) as c:
            assert (await c.get("http://users/v1")).status_code == 201


async def test_respx_does_not_intercept_the_aiohttp_pool(backends: BackendFactory) -> None:
    """respx patches httpcore: with pool="aiohttp" a service request goes to the real
    endpoint, mocked or not (use the default pool in tests that mock with respx)."""
    b = backends(1)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get("http://users/v1").respond(201)
        async with meshlib.AsyncMeshClient(services={"users": b.static_url},
                                           pool="aiohttp") as client:
            response = await client.get("http://users/v1")
    assert response.status_code == 200 and not route.called
    assert b.count == 1


async def test_meshlib_pool_environment_variable_selects_the_pool(
        monkeypatch: pytest.MonkeyPatch, backends: BackendFactory) -> None:
    """MESHLIB_POOL=aiohttp takes effect when pool= is not given; pool= wins over it."""
    b = backends(1)
    monkeypatch.setenv("MESHLIB_POOL", "aiohttp")
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get("http://users/").respond(201)
        async with meshlib.AsyncMeshClient(services={"users": b.static_url}) as client:
            assert (await client.get("http://users/")).status_code == 200  # not mocked
        async with meshlib.AsyncMeshClient(services={"users": b.static_url},
                                           pool="httpcore") as client:
            assert (await client.get("http://users/")).status_code == 201  # mocked
    assert route.call_count == 1


@pytest.mark.parametrize("value", ["bogus", "AIOHTTP", "h2"])
def test_an_unknown_pool_is_a_config_error_naming_it(value: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(meshlib.ConfigError, match=f"pool='{value}'"):
        meshlib.AsyncMeshClient(services={"svc": "static://127.0.0.1:1"}, pool=value)
    monkeypatch.setenv("MESHLIB_POOL", value)
    with pytest.raises(meshlib.ConfigError, match=f"MESHLIB_POOL='{value}'"):
        meshlib.AsyncMeshClient(services={"svc": "static://127.0.0.1:1"})
    with pytest.raises(meshlib.ConfigError, match="MESHLIB_POOL"):  # validated for sync too
        meshlib.MeshClient(services={"svc": "static://127.0.0.1:1"})


def test_the_sync_transport_always_uses_httpcore(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESHLIB_POOL concerns AsyncMeshClient only; pool="aiohttp" on the sync transport is
    a ConfigError naming it."""
    with pytest.raises(meshlib.ConfigError, match=r"pool='aiohttp'.*AsyncMeshClient"):
        meshlib.MeshTransport(services={"svc": "static://127.0.0.1:1"}, pool="aiohttp")
    monkeypatch.setenv("MESHLIB_POOL", "aiohttp")
    with respx.mock(assert_all_called=True) as mock:
        mock.get("http://svc/").respond(204)
        with meshlib.MeshClient(services={"svc": "static://127.0.0.1:1"}) as client:
            assert client.get("http://svc/").status_code == 204  # httpcore: respx sees it


def test_aiohttp_pool_is_http11_only() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"HTTP/1\.1"):
        meshlib.AsyncMeshClient(services={"svc": "static://127.0.0.1:1"}, pool="aiohttp",
                                http2=True)


def test_missing_aiohttp_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without aiohttp installed, pool="aiohttp" says which extra to install."""
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp -> ImportError
    monkeypatch.delitem(sys.modules, "meshlib._aiohttp_pool", raising=False)
    with pytest.raises(meshlib.ConfigError, match=r"httpx-mesh\[aiohttp\]"):
        meshlib.AsyncMeshClient(services={"svc": "static://127.0.0.1:1"}, pool="aiohttp")
    monkeypatch.setenv("MESHLIB_POOL", "aiohttp")
    with pytest.raises(meshlib.ConfigError, match=r"MESHLIB_POOL='aiohttp'.*httpx-mesh\[aiohttp\]"):
        meshlib.AsyncMeshClient(services={"svc": "static://127.0.0.1:1"})
    # the default pool does not need aiohttp
    meshlib.AsyncMeshClient(services={"svc": "static://127.0.0.1:1"}, pool="httpcore")


async def test_respx_using_httpx_intercepts_any_pool_before_the_mesh(
        backends: BackendFactory) -> None:
    """respx.mock(using="httpx") patches the client, so it matches with pool="aiohttp"
    too, but the mesh is skipped for mocked routes (no retries, no meshlib extension);
    unmocked service requests still go through the mesh."""
    b = backends(1)
    with respx.mock(using="httpx", assert_all_called=True) as mock:
        mock.get("http://users/mocked").respond(201)
        mock.route(path="/real").pass_through()
        async with meshlib.AsyncMeshClient(services={"users": b.static_url},
                                           pool="aiohttp") as client:
            mocked = await client.get("http://users/mocked")
            real = await client.get("http://users/real")
    assert mocked.status_code == 201 and "meshlib" not in mocked.extensions
    assert real.status_code == 200 and real.extensions["meshlib"]["endpoint"] == b.addresses[0]
    assert b.count == 1


def test_throughput_benchmark_rows_have_the_documented_shape() -> None:
    """run_throughput measures every client at every concurrency, in one run (no speed
    assertion: figures are for `meshlib bench`, not for tests)."""
    from meshlib._tools.throughput import format_throughput, run_throughput

    rows = run_throughput(concurrency=(1, 4), requests=40, rounds=1, budget_s=10.0)
    assert [(r["concurrency"], r["client"]) for r in rows] == [
        (n, c) for n in (1, 4) for c in ("httpx", "mesh-httpcore", "mesh-aiohttp")]
    for row in rows:
        assert row["requests"] == 40 and row["errors"] == 0 and row["rps"] > 0
        assert row["ratio"] == 1.0 if row["client"] == "httpx" else row["ratio"] > 0
    table = format_throughput(rows)
    assert "mesh-aiohttp" in table and "4 tasks" in table
    with pytest.raises(ValueError, match="concurrency"):
        run_throughput(concurrency=(0,))


async def test_idle_connection_readability_polls_the_socket_found_once() -> None:
    """The pool asks every idle connection whether it is readable before each request: the
    httpcore pool's stream answers from the socket it found once (not by asking anyio to
    rebuild every socket attribute each time), and answers as httpcore does: not readable
    while the server is silent, readable once it sends or closes."""
    from meshlib._async.pool import _AsyncPinnedBackend

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stream = await _AsyncPinnedBackend("127.0.0.1", port).connect_tcp("ignored", 1)
        server, _ = listener.accept()
        with server:
            inner = stream._stream  # type: ignore[attr-defined]
            asked: list[str] = []
            ask = inner.get_extra_info

            def counting(info: str) -> Any:
                asked.append(info)
                return ask(info)

            inner.get_extra_info = counting
            try:
                assert [stream.get_extra_info("is_readable") for _ in range(50)] == [False] * 50
                server.sendall(b"x")
                await asyncio.sleep(0.05)
                assert stream.get_extra_info("is_readable") is True
                assert asked == ["socket"]  # found once, then polled directly
                assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
            finally:
                await stream.aclose()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stream = await _AsyncPinnedBackend("127.0.0.1", port).connect_tcp("ignored", 1)
        server, _ = listener.accept()
        assert stream.get_extra_info("is_readable") is False
        server.close()  # the server drops the idle connection: readable (EOF)
        await asyncio.sleep(0.05)
        assert stream.get_extra_info("is_readable") is True
        await stream.aclose()
