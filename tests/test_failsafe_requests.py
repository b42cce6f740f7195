"""What a request carries and how it is replayed: uploads fail over, redirects leave the
mesh clean, and the caller's own ``httpx.Request`` is never written into (real servers)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

import meshlib
from meshlib import Policy
from meshlib.testing import Fleet

_MESH_HEADERS = ("x-mesh-timeout-ms", "grpc-timeout")


class _Redirector(BaseHTTPRequestHandler):
    """Answers every request with ``307`` to the URL the server was given."""

    location = ""

    def do_GET(self) -> None:
        self.send_response(307)
        self.send_header("Location", self.server.location)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """A real HTTP server on 127.0.0.1 that redirects to ``server.location``; stopped after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    server.daemon_threads = True
    server.location = ""  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server, f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10.0)


def test_a_redirect_to_a_pass_through_host_carries_no_mesh_header(
        redirector: tuple[ThreadingHTTPServer, str]) -> None:
    """A mesh endpoint redirects to a host outside the mesh: the redirected request has
    no x-mesh-timeout-ms (nor grpc-timeout); the caller's request was never stamped."""
    server, address = redirector
    with Fleet(1) as outside:
        server.location = f"http://{outside.endpoints[0]}/landed"  # type: ignore[attr-defined]
        policy = Policy(retries=0, propagate_grpc_timeout=True)
        with meshlib.MeshClient(services={"svc": f"static://{address}"}, policy=policy,
                                follow_redirects=True) as client:
            request = client.build_request("GET", "http://svc/start")
            response = client.send(request)
        assert response.status_code == 200
        assert response.history[0].status_code == 307
        hits = outside.hits()[0]
    assert [h.path for h in hits] == ["/landed"]
    assert not [name for name in _MESH_HEADERS if name in hits[0].headers]
    assert not [name for name in _MESH_HEADERS if name in request.headers]


async def test_a_redirect_to_a_pass_through_host_carries_no_mesh_header_async(
        redirector: tuple[ThreadingHTTPServer, str]) -> None:
    """The same with AsyncMeshClient."""
    server, address = redirector
    async with Fleet(1) as outside:
        server.location = f"http://{outside.endpoints[0]}/landed"  # type: ignore[attr-defined]
        async with meshlib.AsyncMeshClient(services={"svc": f"static://{address}"},
                                           policy=Policy(retries=0)) as client:
            response = await client.get("http://svc/start", follow_redirects=True)
        assert response.status_code == 200
        hits = outside.hits()[0]
    assert "x-mesh-timeout-ms" not in hits[0].headers


def test_each_attempt_gets_its_own_deadline_header() -> None:
    """Every attempt still carries its own x-mesh-timeout-ms (stamped on its copy)."""
    meshlib.testing.set_testing(True)
    with Fleet(2, error_rate=1.0, status=503) as fleet:
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=Policy(retries=1, balancer="round-robin")) as client:
            assert client.get("http://svc/").status_code == 503
        hits = [h for endpoint in fleet.hits() for h in endpoint]
    assert len(hits) == 2
    assert all(0 < int(h.headers["x-mesh-timeout-ms"]) <= 10_000 for h in hits)


_UPLOAD = {"f": ("report.csv", b"a,b\n" * 5000, "text/csv")}


def test_a_multipart_upload_fails_over_when_a_connection_is_refused() -> None:
    """files= is replayed on another endpoint after a refused connection (as bytes are):
    every upload arrives whole, once."""
    with Fleet(2) as fleet:
        fleet.set(0, refuse=True)
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=Policy(retries=2, balancer="round-robin")) as client:
            for _ in range(4):
                response = client.post("http://svc/up", files=_UPLOAD, data={"k": "v"})
                assert response.status_code == 200
        hits = fleet.hits()
    assert hits[0] == [] and len(hits[1]) == 4
    assert all(b"a,b\n" * 5000 in h.body and b'name="k"' in h.body for h in hits[1])


@pytest.mark.parametrize("pool", ["httpcore", "aiohttp"])
async def test_a_multipart_upload_fails_over_when_a_connection_is_refused_async(
        pool: str) -> None:
    """The same with AsyncMeshClient, on each pool."""
    async with Fleet(2) as fleet:
        fleet.set(0, refuse=True)
        async with meshlib.AsyncMeshClient(services={"svc": fleet.url}, pool=pool,
                                           policy=Policy(retries=2,
                                                         balancer="round-robin")) as client:
            for _ in range(4):
                response = await client.post("http://svc/up", files=_UPLOAD)
                assert response.status_code == 200
        hits = fleet.hits()
    assert hits[0] == [] and len(hits[1]) == 4
    assert all(b"a,b\n" * 5000 in h.body for h in hits[1])


def test_a_multipart_upload_is_not_hedged() -> None:
    """A multipart upload reads its files: it is never sent twice at once (no hedge)."""
    with Fleet(2, latency=0.2) as fleet:
        policy = Policy(retries=2, hedge=meshlib.Hedge(delay=0.01), idempotent=True)
        with meshlib.MeshClient(services={"svc": fleet.url}, policy=policy) as client:
            response = client.post("http://svc/up", files=_UPLOAD)
        assert response.status_code == 200
        assert response.extensions["meshlib"]["hedged"] is False
        assert sum(len(h) for h in fleet.hits()) == 1


def test_a_one_shot_stream_is_still_never_replayed() -> None:
    """A generator body is not replayable: a refused connection is not retried with it."""
    def body() -> Iterator[bytes]:
        yield b"once"

    with Fleet(1) as fleet:
        fleet.set(0, refuse=True)
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=Policy(retries=2)) as client:
            with pytest.raises(httpx.ConnectError):
                client.post("http://svc/up", content=body())


async def test_a_stream_the_clients_own_http2_connection_refuses_is_sent_elsewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """h2's "Max outbound streams" (httpcore's stream count can drift from h2's under
    cancellation) means nothing was sent: a POST is sent once, on another endpoint, and
    the refusal counts against no endpoint."""
    from meshlib._async.pool import AsyncEndpointPool

    real_send = AsyncEndpointPool.send
    refused: list[str] = []

    async def send(self: AsyncEndpointPool, request: httpx.Request, *args: Any,
                   **kwargs: Any) -> httpx.Response:
        if not refused:
            refused.append(request.url.netloc.decode())
            raise httpx.LocalProtocolError("Max outbound streams is 100, 100 open")
        return await real_send(self, request, *args, **kwargs)

    monkeypatch.setattr(AsyncEndpointPool, "send", send)
    with Fleet(2) as fleet:
        policy = Policy(breaker=meshlib.Breaker(failures=1))
        async with meshlib.AsyncMeshClient(services={"svc": fleet.url}, policy=policy) as client:
            response = await client.post("http://svc/orders", content=b"{}")
            assert response.status_code == 200
            assert response.extensions["meshlib"]["attempts"] == 2
            assert response.extensions["meshlib"]["endpoint"] != refused[0]
            snap = client.snapshot()["services"]["svc"]
        hits = [len(h) for h in fleet.hits()]
    assert sum(hits) == 1  # sent once
    assert {e["breaker"] for e in snap["endpoints"]} == {"closed"}
    assert snap["routes"].get("POST /orders", {}).get("consecutive_failures", 0) == 0


async def test_httpcores_broken_http2_stream_count_surfaces_as_the_error_it_hid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When httpcore's HTTP/2 stream count breaks while it cleans up a failed stream (its
    semaphore "released too many times", the family of encode/httpcore#1022), it raises
    a bare `ValueError` in place of the error it was handling. The caller gets that
    error instead, as httpx's: here a read timeout, and for an attempt cut at its
    deadline the deadline's timeout; never the `ValueError`."""
    import asyncio

    import httpcore

    async def read_timeout(self: Any, request: Any) -> Any:
        try:
            raise httpcore.ReadTimeout("timed out")
        except httpcore.ReadTimeout:
            raise ValueError("semaphore released too many times") from None

    async def cut_at_the_deadline(self: Any, request: Any) -> Any:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:  # the attempt's own deadline cancels it
            raise ValueError("semaphore released too many times") from None

    with Fleet(1) as fleet:
        policy = Policy(retries=0, timeout=0.3)
        for broken, expected in ((read_timeout, httpx.ReadTimeout),
                                 (cut_at_the_deadline, httpx.TimeoutException)):
            monkeypatch.setattr(httpcore.AsyncConnectionPool, "handle_async_request", broken)
            async with meshlib.AsyncMeshClient(services={"svc": fleet.url},
                                               policy=policy) as client:
                with pytest.raises(expected) as caught:
                    await client.get("http://svc/")
                assert not isinstance(caught.value, ValueError)


async def test_a_broken_stream_count_hiding_another_is_reported_as_possibly_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """httpcore's clean-up can meet the broken stream count while handling the same
    `ValueError` from reading the server's settings mid-answer: with nothing else
    behind them the request may have been sent, so a POST fails with
    `httpx.RemoteProtocolError` once and is not sent again."""
    import httpcore

    calls: list[int] = []

    async def settings_then_cleanup(self: Any, request: Any) -> Any:
        calls.append(1)
        try:
            raise ValueError("semaphore released too many times")  # reading SETTINGS
        except ValueError:
            raise ValueError("semaphore released too many times") from None  # clean-up

    monkeypatch.setattr(httpcore.AsyncConnectionPool, "handle_async_request",
                        settings_then_cleanup)
    with Fleet(2) as fleet:
        async with meshlib.AsyncMeshClient(services={"svc": fleet.url},
                                           policy=Policy(retries=2)) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("http://svc/orders", content=b"{}")
    assert len(calls) == 1
