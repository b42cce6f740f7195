"""meshlib.wsgi.MeshMiddleware: deadline headers, response iteration, snapshot path.

The applications run under wsgiref on 127.0.0.1 in a thread and call a loopback
test backend through a MeshClient; the backend echoes the
``x-mesh-timeout-ms`` header it received.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest

import meshlib
from meshlib._scope import current_deadline, time_left
from meshlib.testing._backend import Backend
from meshlib.wsgi import MeshMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

BackendFactory = Callable[..., Backend]
STOP_TIMEOUT = 10.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wsgi(app: WSGIApplication) -> Iterator[str]:
    """Run ``app`` under wsgiref on 127.0.0.1 in a thread; yield its base URL; stop it."""
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(STOP_TIMEOUT)
        server.server_close()
        assert not thread.is_alive(), "wsgiref server did not stop"


def _left_ms() -> float | None:
    left = time_left()
    return None if math.isinf(left) else left * 1000.0


def _json(start_response: StartResponse, data: Any) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def make_app(client: meshlib.MeshClient) -> WSGIApplication:
    """``/call``: call downstream in the app call; ``/stream``: in the body generator."""

    def downstream() -> str | None:
        try:
            response = client.get("http://down/x")
        except meshlib.DeadlineExceeded:
            return "DeadlineExceeded"
        value = response.json()["headers"].get("x-mesh-timeout-ms")
        return None if value is None else str(value)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/call":
            return _json(start_response, {"left_ms": _left_ms(), "downstream_ms": downstream()})
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "application/x-ndjson")])
            return _stream(downstream)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [f"app saw {path}".encode()]

    return app


def _stream(downstream: Callable[[], str | None]) -> Iterator[bytes]:
    # Runs only while the server iterates the response, after the middleware returned.
    for _ in range(3):
        line = {"left_ms": _left_ms(), "downstream_ms": downstream()}
        yield json.dumps(line).encode() + b"\n"
        time.sleep(0.05)


@pytest.fixture
def served(backends: BackendFactory) -> Iterator[tuple[str, Backend]]:
    """A mesh-wrapped WSGI app (no snapshot path) under wsgiref, and its downstream."""
    backend = backends(1)
    with meshlib.MeshClient(services={"down": f"static://{backend.servers[0].address}"}) as c, \
            serve_wsgi(MeshMiddleware(make_app(c))) as url:
        yield url, backend


def test_mesh_timeout_reaches_handler_and_downstream(served: tuple[str, Backend]) -> None:
    url, backend = served
    data = httpx.get(f"{url}/call", headers={"x-mesh-timeout-ms": "300"}, timeout=5).json()
    assert 0 < data["left_ms"] <= 300
    assert 0 < int(data["downstream_ms"]) <= 300
    assert backend.servers[0].count == 1


def test_deadline_covers_response_iteration(served: tuple[str, Backend]) -> None:
    url, _ = served
    response = httpx.get(f"{url}/stream", headers={"x-mesh-timeout-ms": "800"}, timeout=5)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) == 3
    lefts = [line["left_ms"] for line in lines]
    assert all(0 < left <= 800 for left in lefts)
    # one absolute deadline, fixed on arrival: time between chunks counts against it
    assert lefts[0] - lefts[2] >= 90
    assert all(0 < int(line["downstream_ms"]) <= 800 for line in lines)


def test_stream_without_header_has_no_deadline(served: tuple[str, Backend]) -> None:
    url, _ = served
    response = httpx.get(f"{url}/stream", timeout=5)
    assert [json.loads(line)["left_ms"] for line in response.text.splitlines()] == [None] * 3


@pytest.mark.parametrize(("value", "upper_ms"), [("250m", 250), ("2S", 2000), ("300000u", 300)])
def test_grpc_timeout_header(served: tuple[str, Backend], value: str, upper_ms: float) -> None:
    url, _ = served
    data = httpx.get(f"{url}/call", headers={"grpc-timeout": value}, timeout=5).json()
    assert 0 < data["left_ms"] <= upper_ms
    assert 0 < int(data["downstream_ms"]) <= upper_ms


def test_earliest_of_both_headers_wins(served: tuple[str, Backend]) -> None:
    url, _ = served
    data = httpx.get(f"{url}/call", headers={"x-mesh-timeout-ms": "5000", "grpc-timeout": "150m"},
                     timeout=5).json()
    assert 0 < data["left_ms"] <= 150


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", ""])
def test_bad_header_ignored_with_debug_log(
    served: tuple[str, Backend], caplog: pytest.LogCaptureFixture, value: str
) -> None:
    url, _ = served
    with caplog.at_level(logging.DEBUG, logger="meshlib.wsgi"):
        response = httpx.get(f"{url}/call", headers={"x-mesh-timeout-ms": value}, timeout=5)
    assert response.status_code == 200
    data = response.json()
    assert data["left_ms"] is None
    assert 9000 < int(data["downstream_ms"]) <= 10000
    records = [r for r in caplog.records if r.name == "meshlib.wsgi"]
    assert records and all(r.levelno == logging.DEBUG for r in records)


def test_zero_still_calls_app_and_mesh_calls_fail_fast(served: tuple[str, Backend]) -> None:
    url, backend = served
    data = httpx.get(f"{url}/call", headers={"x-mesh-timeout-ms": "0"}, timeout=5).json()
    assert data["downstream_ms"] == "DeadlineExceeded"
    assert data["left_ms"] <= 0
    assert backend.servers[0].count == 0


# -- snapshot endpoint ---------------------------------------------------------------------


def test_snapshot_path_off_by_default(served: tuple[str, Backend]) -> None:
    url, _ = served
    response = httpx.get(f"{url}/_mesh", timeout=5)
    assert response.status_code == 404
    assert response.text == "app saw /_mesh"


def test_snapshot_path_on(backends: BackendFactory) -> None:
    backend = backends(1)
    address = backend.servers[0].address
    with meshlib.MeshClient(services={"down": f"static://{address}"}) as client:
        app = MeshMiddleware(make_app(client), snapshot_path="/_mesh", clients=[client])
        with serve_wsgi(app) as url:
            httpx.get(f"{url}/call", timeout=5).raise_for_status()
            response = httpx.get(f"{url}/_mesh", timeout=5)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            down = response.json()["services"]["down"]
            assert [e["endpoint"] for e in down["endpoints"]] == [address]
            assert down["endpoints"][0]["requests"] == 1
            post = httpx.post(f"{url}/_mesh", content=b"x", timeout=5)
            assert post.status_code == 405
            assert httpx.get(f"{url}/_mesh/x", timeout=5).text == "app saw /_mesh/x"


# -- direct calls: context isolation and close() ------------------------------------------


def test_deadline_does_not_leak_into_the_server_context() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    events: list[tuple[str, Any]] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            events.append(("iter", marker.get()))
            yield b"x"
            events.append(("next", time_left()))

        def close(self) -> None:
            events.append(("close", time_left()))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        marker.set("set by app")
        start_response("200 OK", [])
        return Body()

    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "HTTP_X_MESH_TIMEOUT_MS": "300"}
    result = MeshMiddleware(app)(environ, lambda status, headers, exc_info=None: lambda b: None)
    assert current_deadline() == math.inf and marker.get() == "unset"
    assert list(result) == [b"x"]
    assert current_deadline() == math.inf
    result.close()  # type: ignore[attr-defined]
    assert events[0] == ("iter", "set by app")  # the app's context carries over to its body
    assert events[1][0] == "next" and 0 < events[1][1] <= 0.3
    assert events[2][0] == "close" and 0 < events[2][1] <= 0.3


def test_no_header_returns_the_app_iterable_unwrapped() -> None:
    body = [b"a"]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return body

    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "HTTP_X_MESH_TIMEOUT_MS": "bad"}
    assert MeshMiddleware(app)(environ, lambda *a: lambda b: None) is body
    assert MeshMiddleware(app)({"PATH_INFO": "/"}, lambda *a: lambda b: None) is body


def test_snapshot_without_clients_sees_a_client_made_later(backends: BackendFactory) -> None:
    """No clients given: a client built after the middleware is in the snapshot until closed."""
    backend = backends(1)
    address = backend.servers[0].address

    def plain(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with serve_wsgi(MeshMiddleware(plain, snapshot_path="/_mesh")) as url:
        assert "wsgi-late" not in httpx.get(f"{url}/_mesh", timeout=5).json()["services"]
        with meshlib.MeshClient(services={"wsgi-late": f"static://{address}"}) as client:
            client.get("http://wsgi-late/x").raise_for_status()
            late = httpx.get(f"{url}/_mesh", timeout=5).json()["services"]["wsgi-late"]
            assert [(e["endpoint"], e["requests"]) for e in late["endpoints"]] == [(address, 1)]
            assert late["endpoints"][0]["latency_ms"] is not None
        assert "wsgi-late" not in httpx.get(f"{url}/_mesh", timeout=5).json()["services"]
