"""Tests of the loopback test backend itself (``meshlib.testing._backend``), with plain httpx."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from meshlib.testing._backend import Backend, BackendProcess
from meshlib.testing._backend.parsing import parse_chunked as _parse_chunked

BackendFactory = Callable[..., Backend]


def _raw(address: tuple[str, int], payload: bytes, *, until: int = 1, timeout: float = 5) -> bytes:
    """Send raw bytes; read until ``until`` complete responses arrived (or EOF)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(b"HTTP/1.1 ") - data.count(b"HTTP/1.1 100") < until or not _complete(
            data, until
        ):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _complete(data: bytes, until: int) -> bool:
    """Whether ``data`` holds ``until`` complete final responses with Content-Length."""
    pos = 0
    done = 0
    while done < until:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return False
        head = data[pos:end].decode("latin-1")
        if head.startswith("HTTP/1.1 100"):
            pos = end + 4
            continue
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if len(data) < end + 4 + length:
            return False
        pos = end + 4 + length
        done += 1
    return True


def _addr(backend: Backend, i: int = 0) -> tuple[str, int]:
    server = backend[i]
    return server.host, server.port


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def test_echo_and_headers(backend: Backend, client: httpx.Client) -> None:
    r = client.get(
        backend.urls[0] + "/v1/me?a=1",
        headers={"x-mesh-timeout-ms": "123", "traceparent": "00-abc-def-01"},
    )
    assert r.status_code == 200
    assert r.headers["x-backend"] == backend.addresses[0]
    body = r.json()
    assert body["backend"] == backend.addresses[0]
    assert body["method"] == "GET"
    assert body["path"] == "/v1/me"
    assert body["query"] == "a=1"
    assert body["headers"]["x-mesh-timeout-ms"] == "123"
    assert body["headers"]["traceparent"] == "00-abc-def-01"
    assert body["headers"]["host"] == backend.addresses[0]
    assert body["n"] == 1
    rec = backend[0].last_request
    assert rec is not None
    assert rec.method == "GET" and rec.path == "/v1/me" and rec.query == "a=1"
    assert rec.target == "/v1/me?a=1"
    assert rec.headers["x-mesh-timeout-ms"] == "123"
    assert backend.count == 1


def test_repeated_headers_joined(backend: Backend, client: httpx.Client) -> None:
    r = client.get(backend.urls[0], headers=[("x-a", "1"), ("x-a", "2")])
    assert r.json()["headers"]["x-a"] == "1, 2"


def test_counts_per_server_and_total(backends: BackendFactory, client: httpx.Client) -> None:
    b = backends(3)
    assert len(b) == 3 and len(set(b.addresses)) == 3
    assert b.static_url == "static://" + ",".join(b.addresses)
    for i, url in enumerate(b.urls):
        for _ in range(i + 1):
            assert client.get(url + "/x").status_code == 200
    assert [s.count for s in b] == [1, 2, 3]
    assert b.count == 6
    assert b.counts == dict(zip(b.addresses, [1, 2, 3], strict=True))
    assert [r.backend for r in b.requests] == [b.addresses[0]] + [b.addresses[1]] * 2 + [
        b.addresses[2]
    ] * 3
    assert b.server(b.addresses[1]) is b[1]
    b.reset_counts()
    assert b.count == 0 and b[2].count == 0 and b[2].requests == []


def test_record_limit_bounds_the_list_not_the_count(
    backends: BackendFactory, client: httpx.Client
) -> None:
    b = backends(1, record_limit=5)
    for i in range(12):
        client.get(f"{b.urls[0]}/{i}")
    assert b[0].count == 12
    assert [r.path for r in b[0].requests] == [f"/{i}" for i in range(7, 12)]


def test_query_overrides(backend: Backend, client: httpx.Client) -> None:
    url = backend.urls[0]
    assert client.get(url + "/?status=418").status_code == 418
    assert client.get(url + "/?fail_pct=100").status_code == 503
    assert client.get(url + "/?fail_pct=0").status_code == 200
    r = client.get(url + "/?status=503&retry_after=2")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    start = time.perf_counter()
    assert client.get(url + "/?delay_ms=60").status_code == 200
    assert time.perf_counter() - start >= 0.055
    assert client.get(url + "/?status=abc").status_code == 400
    assert backend.count == 6


def test_server_settings(backend: Backend, client: httpx.Client) -> None:
    server = backend[0]
    url = backend.urls[0]
    server.status = 500
    assert client.get(url).status_code == 500
    server.set(status=200, fail_pct=100, fail_status=502, retry_after=1)
    r = client.get(url)
    assert r.status_code == 502 and r.headers["retry-after"] == "1"
    server.set(fail_pct=0, retry_after=None)
    r = client.get(url)
    assert r.status_code == 200 and "retry-after" not in r.headers
    server.delay_ms = 50
    start = time.perf_counter()
    client.get(url)
    assert time.perf_counter() - start >= 0.045
    # The query wins over the server setting.
    start = time.perf_counter()
    client.get(url + "?delay_ms=0")
    server.reset_settings()
    assert server.settings.delay_ms == 0 and server.status == 200
    with pytest.raises(ValueError):
        server.set(fail_pct=150)
    with pytest.raises(ValueError):
        server.set(mode="explode")  # type: ignore[arg-type]


def test_fail_pct_is_roughly_right_and_seeded(backends: BackendFactory) -> None:
    b = backends(1, fail_pct=30, seed=7)
    with httpx.Client() as c:
        statuses = [c.get(b.urls[0]).status_code for _ in range(400)]
    failures = statuses.count(503)
    assert 70 <= failures <= 170
    assert set(statuses) == {200, 503}


def test_per_server_arguments(backends: BackendFactory, client: httpx.Client) -> None:
    b = backends(3, status=[200, 201, 202], delay_ms=0)
    assert [client.get(u).status_code for u in b.urls] == [200, 201, 202]
    with pytest.raises(ValueError, match="2 values for 3 servers"):
        Backend(3, delay_ms=[1, 2])
    with pytest.raises(ValueError, match="loopback"):
        Backend(1, host="10.0.0.1")
    with pytest.raises(ValueError, match="loopback"):
        Backend(1, host="example.com")


def test_head_and_no_body_statuses(backend: Backend, client: httpx.Client) -> None:
    r = client.head(backend.urls[0])
    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
    r = client.get(backend.urls[0] + "?status=204")
    assert r.status_code == 204 and r.content == b""
    # The connection is still usable afterwards.
    assert client.get(backend.urls[0]).status_code == 200
    assert backend[0].connection_count == 1


def test_request_bodies(backend: Backend, client: httpx.Client) -> None:
    url = backend.urls[0]
    r = client.post(url + "/cl", content=b"hello world")
    assert r.json()["body_bytes"] == 11
    assert backend[0].requests[-1].body == b"hello world"

    def gen() -> Iterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defgh"

    r = client.post(url + "/chunked", content=gen())
    assert r.json()["headers"]["transfer-encoding"] == "chunked"
    assert r.json()["body_bytes"] == 8
    assert backend[0].requests[-1].body == b"abcdefgh"

    big = bytes(range(256)) * 8192  # 2 MiB

    def big_gen() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = client.put(url + "/big", content=big_gen())
    assert r.json()["body_bytes"] == len(big)
    assert backend[0].requests[-1].body == big
    r = client.put(url + "/big-cl", content=big)
    assert backend[0].requests[-1].body == big
    # Keep-alive survived all of it.
    assert backend[0].connection_count == 1
    assert backend.count == 4


def test_raw_pipelining_chunked_trailers_and_continue(backend: Backend) -> None:
    addr = _addr(backend)
    payload = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /b?delay_ms=20 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    )
    data = _raw(addr, payload, until=3)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    # Answers come back in request order even though /b is delayed.
    assert data.index(b'"path":"/a"') < data.index(b'"path":"/b"') < data.index(b'"path":"/c"')
    assert [r.body for r in backend[0].requests] == [b"abc", b"", b"hi"]

    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"xyz")
        reply = b""
        while not _complete(reply, 1):
            reply += sock.recv(65536)
        assert b'"body_bytes":3' in reply


def test_split_writes_are_reassembled(backend: Backend) -> None:
    payload = (
        b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    with socket.create_connection(_addr(backend), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(payload)):
            sock.sendall(payload[i : i + 1])
        reply = b""
        while not _complete(reply, 1):
            reply += sock.recv(65536)
    assert backend[0].last_request is not None
    assert backend[0].last_request.body == b"hello"


def test_http10_and_connection_close(backend: Backend) -> None:
    data = _raw(_addr(backend), b"GET /old HTTP/1.0\r\n\r\n", until=1)
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data
    data = _raw(_addr(backend), b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert b"Connection: close" in data


def test_bad_request(backend: Backend) -> None:
    data = _raw(_addr(backend), b"NONSENSE\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")
    data = _raw(_addr(backend), b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")
    assert backend.count == 0


def test_parse_chunked_incomplete() -> None:
    assert _parse_chunked(bytearray(b"5\r\nhel"), 0) is None
    assert _parse_chunked(bytearray(b"0\r\n"), 0) is None
    assert _parse_chunked(bytearray(b"0\r\n\r\nrest"), 0) == (b"", 5)
    with pytest.raises(ValueError):
        _parse_chunked(bytearray(b"3\r\nabcX\r\n"), 0)


def test_mode_close(backend: Backend, client: httpx.Client) -> None:
    backend[0].mode = "close"
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(backend.urls[0])
    assert backend.count == 1
    backend[0].mode = "normal"
    assert client.get(backend.urls[0]).status_code == 200


def test_mode_reset(backend: Backend, client: httpx.Client) -> None:
    backend[0].mode = "reset"
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get(backend.urls[0])
    assert backend.count == 1


def test_mode_stall_and_stop_closes_stalled(backends: BackendFactory) -> None:
    b = backends(1, mode="stall")
    with httpx.Client(timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
        c.get(b.urls[0])
    assert b.count == 1
    sock = socket.create_connection(_addr(b), timeout=5)
    sock.sendall(b"GET /stalled HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b.wait_for_count(2)
    deadline = time.monotonic() + 5
    while b[0].stalled_count < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b[0].stalled_count >= 1
    start = time.monotonic()
    b.stop()
    assert time.monotonic() - start < 5
    # The stalled socket was closed by the server: EOF or reset, not a timeout.
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert not b.running


def test_close_connections(backend: Backend) -> None:
    backend[0].mode = "stall"
    sock = socket.create_connection(_addr(backend), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert backend.wait_for_count(1)
    backend[0].close_connections()
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()


def test_refuse_and_come_back(backend: Backend, client: httpx.Client) -> None:
    url = backend.urls[0]
    port = backend[0].port
    assert client.get(url).status_code == 200
    backend[0].refuse()
    assert not backend[0].listening
    with pytest.raises(httpx.ConnectError):
        # A fresh client: nothing pooled.
        httpx.get(url, timeout=2)
    with pytest.raises(httpx.ConnectError):
        client.get(url)  # the pooled connection was dropped as well
    backend[0].restore()
    assert backend[0].listening and backend[0].port == port
    assert client.get(url).status_code == 200
    assert backend.count == 2
    backend[0].refuse()
    backend.reset_settings()  # also listens again
    assert client.get(url).status_code == 200


def test_refuse_keeping_connections(backend: Backend, client: httpx.Client) -> None:
    url = backend.urls[0]
    assert client.get(url).status_code == 200
    backend[0].refuse(close_connections=False)
    assert client.get(url).status_code == 200  # the pooled keep-alive connection
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)
    backend[0].restore()


def test_ipv6(backends: BackendFactory) -> None:
    b = backends(2, host=["::1", "127.0.0.1"])
    assert b.addresses[0].startswith("[::1]:")
    assert b.urls[0].startswith("http://[::1]:")
    with httpx.Client() as c:
        r = c.get(b.urls[0] + "/six")
        assert r.headers["x-backend"] == b.addresses[0]
        assert r.json()["backend"] == b.addresses[0]
        assert c.get(b.urls[1]).status_code == 200


async def test_async_client_concurrency(backends: BackendFactory) -> None:
    b = backends(2, delay_ms=100)
    async with httpx.AsyncClient(timeout=5) as c:
        start = time.perf_counter()
        responses = await asyncio.gather(*(c.get(b.urls[i % 2] + f"/{i}") for i in range(20)))
        elapsed = time.perf_counter() - start
    assert all(r.status_code == 200 for r in responses)
    assert b.count == 20 and b[0].count == 10
    # Twenty 100 ms requests in parallel take far less than their sum (2 s).
    assert elapsed < 1.9


def test_settings_change_from_many_threads(backends: BackendFactory) -> None:
    b = backends(2)
    errors: list[BaseException] = []

    def flip() -> None:
        try:
            for i in range(200):
                b[i % 2].set(status=200 + (i % 3))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flip) for _ in range(4)]
    for t in threads:
        t.start()
    with httpx.Client() as c:
        for i in range(100):
            assert c.get(b.urls[i % 2]).status_code in (200, 201, 202)
    for t in threads:
        t.join()
    assert not errors
    assert b.count == 100


def _backend_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "meshlib-test-backend"]


def test_lifecycle_no_leaked_threads() -> None:
    before = _backend_threads()
    b = Backend(3)
    with b:
        assert b.running
        assert len(_backend_threads()) == len(before) + 1
        with pytest.raises(RuntimeError):
            b.start()
        httpx.get(b.urls[0])
    assert not b.running
    assert _backend_threads() == before
    b.stop()  # idempotent
    with pytest.raises(RuntimeError):
        b[0].refuse()
    with pytest.raises(httpx.ConnectError):
        httpx.get(b.urls[0], timeout=2)


def test_backend_process() -> None:
    with BackendProcess(2, delay_ms=[0, 30], fail_pct=[0, 100]) as proc:
        assert len(proc.addresses) == 2
        assert proc.static_url.startswith("static://127.0.0.1:")
        with httpx.Client() as c:
            r = c.get(proc.urls[0] + "/p")
            assert r.status_code == 200
            assert json.loads(r.content)["backend"] == proc.addresses[0]
            assert c.get(proc.urls[1]).status_code == 503
            proc.set(1, fail_pct=0)
            assert c.get(proc.urls[1]).status_code == 200
            with pytest.raises(ValueError):
                proc.set(0, fail_pct=500)
    with pytest.raises(httpx.ConnectError):
        httpx.get(proc.urls[0], timeout=2)


def test_backend_process_refuse_requests_and_reset() -> None:
    with BackendProcess(2, record_limit=10) as proc, httpx.Client() as c:
        c.post(proc.urls[1] + "/in?a=1", content=b"\x00\xff")
        recorded = proc.requests()
        assert [len(r) for r in recorded] == [0, 1]
        assert (recorded[1][0].method, recorded[1][0].target, recorded[1][0].body) == (
            "POST", "/in?a=1", b"\x00\xff")
        proc.reset_counts()
        assert proc.requests() == [[], []]
        proc.refuse(0)
        with pytest.raises(httpx.ConnectError):
            c.get(proc.urls[0])
        proc.refuse(0, False)
        assert c.get(proc.urls[0]).status_code == 200
    with pytest.raises(ValueError, match="fail_pct"):  # the child's error, at start
        BackendProcess(1, fail_pct=500).start()


def test_drop_pct_and_query_overrides(backends: BackendFactory) -> None:
    b = backends(1, drop_pct=100, query_overrides=False)
    with httpx.Client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(b.urls[0])
        b[0].set(drop_pct=0)
        assert c.get(b.urls[0] + "/?status=503&delay_ms=x").status_code == 200
        b[0].set(query_overrides=True)
        assert c.get(b.urls[0] + "/?status=503").status_code == 503
    assert b.count == 3
    with pytest.raises(ValueError, match="drop_pct"):
        b[0].set(drop_pct=101)


def test_retry_after_only_on_error_answers(backends: BackendFactory) -> None:
    b = backends(1, retry_after=5)
    with httpx.Client() as c:
        assert "retry-after" not in c.get(b.urls[0]).headers
        assert c.get(b.urls[0] + "/?status=429").headers["retry-after"] == "5"
