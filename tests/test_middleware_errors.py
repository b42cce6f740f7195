"""The server middlewares answer escaping mesh errors as a sidecar would: 504 for a
passed deadline, 503 for another mesh error, a short text body, logged once per cause;
``map_errors=False`` lets them propagate. Served by real uvicorn and wsgiref servers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI

import meshlib
import meshlib.asgi
import meshlib.wsgi
from meshlib.testing import Fleet
from test_asgi import serve_asgi
from test_wsgi import serve_wsgi

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

ROUTES = {"users": [meshlib.Route(meshlib.Match(path="/only"), to="users-v1")]}


@pytest.fixture
def stalled() -> Iterator[Fleet]:
    """One endpoint that accepts requests and never answers."""
    with Fleet(1, stall=True) as fleet:
        yield fleet


def _fastapi(fleet: Fleet, **middleware: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(meshlib.asgi.MeshMiddleware, **middleware)
    services = {"users": fleet.url, "users-v1": fleet.url}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        async with meshlib.AsyncMeshClient(services=services) as client:
            await client.get("http://users/x")
        return {}

    @app.get("/unrouted")
    async def unrouted() -> dict[str, str]:
        async with meshlib.AsyncMeshClient(services={"users-v1": fleet.url},
                                           routes=ROUTES) as client:
            await client.get("http://users/elsewhere")
        return {}

    return app


def test_asgi_deadline_is_504_and_logged_once(stalled: Fleet,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A handler whose mesh call runs out of the caller's deadline answers 504, not 500."""
    caplog.set_level(logging.DEBUG, logger="meshlib.asgi")
    with serve_asgi(_fastapi(stalled)) as url:
        answers = [httpx.get(f"{url}/slow", headers={"x-mesh-timeout-ms": "300"}, timeout=10)
                   for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 504
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.text == "upstream request timeout: the deadline passed\n"
    records = [r for r in caplog.records if r.name == "meshlib.asgi"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in records]
    assert "DeadlineExceeded" in warnings[0].getMessage()
    assert "service 'users'" in warnings[0].getMessage()
    assert [r.levelno for r in records].count(logging.DEBUG) == 1


def test_asgi_other_mesh_error_is_503(stalled: Fleet) -> None:
    """NoRouteError escaping a FastAPI handler answers 503 with a short text body."""
    with serve_asgi(_fastapi(stalled)) as url:
        answer = httpx.get(f"{url}/unrouted", timeout=10)
    assert answer.status_code == 503
    assert answer.text == "upstream unavailable: no route\n"


def test_asgi_map_errors_false_propagates(stalled: Fleet) -> None:
    """With map_errors=False the error reaches the server, which answers 500."""
    with serve_asgi(_fastapi(stalled, map_errors=False)) as url:
        answer = httpx.get(f"{url}/slow", headers={"x-mesh-timeout-ms": "200"}, timeout=10)
    assert answer.status_code == 500


def test_asgi_error_after_the_response_started_propagates() -> None:
    """A mesh error raised once the response has started is not answered a second time."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise meshlib.NoEndpointsError("gone")

    with serve_asgi(meshlib.asgi.MeshMiddleware(app)) as url:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{url}/", timeout=10)


def _wsgi_app(fleet: Fleet, *, in_body: bool = False) -> Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        path = environ["PATH_INFO"]
        if path == "/boom":
            raise RuntimeError("not a mesh error")
        if path == "/unrouted":
            def body() -> Iterator[bytes]:
                with meshlib.MeshClient(services={"users-v1": fleet.url},
                                        routes=ROUTES) as client:
                    client.get("http://users/elsewhere")
                yield b"never"
            start_response("200 OK", [("Content-Type", "text/plain")])
            return body()
        with meshlib.MeshClient(services={"users": fleet.url}) as client:
            client.get("http://users/x")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    return app


def test_wsgi_deadline_is_504(stalled: Fleet) -> None:
    """Under wsgiref, a handler out of deadline answers 504 with a short text body."""
    with serve_wsgi(meshlib.wsgi.MeshMiddleware(_wsgi_app(stalled))) as url:
        answer = httpx.get(f"{url}/slow", headers={"x-mesh-timeout-ms": "300"}, timeout=10)
    assert answer.status_code == 504
    assert answer.text == "upstream request timeout: the deadline passed\n"
    assert answer.headers["content-type"].startswith("text/plain")


def test_wsgi_mesh_error_in_the_body_is_503(stalled: Fleet) -> None:
    """A mesh error raised while a generator body starts (after start_response) is 503."""
    with serve_wsgi(meshlib.wsgi.MeshMiddleware(_wsgi_app(stalled))) as url:
        answer = httpx.get(f"{url}/unrouted", timeout=10)
    assert answer.status_code == 503
    assert answer.text == "upstream unavailable: no route\n"


def test_wsgi_map_errors_false_and_other_errors_propagate(stalled: Fleet) -> None:
    """map_errors=False, or an error that is not the mesh's: the server's own 500."""
    with serve_wsgi(meshlib.wsgi.MeshMiddleware(_wsgi_app(stalled), map_errors=False)) as url:
        assert httpx.get(f"{url}/slow", headers={"x-mesh-timeout-ms": "200"},
                         timeout=10).status_code == 500
    with serve_wsgi(meshlib.wsgi.MeshMiddleware(_wsgi_app(stalled))) as url:
        assert httpx.get(f"{url}/boom", timeout=10).status_code == 500
        assert httpx.get(f"{url}/unrouted", timeout=10).status_code == 503


def test_error_page_kinds() -> None:
    """Each mesh error has its page; other errors have none."""
    from meshlib._error_pages import error_page

    request = httpx.Request("GET", "http://users/")
    assert error_page(meshlib.DeadlineExceeded("x", request=request)).status == 504
    for kind in (meshlib.NoEndpointsError, meshlib.CircuitOpenError, meshlib.NoRouteError,
                 meshlib.MeshError):
        page = error_page(kind("x", request=request))
        assert page is not None and page.status == 503
    assert error_page(httpx.ConnectError("x", request=request)) is None
    assert error_page(ValueError("x")) is None


def test_asgi_wrapping_a_whole_starlette_app_still_answers_504(stalled: Fleet) -> None:
    """MeshMiddleware(app) around FastAPI (whose error middleware answers 500 and
    re-raises) still answers 504; a 500 the application means to send gets through."""
    app = FastAPI()
    services = {"users": stalled.url}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        async with meshlib.AsyncMeshClient(services=services) as client:
            await client.get("http://users/x")
        return {}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("not a mesh error")

    from fastapi.responses import PlainTextResponse

    @app.get("/own500")
    async def own500() -> PlainTextResponse:
        return PlainTextResponse("mine", status_code=500)

    with serve_asgi(meshlib.asgi.MeshMiddleware(app)) as url:
        slow_answer = httpx.get(f"{url}/slow", headers={"x-mesh-timeout-ms": "300"}, timeout=10)
        broken_answer = httpx.get(f"{url}/broken", timeout=10)
        own = httpx.get(f"{url}/own500", timeout=10)
    assert slow_answer.status_code == 504
    assert slow_answer.text == "upstream request timeout: the deadline passed\n"
    assert broken_answer.status_code == 500
    assert (own.status_code, own.text) == (500, "mine")
