"""meshlib.asgi.MeshMiddleware: deadline headers to meshlib.deadline, and the snapshot path.

Most tests run a Starlette application under uvicorn on 127.0.0.1 in a thread;
its handlers call a loopback test backend through the mesh, which echoes the
``x-mesh-timeout-ms`` header it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import meshlib
from meshlib._scope import current_deadline, time_left
from meshlib.asgi import MeshMiddleware, parse_deadline
from meshlib.testing._backend import Backend

BackendFactory = Callable[..., Backend]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yield its base URL; stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        limit = time.monotonic() + START_TIMEOUT
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < limit, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def _left_ms() -> float | None:
    left = time_left()
    return None if math.isinf(left) else left * 1000.0


def make_app(downstream: str) -> Starlette:
    """Routes that report the deadline they see and what a mesh call downstream carries."""
    aclient = meshlib.AsyncMeshClient(services={"down": downstream})
    sclient = meshlib.MeshClient(services={"down": downstream})

    async def seen(request: Request) -> JSONResponse:
        return JSONResponse({"left_ms": _left_ms()})

    async def call_async(request: Request) -> JSONResponse:
        try:
            response = await aclient.get("http://down/x")
        except meshlib.DeadlineExceeded:
            return JSONResponse({"error": "DeadlineExceeded", "left_ms": _left_ms()})
        return JSONResponse({"left_ms": _left_ms(),
                             "downstream_ms": response.json()["headers"].get("x-mesh-timeout-ms")})

    def call_sync(request: Request) -> JSONResponse:
        # A sync endpoint: Starlette runs it in a worker thread with a copied context.
        response = sclient.get("http://down/x")
        return JSONResponse({"left_ms": _left_ms(),
                             "downstream_ms": response.json()["headers"].get("x-mesh-timeout-ms")})

    async def nested(request: Request) -> JSONResponse:
        seconds = float(request.query_params["s"])
        async with meshlib.deadline(seconds):
            response = await aclient.get("http://down/x")
        return JSONResponse({"downstream_ms": response.json()["headers"]["x-mesh-timeout-ms"]})

    async def in_task(request: Request) -> JSONResponse:
        async def probe() -> float | None:
            return _left_ms()

        return JSONResponse({"left_ms": await asyncio.create_task(probe())})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await aclient.aclose()
        sclient.close()

    return Starlette(routes=[
        Route("/seen", seen), Route("/async", call_async), Route("/sync", call_sync),
        Route("/nested", nested), Route("/task", in_task),
    ], lifespan=lifespan)


@pytest.fixture
def served(backends: BackendFactory) -> Iterator[tuple[str, Any]]:
    """A mesh-wrapped app (no snapshot path) under uvicorn, and its downstream backend."""
    backend = backends(1)
    app = make_app(f"static://{backend.servers[0].address}")
    with serve_asgi(MeshMiddleware(app)) as url:
        yield url, backend


def test_mesh_timeout_reaches_handler_and_downstream(served: tuple[str, Any]) -> None:
    url, backend = served
    data = httpx.get(f"{url}/async", headers={"x-mesh-timeout-ms": "300"}, timeout=5).json()
    assert 0 < data["left_ms"] <= 300
    assert 0 < int(data["downstream_ms"]) <= 300
    assert backend.servers[0].count == 1


def test_sync_endpoint_in_threadpool_inherits_deadline(served: tuple[str, Any]) -> None:
    url, _ = served
    data = httpx.get(f"{url}/sync", headers={"x-mesh-timeout-ms": "300"}, timeout=5).json()
    assert 0 < data["left_ms"] <= 300
    assert 0 < int(data["downstream_ms"]) <= 300


def test_tasks_started_by_handler_inherit_deadline(served: tuple[str, Any]) -> None:
    url, _ = served
    data = httpx.get(f"{url}/task", headers={"x-mesh-timeout-ms": "300"}, timeout=5).json()
    assert 0 < data["left_ms"] <= 300


def test_no_header_means_no_deadline(served: tuple[str, Any]) -> None:
    url, _ = served
    data = httpx.get(f"{url}/async", timeout=5).json()
    assert data["left_ms"] is None
    # the client's own policy timeout (10 s by default) applies downstream
    assert 9000 < int(data["downstream_ms"]) <= 10000


@pytest.mark.parametrize(("value", "upper_ms"), [
    ("250m", 250), ("2S", 2000), ("1M", 60000), ("300000u", 300), ("40000000n", 40),
])
def test_grpc_timeout_header(served: tuple[str, Any], value: str, upper_ms: float) -> None:
    url, _ = served
    seen = httpx.get(f"{url}/seen", headers={"grpc-timeout": value}, timeout=5).json()
    assert seen["left_ms"] is not None and seen["left_ms"] <= upper_ms
    if upper_ms >= 250:  # a 40 ms budget can be spent by one scheduling hiccup on a busy host
        assert upper_ms * 0.5 < seen["left_ms"]
    if upper_ms >= 250:  # long enough for a first connection downstream, even on a busy host
        data = httpx.get(f"{url}/async", headers={"grpc-timeout": value}, timeout=5).json()
        assert 0 < int(data["downstream_ms"]) <= upper_ms


def test_earliest_of_both_headers_wins(served: tuple[str, Any]) -> None:
    url, _ = served
    data = httpx.get(f"{url}/seen", headers={"grpc-timeout": "2S", "x-mesh-timeout-ms": "300"},
                     timeout=5).json()
    assert 0 < data["left_ms"] <= 300
    data = httpx.get(f"{url}/seen", headers={"grpc-timeout": "100m", "x-mesh-timeout-ms": "5000"},
                     timeout=5).json()
    assert 0 < data["left_ms"] <= 100


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "", "12ms", "9" * 40])
def test_bad_mesh_header_ignored_with_debug_log(
    served: tuple[str, Any], caplog: pytest.LogCaptureFixture, value: str
) -> None:
    url, _ = served
    with caplog.at_level(logging.DEBUG, logger="meshlib.asgi"):
        response = httpx.get(f"{url}/async", headers={"x-mesh-timeout-ms": value}, timeout=5)
    assert response.status_code == 200
    data = response.json()
    assert data["left_ms"] is None
    assert 9000 < int(data["downstream_ms"]) <= 10000
    records = [r for r in caplog.records if r.name == "meshlib.asgi"]
    assert records and all(r.levelno == logging.DEBUG for r in records)
    assert "x-mesh-timeout-ms" in records[0].getMessage()


@pytest.mark.parametrize("value", ["10", "5s", "123456789m", "-1S", "1.5S"])
def test_bad_grpc_header_ignored(served: tuple[str, Any], value: str) -> None:
    url, _ = served
    response = httpx.get(f"{url}/seen", headers={"grpc-timeout": value}, timeout=5)
    assert response.status_code == 200
    assert response.json()["left_ms"] is None


def test_bad_header_does_not_hide_a_good_one(served: tuple[str, Any]) -> None:
    url, _ = served
    data = httpx.get(f"{url}/seen", headers={"x-mesh-timeout-ms": "junk", "grpc-timeout": "200m"},
                     timeout=5).json()
    assert 0 < data["left_ms"] <= 200


def test_zero_still_calls_app_and_mesh_calls_fail_fast(served: tuple[str, Any]) -> None:
    url, backend = served
    started = time.monotonic()
    data = httpx.get(f"{url}/async", headers={"x-mesh-timeout-ms": "0"}, timeout=5).json()
    assert time.monotonic() - started < 2.0
    assert data["error"] == "DeadlineExceeded"
    assert data["left_ms"] <= 0
    assert backend.servers[0].count == 0


def test_nested_deadline_in_handler_takes_earliest(served: tuple[str, Any]) -> None:
    url, _ = served
    tighter = httpx.get(f"{url}/nested", params={"s": "0.1"},
                        headers={"x-mesh-timeout-ms": "3000"}, timeout=5).json()
    assert 0 < int(tighter["downstream_ms"]) <= 100
    looser = httpx.get(f"{url}/nested", params={"s": "5"},
                       headers={"x-mesh-timeout-ms": "300"}, timeout=5).json()
    assert 0 < int(looser["downstream_ms"]) <= 300


# -- snapshot endpoint ---------------------------------------------------------------------


def _echo_app(calls: list[str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan: not supported by this app
            raise RuntimeError("lifespan not supported")
        calls.append(scope["path"])
        body = f"app saw {scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    return app


def test_snapshot_path_off_by_default(backends: BackendFactory) -> None:
    backend = backends(1)
    calls: list[str] = []
    with meshlib.MeshClient(services={"down": f"static://{backend.servers[0].address}"}) as c, \
            serve_asgi(MeshMiddleware(_echo_app(calls), clients=[c])) as url:
        response = httpx.get(f"{url}/_mesh", timeout=5)
        assert response.text == "app saw /_mesh"
        assert calls == ["/_mesh"]
        # and with a Starlette app behind it: its own 404
        with serve_asgi(MeshMiddleware(Starlette(), clients=[c])) as url2:
            assert httpx.get(f"{url2}/_mesh", timeout=5).status_code == 404


def test_snapshot_path_serves_merged_snapshots(backends: BackendFactory) -> None:
    backend = backends(2)
    one, two = (s.address for s in backend.servers)
    c2 = meshlib.AsyncMeshClient(services={"orders": f"static://{two}",
                                           "users": f"static://{two}"})
    try:
        _check_merged_snapshot(c2, one, two)
    finally:
        asyncio.run(c2.aclose())


def _check_merged_snapshot(c2: meshlib.AsyncMeshClient, one: str, two: str) -> None:
    calls: list[str] = []
    with meshlib.MeshClient(services={"users": f"static://{one}"}) as c1:
        c1.get("http://users/x").raise_for_status()
        app = MeshMiddleware(_echo_app(calls), snapshot_path="/_mesh", clients=[c1])
        app.clients.append(c2.mesh_transport)
        with serve_asgi(app) as url:
            response = httpx.get(f"{url}/_mesh", timeout=5)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            services = response.json()["services"]
            assert set(services) == {"users", "orders", "users#2"}
            [endpoint] = services["users"]["endpoints"]
            assert endpoint["endpoint"] == one and endpoint["requests"] == 1
            assert services["users#2"]["endpoints"][0]["endpoint"] == two
            assert "balance" in services["orders"]["retry_budget"]
            # other methods on that path are answered by the middleware too
            post = httpx.post(f"{url}/_mesh", timeout=5)
            assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
            head = httpx.head(f"{url}/_mesh", timeout=5)
            assert head.status_code == 200 and head.content == b""
            # only that exact path
            assert httpx.get(f"{url}/_mesh/", timeout=5).text == "app saw /_mesh/"
            assert httpx.get(f"{url}/other", timeout=5).text == "app saw /other"
        assert calls == ["/_mesh/", "/other"]


def test_snapshot_failure_is_a_500_not_a_crash() -> None:
    class Broken:
        def snapshot(self) -> dict[str, Any]:
            raise RuntimeError("boom")

    with serve_asgi(MeshMiddleware(_echo_app([]), snapshot_path="/_mesh",
                                   clients=[Broken()])) as url:
        response = httpx.get(f"{url}/_mesh", timeout=5)
        assert response.status_code == 500
        assert response.json() == {"error": "snapshot failed: RuntimeError"}


def test_snapshot_path_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="snapshot_path"):
        MeshMiddleware(_echo_app([]), snapshot_path="_mesh")


# -- scopes other than http, and the contextvar after the request ----------------------------


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
async def test_non_http_scopes_pass_through_without_deadline(kind: str) -> None:
    seen: list[tuple[Any, float]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, current_deadline()))

    scope = {"type": kind, "path": "/_mesh",
             "headers": [(b"x-mesh-timeout-ms", b"300")]}
    await MeshMiddleware(app, snapshot_path="/_mesh")(scope, _never_receive, _no_send)
    assert seen == [(scope, math.inf)]


async def test_deadline_is_reset_after_the_request() -> None:
    inside: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        inside.append(time_left())

    scope = {"type": "http", "method": "GET", "path": "/",
             "headers": [(b"x-mesh-timeout-ms", b"300")]}
    await MeshMiddleware(app)(scope, _never_receive, _no_send)
    assert 0 < inside[0] <= 0.3
    assert current_deadline() == math.inf


async def _never_receive() -> Any:
    raise AssertionError("receive called")


async def _no_send(message: Any) -> None:
    raise AssertionError("send called")


# -- header parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(("mesh", "grpc", "expected"), [
    ([], [], None),
    (["300"], [], 0.3),
    ([" 300 "], [], 0.3),
    (["0"], [], 0.0),
    (["300, 200"], [], 0.2),
    (["300", "100"], [], 0.1),
    (["x", "100"], [], 0.1),
    (["-1"], [], None),
    (["+1"], [], None),
    (["\uff11\uff12"], [], None),  # fullwidth digits
    ([], ["1H"], 3600.0),
    ([], ["15M"], 900.0),
    ([], ["99999999S"], 99999999.0),
    ([], ["999999999S"], None),  # more than 8 digits
    ([], ["5m"], 0.005),
    ([], ["5"], None),
    ([], ["5 m"], None),
    (["1000"], ["500m"], 0.5),
])
def test_parse_deadline(mesh: list[str], grpc: list[str], expected: float | None) -> None:
    result = parse_deadline(mesh, grpc)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


async def test_background_tasks_do_not_inherit_the_answered_callers_deadline() -> None:
    """Work a handler leaves for after the response is not bound by the caller's deadline."""
    import math

    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    seen: dict[str, float] = {}

    async def later() -> None:
        await asyncio.sleep(0.15)
        seen["background"] = meshlib.time_left()

    async def handler(request: object) -> PlainTextResponse:
        seen["handler"] = meshlib.time_left()
        return PlainTextResponse("ok", background=BackgroundTask(later))

    app = MeshMiddleware(Starlette(routes=[Route("/", handler)]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
        response = await client.get("/", headers={"x-mesh-timeout-ms": "100"})
    assert response.text == "ok"
    assert 0 < seen["handler"] <= 0.1
    assert math.isinf(seen["background"])


# -- the snapshot of clients made after the middleware ---------------------------------------


def test_snapshot_sees_a_client_made_in_the_lifespan(backends: BackendFactory) -> None:
    """add_middleware + a client built in the lifespan: the snapshot and `meshlib status` see it."""
    from meshlib.cli import main

    backend = backends(1)
    address = backend.servers[0].address

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with meshlib.AsyncMeshClient(
                services={"lifespan-users": f"static://{address}"}) as client:
            app.state.client = client
            yield

    async def call(request: Request) -> JSONResponse:
        response = await request.app.state.client.get("http://lifespan-users/x")
        return JSONResponse({"status": response.status_code})

    app = Starlette(routes=[Route("/call", call)], lifespan=lifespan)
    app.add_middleware(MeshMiddleware, snapshot_path="/_mesh")  # no clients: every open one
    with serve_asgi(app) as url:
        assert httpx.get(f"{url}/call", timeout=5).json() == {"status": 200}
        services = httpx.get(f"{url}/_mesh", timeout=5).json()["services"]
        [endpoint] = services["lifespan-users"]["endpoints"]
        assert endpoint["endpoint"] == address and endpoint["requests"] == 1
        assert main(["status", f"{url}/_mesh"]) == 0


def test_snapshot_without_clients_drops_closed_ones(backends: BackendFactory) -> None:
    """A closed client leaves the process-wide snapshot; a list given is not copied."""
    backend = backends(1)
    address = backend.servers[0].address
    given: list[Any] = []
    every = MeshMiddleware(_echo_app([]), snapshot_path="/_mesh")
    chosen = MeshMiddleware(_echo_app([]), snapshot_path="/_mesh", clients=given)
    with serve_asgi(every) as url, serve_asgi(chosen) as chosen_url:
        client = meshlib.MeshClient(services={"closing-users": f"static://{address}"})
        try:
            assert "closing-users" in httpx.get(f"{url}/_mesh", timeout=5).json()["services"]
            assert httpx.get(f"{chosen_url}/_mesh", timeout=5).json() == {"services": {}}
            given.append(client)  # appended to the caller's list after the middleware was built
            assert list(httpx.get(f"{chosen_url}/_mesh", timeout=5).json()["services"]) == [
                "closing-users"]
        finally:
            client.close()
        assert "closing-users" not in httpx.get(f"{url}/_mesh", timeout=5).json()["services"]
