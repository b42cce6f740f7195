"""Deadlines: one budget of time across attempts, clamped timeouts, propagation header."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import httpx
import pytest

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Breaker, Policy

FAST = Policy(backoff=Backoff(base=0.001, max=0.005))


def test_expired_deadline_raises_without_sending(backends: BackendFactory) -> None:
    """Inside an expired meshlib.deadline nothing is sent and DeadlineExceeded is raised."""
    b = backends(1)
    with meshlib.MeshClient(services={"svc": b.static_url}) as client, meshlib.deadline(0):
        with pytest.raises(meshlib.DeadlineExceeded):
            client.get("http://svc/")
    assert b.count == 0


def test_deadline_exceeded_is_an_httpx_timeout(backends: BackendFactory) -> None:
    """except httpx.TimeoutException catches it, as with plain httpx."""
    b = backends(1, delay_ms=500)
    with meshlib.MeshClient(services={"svc": b.static_url}) as client:
        with pytest.raises(httpx.TimeoutException) as info:
            with meshlib.deadline(0.1):
                client.get("http://svc/")
    assert isinstance(info.value, meshlib.DeadlineExceeded)


def test_policy_timeout_spans_all_attempts(backends: BackendFactory) -> None:
    """Three stalled endpoints and timeout=0.3: the call ends near 0.3 s, not 3 x 0.3 s."""
    b = backends(3, delay_ms=2000)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(timeout=0.3)) as client:
        start = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            client.get("http://svc/")
        elapsed = time.monotonic() - start
    assert elapsed < 1.0
    assert b.count == 1  # the single attempt used the whole deadline; no doomed retry


def test_attempt_timeout_bounds_each_attempt_and_retries_elsewhere(
        backends: BackendFactory) -> None:
    """attempt_timeout=0.1 cuts a stalled attempt and retries on the healthy endpoint."""
    b = backends(2, delay_ms=[3000, 0])
    policy = FAST.replace(timeout=2, attempt_timeout=0.1, balancer="round-robin")
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(4):
            response = client.get("http://svc/")
            assert response.status_code == 200
            assert response.extensions["meshlib"]["endpoint"] == b.addresses[1]


def test_scoped_deadline_is_stricter_than_the_policy(backends: BackendFactory) -> None:
    """meshlib.deadline(0.2) beats Policy.timeout=10 and shows in x-mesh-timeout-ms."""
    b = backends(1)
    with meshlib.MeshClient(services={"svc": b.static_url}) as client, meshlib.deadline(0.2):
        response = client.get("http://svc/")
    left = int(response.json()["headers"]["x-mesh-timeout-ms"])
    assert 0 < left <= 200


def test_httpx_timeouts_are_clamped_to_the_deadline(backends: BackendFactory) -> None:
    """A client timeout of 30 s cannot outlive a 0.2 s deadline."""
    b = backends(1, delay_ms=1000)
    with meshlib.MeshClient(services={"svc": b.static_url}, timeout=30,
                            policy=FAST.replace(timeout=0.2)) as client:
        start = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            client.get("http://svc/")
    assert time.monotonic() - start < 0.8


def test_deadline_aware_admission_skips_a_doomed_retry(backends: BackendFactory) -> None:
    """With 0.2 s left and endpoints that take 0.3 s, a failed attempt is not retried."""
    b = backends(2, delay_ms=300)
    policy = FAST.replace(breaker=Breaker(failures=1000))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        with meshlib.policy(balancer="round-robin"):
            for _ in range(4):  # learn that both endpoints take ~0.3 s
                client.get("http://svc/")
        for server in b:
            server.delay_ms = 0
            server.status = 503
        b.reset_counts()
        with meshlib.deadline(0.2):
            response = client.get("http://svc/")
    assert response.status_code == 503
    assert b.count == 1  # the retry was judged unable to finish and not sent


async def test_async_deadline_spans_attempts(backends: BackendFactory) -> None:
    """The async client honours the deadline the same way."""
    b = backends(2, delay_ms=2000)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url},
                                       policy=FAST.replace(timeout=0.3)) as client:
        start = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            await client.get("http://svc/")
    assert time.monotonic() - start < 1.0


async def test_async_scoped_deadline_follows_the_task(backends: BackendFactory) -> None:
    """A deadline set in a task applies to the mesh calls that task makes."""
    b = backends(1)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}) as client:
        @meshlib.deadline(0.25)
        async def handler() -> int:
            response = await client.get("http://svc/")
            return int(response.json()["headers"]["x-mesh-timeout-ms"])

        left = await asyncio.create_task(handler())
    assert 0 < left <= 250


def _trickling_server() -> tuple[socket.socket, threading.Event]:
    """A server that sends one header line every 0.2 s: no single read ever times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for i in range(30):
                    if stop.wait(0.2):
                        break
                    try:
                        conn.sendall(f"x-trickle-{i}: y\r\n".encode())
                    except OSError:
                        break

    threading.Thread(target=serve, daemon=True).start()
    return server, stop


def test_deadline_bounds_an_attempt_that_trickles_its_headers() -> None:
    """Each read is quick, but the attempt as a whole still ends at the deadline."""
    server, stop = _trickling_server()
    port = server.getsockname()[1]
    try:
        with meshlib.MeshClient(services={"svc": f"static://127.0.0.1:{port}"},
                                policy=FAST.replace(timeout=0.8, attempt_timeout=0.4,
                                                    retries=0)) as client:
            start = time.monotonic()
            with pytest.raises(httpx.TimeoutException):
                client.get("http://svc/")
            assert time.monotonic() - start < 1.5
    finally:
        stop.set()
        server.close()


async def test_async_deadline_bounds_an_attempt_that_trickles_its_headers() -> None:
    """The async client ends a trickling attempt at its deadline too."""
    server, stop = _trickling_server()
    port = server.getsockname()[1]
    try:
        async with meshlib.AsyncMeshClient(services={"svc": f"static://127.0.0.1:{port}"},
                                           policy=FAST.replace(timeout=0.6)) as client:
            start = time.monotonic()
            with pytest.raises(httpx.TimeoutException):
                await client.get("http://svc/")
            assert time.monotonic() - start < 1.5
    finally:
        stop.set()
        server.close()


def test_a_callers_short_deadline_does_not_open_breakers(backends: BackendFactory) -> None:
    """Timeouts caused by a caller's tight deadline are not held against healthy endpoints."""
    b = backends(2, delay_ms=50)
    policy = FAST.replace(breaker=Breaker(failures=3, reset_timeout=30))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        with meshlib.policy(balancer="round-robin"):
            for _ in range(4):  # both endpoints are known to answer in about 50 ms
                client.get("http://svc/")
        for _ in range(12):
            with meshlib.deadline(0.02), pytest.raises(httpx.TimeoutException):
                client.get("http://svc/")
        breakers = {e["breaker"] for e in client.snapshot()["services"]["svc"]["endpoints"]}
        assert breakers == {"closed"}
        assert client.get("http://svc/").status_code == 200  # a patient caller is served


def test_a_hung_endpoint_is_ejected_even_by_callers_with_short_deadlines(
        backends: BackendFactory) -> None:
    """A stalled endpoint runs every caller into its deadline: that is its fault, not theirs."""
    b = backends(2, mode=["stall", "normal"])
    policy = FAST.replace(timeout=0.2, retries=0, balancer="round-robin",
                          breaker=Breaker(failures=3, reset_timeout=30))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(10):
            with contextlib.suppress(httpx.TimeoutException):
                client.get("http://svc/")
        breakers = {e["endpoint"]: e["breaker"]
                    for e in client.snapshot()["services"]["svc"]["endpoints"]}
    assert breakers == {b.addresses[0]: "open", b.addresses[1]: "closed"}


def test_the_deadline_header_replaces_the_callers_own_and_leaves_the_request_alone() -> None:
    """A caller's own `X-Mesh-Timeout-Ms` (any case, even repeated) is replaced by the
    mesh's, sent once; the caller's other headers go as they were, and the request
    object the caller holds never gets the mesh's header."""
    with meshlib.testing.Fleet(1) as fleet, meshlib.MeshClient(
            services={"svc": fleet.url}, policy=Policy(timeout=2.0)) as client:
        request = client.build_request(
            "GET", "http://svc/", headers=[("X-Mesh-Timeout-Ms", "999999"),
                                           ("x-mesh-timeout-ms", "888888"), ("X-Other", "kept")])
        response = client.send(request)
        assert response.status_code == 200
        seen = fleet.hits()[0][-1].headers
        assert 0 < int(seen["x-mesh-timeout-ms"]) <= 2000  # one value: not joined with ", "
        assert seen["x-other"] == "kept"
        assert request.headers.get_list("x-mesh-timeout-ms") == ["999999", "888888"]


_WITHOUT_RESPX = r'''
import asyncio, socket, sys, threading, time
import httpx, meshlib

def serve(conn_handler):
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(8)
    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=conn_handler, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return server

def trickle(conn):
    conn.recv(65536); conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for i in range(30):
        time.sleep(0.2)
        try: conn.sendall(f"x-trickle-{i}: y\r\n".encode())
        except OSError: return

def hang(conn):
    conn.recv(65536); time.sleep(10)

async def timed(client, **kwargs):
    start = time.monotonic()
    try:
        await client.get("http://svc/", **kwargs)
    except httpx.TimeoutException:
        return time.monotonic() - start
    raise SystemExit("no timeout")

async def main():
    policy = meshlib.Policy(timeout=0.6, retries=0)
    for handler in (trickle, hang):
        server = serve(handler)
        port = server.getsockname()[1]
        one = httpx.Limits(max_connections=1)
        async with meshlib.AsyncMeshClient(services={"svc": f"static://127.0.0.1:{port}"},
                                           policy=policy, limits=one) as client:
            print(handler.__name__, round(await timed(client), 3))
            # the pool's one connection is held by a hung attempt: waiting for it ends too
            first = asyncio.ensure_future(client.get("http://svc/"))
            await asyncio.sleep(0.05)
            print(handler.__name__ + "-pool", round(await timed(client), 3))
            try:
                await first
            except httpx.TimeoutException:
                pass
        server.close()
    print("respx", "respx" in sys.modules)

asyncio.run(main())
'''


def test_async_http1_attempts_end_at_the_deadline_without_a_cancelling_timer() -> None:
    """Without respx loaded, an async HTTP/1.1 attempt is not cancelled by a timer of
    its own: every wait it can make (a read of a trickling answer, an answer that
    never comes, a full pool) has its timeout clamped to the deadline, so each
    still ends there. Run in a child interpreter, since this session loads respx."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _WITHOUT_RESPX], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = dict(line.rsplit(" ", 1) for line in result.stdout.split("\n") if line)
    assert lines["respx"] == "False"
    for name in ("trickle", "trickle-pool", "hang", "hang-pool"):
        assert 0.5 <= float(lines[name]) < 1.2, result.stdout
