"""An attacker's review of the fail-safe guarantees (docs/reliability.md, "Faults and
bad inputs tried"): each test reproduces an attack with real loopback servers."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import meshlib
import meshlib._discovery._http as discovery_http
from conftest import BackendFactory
from meshlib import Policy
from meshlib._discovery._consul import ConsulDiscovery
from meshlib._discovery._etcd import EtcdDiscovery, b64

# -- a hostile registry: answers headers, then whatever a mode says -------------------------

Mode = Callable[[socket.socket, str, "HostileRegistry"], None]


class HostileRegistry:
    """A loopback HTTP/1.1 server whose answers are chosen per request path by ``modes``
    (``path prefix -> writer``); every writer is bounded in bytes and time."""

    def __init__(self, modes: dict[str, Mode]) -> None:
        self.modes = modes
        self.sent = 0  # body bytes written, all connections
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

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
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                for prefix, mode in self.modes.items():
                    if path.startswith(prefix):
                        mode(conn, path, self)
                        return
                conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            except OSError:
                return

    def write(self, conn: socket.socket, data: bytes) -> bool:
        """Write body bytes; False once the client has gone (or the server stops)."""
        if self.stopping.is_set():
            return False
        try:
            conn.sendall(data)
        except OSError:
            return False
        self.sent += len(data)
        return True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.stopping.set()
        self.acceptor.join(5)
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def hostile() -> Iterator[Callable[[dict[str, Mode]], HostileRegistry]]:
    servers: list[HostileRegistry] = []

    def start(modes: dict[str, Mode]) -> HostileRegistry:
        server = HostileRegistry(modes)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


HEADERS = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-consul-index: 7\r\n"
           b"connection: close\r\n\r\n")


def trickle(conn: socket.socket, path: str, server: HostileRegistry) -> None:
    """Headers, then one byte of a JSON answer every 0.1 s (for 20 s at most)."""
    conn.sendall(HEADERS)
    if not server.write(conn, b"["):
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.write(conn, b" "):
        time.sleep(0.1)


ENDLESS_LIMIT = 64 * 1024 * 1024


def endless(conn: socket.socket, path: str, server: HostileRegistry) -> None:
    """Headers, then a body that never ends (64 MiB at most), as fast as it is read."""
    conn.sendall(HEADERS)
    block = b" " * 65536
    while server.sent < ENDLESS_LIMIT and server.write(conn, block):
        pass


# -- discovery reads are bounded in time and size -------------------------------------------


@pytest.mark.parametrize("kind", ["etcd", "consul"])
def test_registry_trickling_its_answer_fails_within_a_bounded_time(
        kind: str, hostile: Callable[[dict[str, Mode]], HostileRegistry],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that sends its answer a byte every 0.1 s (inside every per-read
    timeout) used to hold the discovery read for ever: no answer, no failure, and a
    request could only say "has not answered". Now the whole answer must arrive within
    a bound; the request's NoEndpointsError names that failure."""
    monkeypatch.setattr(EtcdDiscovery, "REQUEST_TIMEOUT", 0.3)
    monkeypatch.setattr(ConsulDiscovery, "REQUEST_TIMEOUT", 0.3)
    monkeypatch.setattr(ConsulDiscovery, "WAIT", 0.3)
    server = hostile({"/": trickle})
    url = (f"etcd://{server.address}/mesh/users" if kind == "etcd"
           else f"consul://{server.address}/users")
    with meshlib.MeshClient(services={"users": url}, policy=Policy(timeout=3)) as client:
        with pytest.raises(meshlib.NoEndpointsError) as caught:
            client.get("http://users/")
    message = str(caught.value)
    assert "last error" in message, message
    assert "no complete answer within" in message


@pytest.mark.parametrize("kind", ["etcd", "consul"])
def test_registry_sending_an_endless_answer_is_cut_at_the_size_limit(
        kind: str, hostile: Callable[[dict[str, Mode]], HostileRegistry],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry (or anything on its port) that sends an endless body used to be read
    whole into memory. Now reading stops at the size limit (1 MiB here, 32 MiB by
    default): far less than the server offered is read, and the failure says why."""
    monkeypatch.setattr(discovery_http, "MAX_ANSWER_BYTES", 1024 * 1024)
    server = hostile({"/": endless})
    url = (f"etcd://{server.address}/mesh/users" if kind == "etcd"
           else f"consul://{server.address}/users")
    with meshlib.MeshClient(services={"users": url}, policy=Policy(timeout=3)) as client:
        with pytest.raises(meshlib.NoEndpointsError) as caught:
            client.get("http://users/")
    message = str(caught.value)
    assert "larger than the 1048576 byte limit" in message, message
    assert server.sent < ENDLESS_LIMIT / 2  # the client hung up early


def test_etcd_watch_line_that_never_ends_is_cut_and_the_set_kept(
        hostile: Callable[[dict[str, Mode]], HostileRegistry], backends: BackendFactory,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The etcd watch stream sending one endless line (no newline) used to be buffered
    whole. Now the line is cut at the limit, the watch counts as broken (logged), and
    the endpoints of the range read keep serving."""
    monkeypatch.setattr(discovery_http, "MAX_ANSWER_BYTES", 1024 * 1024)
    b = backends(1)
    host, port = b.addresses[0].rsplit(":", 1)
    value = b64(json.dumps({"host": host, "port": int(port)}).encode())
    range_body = json.dumps({"header": {"revision": "5"},
                             "kvs": [{"key": b64(b"/mesh/users/a"), "value": value}]}).encode()

    def answer_range(conn: socket.socket, path: str, server: HostileRegistry) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(range_body)
                     + range_body)

    server = hostile({"/v3/kv/range": answer_range, "/v3/watch": endless})
    caplog.set_level(logging.DEBUG, logger="meshlib")
    with meshlib.MeshClient(services={"users": f"etcd://{server.address}/mesh/users"},
                            policy=Policy(timeout=3)) as client:
        assert client.get("http://users/").status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "longer than 1048576 characters" not in caplog.text:
            time.sleep(0.05)
        assert "longer than 1048576 characters" in caplog.text
        assert client.get("http://users/").status_code == 200
    assert server.sent < ENDLESS_LIMIT / 2


# -- cancellation never leaves a breaker's trial slot taken ---------------------------------


def _breakers(client: meshlib.AsyncMeshClient | meshlib.MeshClient) -> dict[str, str]:
    return {e["endpoint"]: e["breaker"]
            for e in client.snapshot()["services"]["svc"]["endpoints"]}


def _inflight(client: meshlib.AsyncMeshClient | meshlib.MeshClient) -> int:
    return sum(e["inflight"] for e in client.snapshot()["services"]["svc"]["endpoints"])


async def test_caller_cancelled_while_a_retry_closes_the_stale_answer_frees_the_trial(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry whose pick took an ejected endpoint's single half-open trial, and whose
    caller is cancelled while the 503 it replaces is being closed, used to keep the
    trial slot for ever: that endpoint was never tried again (ejected for good, even
    healthy). Now the slot is given back; the healed endpoint closes its breaker."""
    import asyncio

    import meshlib._async.transport as transport_module
    from meshlib.testing import Fleet

    closing = asyncio.Event()
    real_discard = transport_module.adiscard

    async def slow_discard(response: object) -> None:  # a close that takes a while
        closing.set()
        await asyncio.sleep(2)
        await real_discard(response)  # type: ignore[arg-type]

    with Fleet(2) as fleet:
        b = fleet.endpoints[1]
        policy = Policy(timeout=5, retries=2,
                        breaker=meshlib.Breaker(failures=1, reset_timeout=0.3))
        async with meshlib.AsyncMeshClient(services={"svc": fleet.url}, policy=policy) as client:
            fleet.set(1, refuse=True)
            for _ in range(20):  # until b's breaker opens on a refused connection
                assert (await client.get("http://svc/")).status_code == 200
                if _breakers(client)[b] == "open":
                    break
            assert _breakers(client)[b] == "open"
            fleet.set(1, refuse=False)  # b heals: its trial would succeed
            fleet.set(0, error_rate=1.0, latency=0.5)  # a: a slow 503
            monkeypatch.setattr(transport_module, "adiscard", slow_discard)
            # the first attempt goes to a (b is not due yet); its 503 comes after b is
            # due, so the retry takes b's trial, then closes the 503 (slowly)
            task = asyncio.create_task(client.get("http://svc/"))
            await asyncio.wait_for(closing.wait(), 3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            monkeypatch.setattr(transport_module, "adiscard", real_discard)
            fleet.set(0, error_rate=0.0, latency=0.0)
            await asyncio.sleep(0.05)
            for _ in range(20):
                assert (await client.get("http://svc/")).status_code == 200
            assert _breakers(client)[b] == "closed", "b's trial slot was never given back"
            assert _inflight(client) == 0


# -- hostile deadline headers through the server middleware ---------------------------------


@pytest.mark.parametrize("header", ["x-mesh-timeout-ms", "grpc-timeout",
                                    "x-envoy-expected-rq-timeout-ms"])
def test_a_header_of_thousands_of_values_is_not_parsed_value_by_value(
        header: str, backends: BackendFactory, caplog: pytest.LogCaptureFixture) -> None:
    """A caller sending one deadline header made of 8,000 comma-separated values made the
    middleware parse (and log) each of them on every request: about 60 ms of CPU per
    16 KiB header, a cheap way to burn a server's CPU. Now only the first 8 values of
    each header are read; the request is served without a deadline."""
    from meshlib.asgi import MeshMiddleware
    from test_asgi import make_app, serve_asgi

    backend = backends(1)
    app = make_app(f"static://{backend.servers[0].address}")
    caplog.set_level(logging.DEBUG, logger="meshlib.asgi")
    with serve_asgi(MeshMiddleware(app)) as url:
        response = httpx.get(f"{url}/seen", headers={header: "x," * 8000}, timeout=10)
        assert response.status_code == 200
        assert response.json()["left_ms"] is None
        records = [r for r in caplog.records if r.name == "meshlib.asgi"]
        assert 1 <= len(records) <= 9, len(records)
        # the same limit for repeated header lines: 8 valid ones are still read
        response = httpx.get(f"{url}/seen", headers=[(header, "junk")] * 7
                             + [(header, "250" if header != "grpc-timeout" else "250m")],
                             timeout=10)
        assert 0 < response.json()["left_ms"] <= 250


# -- configuration --------------------------------------------------------------------------


def test_retry_on_is_checked_as_it_is_read_and_bounded() -> None:
    """``Policy(retry_on=range(10**9))`` used to build a billion-element tuple (the
    process was killed for memory) before finding that 0 is not a status code, and an
    endless iterator never returned; ``retry_on="503"`` complained about ``'5'``. Now
    values are checked as they come, at most 500 are read, and a string is refused
    as a whole."""
    from collections.abc import Iterator as It

    def bad_first() -> It[int]:
        yield 0
        raise AssertionError("retry_on was read past its first bad value")

    def endless_503() -> It[int]:
        for _ in range(10_000):
            yield 503
        raise AssertionError("retry_on was read without a bound")

    with pytest.raises(meshlib.ConfigError, match="got 0"):
        Policy(retry_on=bad_first())  # type: ignore[arg-type]
    with pytest.raises(meshlib.ConfigError, match="more than 500 status codes"):
        Policy(retry_on=endless_503())  # type: ignore[arg-type]
    with pytest.raises(meshlib.ConfigError, match="got '503'"):
        Policy(retry_on="503")  # type: ignore[arg-type]
    assert Policy(retry_on=range(500, 505)).retry_on == (500, 501, 502, 503, 504)  # type: ignore[arg-type]


async def test_callers_cancelled_in_every_phase_leave_nothing_behind(tmp_path: Path) -> None:
    """Callers cancelled while waiting for discovery, in a retry's backoff sleep, and in
    a hedge race: in-flight counts return to 0, the backoff's budget token is given
    back, breakers stay closed, and the client goes on serving."""
    import asyncio

    from meshlib.testing import Fleet

    def state(client: meshlib.AsyncMeshClient) -> tuple[list[tuple[int, str]], float]:
        svc = client.snapshot()["services"]["svc"]
        return ([(e["inflight"], e["breaker"]) for e in svc["endpoints"]],
                svc["retry_budget"]["balance"])

    async def cancel_after(client: meshlib.AsyncMeshClient, n: int, delay: float) -> None:
        tasks = [asyncio.create_task(client.get("http://svc/")) for _ in range(n)]
        await asyncio.sleep(delay)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results

    with Fleet(2) as fleet:
        # in the backoff sleep (a 503 with Retry-After: 1)
        fleet.set(error_rate=1.0, retry_after="1")
        policy = Policy(timeout=5, retries=2, breaker=meshlib.Breaker(failures=1000))
        async with meshlib.AsyncMeshClient(services={"svc": fleet.url}, policy=policy) as c:
            _, before = state(c)
            await cancel_after(c, 5, 0.3)
            endpoints, after = state(c)
            assert endpoints == [(0, "closed"), (0, "closed")]
            assert after >= before  # 5 deposits; the 5 retry tokens were given back
        # in a hedge race (both endpoints slow)
        fleet.set(error_rate=0.0, retry_after=None, latency=1.0)
        policy = Policy(timeout=5, retries=2, hedge=meshlib.Hedge(delay=0.05))
        async with meshlib.AsyncMeshClient(services={"svc": fleet.url}, policy=policy) as c:
            await cancel_after(c, 20, 0.3)
            await asyncio.sleep(0.1)
            assert state(c)[0] == [(0, "closed"), (0, "closed")]
            fleet.set(latency=0.0)
            assert (await c.get("http://svc/")).status_code == 200
        # in the wait for discovery's first good answer
        path = tmp_path / "svc.json"
        async with meshlib.AsyncMeshClient(services={"svc": f"file://{path}"},
                                           policy=Policy(timeout=5)) as c:
            await cancel_after(c, 5, 0.3)
            host, port = fleet.endpoints[0].rsplit(":", 1)
            path.write_text(json.dumps([{"host": host, "port": int(port)}]))
            assert (await c.get("http://svc/")).status_code == 200
            assert state(c)[0] == [(0, "closed")]


# -- found, not fixed here: the body read is not bounded by the deadline -------------------


def _trickle_body(conn: socket.socket, path: str, server: HostileRegistry) -> None:
    """A 200 whose 100-byte body comes a byte every 0.3 s (for 4 s at most)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
    end = time.monotonic() + 4
    while time.monotonic() < end and server.write(conn, b"x"):
        time.sleep(0.3)


@pytest.mark.xfail(strict=True, reason="the deadline bounds an attempt's response headers; "
                   "its body is bounded only by per-read timeouts (docs/guide.md), so an "
                   "endpoint trickling its body outlives Policy.timeout")
def test_an_endpoint_trickling_its_body_cannot_outlive_the_deadline(
        hostile: Callable[[dict[str, Mode]], HostileRegistry]) -> None:
    """``client.get`` with ``Policy(timeout=1)`` against an endpoint that sends its
    headers at once and then a body byte every 0.3 s: today the call lasts as long as
    the endpoint keeps trickling (here 4 s, the server's own limit; for ever for an
    endless one)."""
    server = hostile({"/": _trickle_body})
    with meshlib.MeshClient(services={"svc": f"static://{server.address}"},
                            policy=Policy(timeout=1)) as client:
        started = time.monotonic()
        with pytest.raises(httpx.TransportError):
            client.get("http://svc/")
        assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("url", ["static://a b:1", "static://bad\x00host:1",
                                 "static://127.0.0.1:1,x/y:2"])
def test_static_hosts_with_spaces_or_control_characters_are_config_errors(url: str) -> None:
    """``static://a b:1`` used to be accepted (every request then failed to resolve
    ``'a b'`` and counted against the breaker); ``file://`` and etcd entries already
    refused such hosts. Now it is a ConfigError naming the host."""
    with pytest.raises(meshlib.ConfigError, match="is not a host name or IP address"):
        meshlib.MeshClient(services={"svc": url})


async def test_async_clients_dropped_without_aclose_leave_no_task_or_connection(
        tmp_path: Path) -> None:
    """An AsyncMeshClient created per request and dropped without ``aclose()`` (a
    common mistake) used to leave its discovery task polling for ever on the loop,
    holding the client, its pools and their connections: 20 clients, 20 tasks and 40
    file descriptors for good. Now the tasks hold the client weakly: when it is
    collected, its discovery stops and its pools close (as the sync client already did)."""
    import asyncio
    import gc
    import os

    from meshlib.testing import Fleet

    with Fleet(1) as fleet:
        host, port = fleet.endpoints[0].rsplit(":", 1)
        path = tmp_path / "svc.json"
        path.write_text(json.dumps([{"host": host, "port": int(port)}]))
        tasks_before = len(asyncio.all_tasks())
        fds_before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            client = meshlib.AsyncMeshClient(services={"svc": f"file://{path}"})
            assert (await client.get("http://svc/")).status_code == 200
            del client
        gc.collect()
        for _ in range(50):
            await asyncio.sleep(0.05)
            if len(asyncio.all_tasks()) <= tasks_before:
                break
        assert len(asyncio.all_tasks()) <= tasks_before
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2


@pytest.mark.parametrize("kvs", ["garbage", [1, 2], {"a": 1}])
def test_etcd_answer_of_the_wrong_shape_is_named(
        kvs: object, hostile: Callable[[dict[str, Mode]], HostileRegistry]) -> None:
    """An etcd range answer whose ``kvs`` is a string, a list of numbers or an object
    used to raise ``AttributeError: 'str' object has no attribute 'get'`` inside the
    parser (caught only by the discovery runner's last-resort restart). Now it is an
    ordinary discovery failure that says what is wrong."""
    body = json.dumps({"header": {"revision": "3"}, "kvs": kvs}).encode()

    def answer(conn: socket.socket, path: str, server: HostileRegistry) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)

    server = hostile({"/": answer})
    with meshlib.MeshClient(services={"svc": f"etcd://{server.address}/mesh/svc"},
                            policy=Policy(timeout=1)) as client:
        with pytest.raises(meshlib.NoEndpointsError, match="'kvs' that is not a list of objects"):
            client.get("http://svc/")


def test_etcd_value_nested_too_deeply_is_skipped(
        hostile: Callable[[dict[str, Mode]], HostileRegistry], backends: BackendFactory) -> None:
    """A key whose value is ``[[[[...`` 100,000 deep is skipped with a warning (a
    ``RecursionError`` used to escape the parser); the other keys serve."""
    b = backends(1)
    host, port = b.addresses[0].rsplit(":", 1)
    good = b64(json.dumps({"host": host, "port": int(port)}).encode())
    body = json.dumps({"header": {"revision": "3"}, "kvs": [
        {"key": b64(b"/mesh/svc/a"), "value": good},
        {"key": b64(b"/mesh/svc/b"), "value": b64(b"[" * 100_000)}]}).encode()

    def answer(conn: socket.socket, path: str, server: HostileRegistry) -> None:
        if not path.startswith("/v3/kv/range"):
            return  # no watch: the connection just closes
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)

    server = hostile({"/": answer})
    with meshlib.MeshClient(services={"svc": f"etcd://{server.address}/mesh/svc"},
                            policy=Policy(timeout=3)) as client:
        assert client.get("http://svc/").status_code == 200
        endpoints = client.snapshot()["services"]["svc"]["endpoints"]
        assert [e["endpoint"] for e in endpoints] == [b.addresses[0]]


@pytest.mark.parametrize("kind", ["etcd", "consul"])
def test_a_registry_answer_nested_too_deeply_is_a_named_failure(
        kind: str, hostile: Callable[[dict[str, Mode]], HostileRegistry]) -> None:
    """A whole etcd or Consul answer ``[[[[...`` 100,000 deep used to raise
    RecursionError out of the parser (caught only by the runner's last-resort
    restart). Now it is an ordinary failure that says what is wrong."""
    body = b"[" * 100_000

    def answer(conn: socket.socket, path: str, server: HostileRegistry) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"x-consul-index: 7\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                     % len(body) + body)

    server = hostile({"/": answer})
    url = (f"etcd://{server.address}/mesh/svc" if kind == "etcd"
           else f"consul://{server.address}/svc")
    with meshlib.MeshClient(services={"svc": url}, policy=Policy(timeout=1)) as client:
        with pytest.raises(meshlib.NoEndpointsError, match="nested too deeply to read"):
            client.get("http://svc/")


def test_a_kubernetes_list_with_a_continue_token_of_the_wrong_type_is_named(
        hostile: Callable[[dict[str, Mode]], HostileRegistry],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A list answer whose ``metadata.continue`` is an object used to raise TypeError
    inside httpx (caught only by the runner's last-resort restart). Now it is an
    ordinary discovery failure that says what is wrong."""
    body = json.dumps({"items": [], "metadata": {"resourceVersion": "1",
                                                 "continue": {"x": 1}}}).encode()

    def answer(conn: socket.socket, path: str, server: HostileRegistry) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)

    server = hostile({"/": answer})
    monkeypatch.setenv("MESHLIB_K8S_API", f"http://{server.address}")
    with meshlib.MeshClient(services={"svc": "k8s://svc.default:http"},
                            policy=Policy(timeout=1)) as client:
        with pytest.raises(meshlib.NoEndpointsError,
                           match=r"metadata\.continue is not a string"):
            client.get("http://svc/")
