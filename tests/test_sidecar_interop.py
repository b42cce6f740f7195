"""Interop with sidecar meshes: Envoy's deadline header read by the middlewares, and
``grpc-timeout`` sent besides ``x-mesh-timeout-ms`` when a policy asks for it."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import pytest

import meshlib
from conftest import BackendFactory
from meshlib._propagation import format_grpc_timeout
from meshlib._scope import time_left
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.asgi import parse_deadline
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware

ENVOY = "x-envoy-expected-rq-timeout-ms"


@pytest.mark.parametrize(("seconds", "text"), [
    (1.5, "1500m"), (0.25, "250m"), (0.0009, "0m"), (0.0, "0m"), (-3.0, "0m"),
    (99_999.999, "99999999m"), (100_000.0, "100000S"), (6e9, "1666666H"),
    (1e12, "99999999H"),
])
def test_grpc_timeout_format(seconds: float, text: str) -> None:
    """Whole milliseconds while they fit gRPC's 8 digits, then coarser units, rounded down."""
    assert format_grpc_timeout(seconds) == text


def test_policy_option_is_validated() -> None:
    """propagate_grpc_timeout is a bool; anything else names the field."""
    assert meshlib.Policy().propagate_grpc_timeout is False
    with pytest.raises(meshlib.ConfigError, match="propagate_grpc_timeout"):
        meshlib.Policy(propagate_grpc_timeout="yes")  # type: ignore[arg-type]


def test_grpc_timeout_is_sent_when_the_service_policy_asks(backends: BackendFactory) -> None:
    """A Service whose policy sets propagate_grpc_timeout sends both headers, agreeing;
    others (and the default) send only x-mesh-timeout-ms; a scoped policy can ask too."""
    b = backends(1)
    grpc_policy = meshlib.Policy(timeout=3.0, propagate_grpc_timeout=True)
    services = {"grpcish": meshlib.Service(f"static://{b.addresses[0]}", policy=grpc_policy),
                "plain": f"static://{b.addresses[0]}"}
    with meshlib.MeshClient(services=services) as client:
        headers = client.get("http://grpcish/").json()["headers"]
        mesh_ms = int(headers["x-mesh-timeout-ms"])
        assert 0 < mesh_ms <= 3000
        assert headers["grpc-timeout"] == f"{mesh_ms}m"
        assert "grpc-timeout" not in client.get("http://plain/").json()["headers"]
        with meshlib.policy(propagate_grpc_timeout=True), meshlib.deadline(0.8):
            headers = client.get("http://plain/").json()["headers"]
        assert headers["grpc-timeout"].endswith("m")
        assert 0 < int(headers["grpc-timeout"][:-1]) <= 800


def test_parse_deadline_reads_envoy_values() -> None:
    """Envoy's whole milliseconds count; the earliest of all headers wins; garbage is ignored."""
    assert parse_deadline(envoy_timeout_ms=["1500"]) == 1.5
    assert parse_deadline(["2000"], ["3S"], envoy_timeout_ms=["700"]) == 0.7
    assert parse_deadline(["200"], envoy_timeout_ms=["700"]) == 0.2
    assert parse_deadline(envoy_timeout_ms=["soon", "-1"]) is None


async def test_asgi_middleware_reads_envoy_header(backends: BackendFactory) -> None:
    """An ASGI request with only x-envoy-expected-rq-timeout-ms runs under that deadline,
    and the mesh requests the handler makes carry what is left of it."""
    b = backends(1)
    seen: dict[str, Any] = {}
    async with meshlib.AsyncMeshClient(services={"down": f"static://{b.addresses[0]}"}
                                       ) as client:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen["left"] = time_left()
            response = await client.get("http://down/")
            seen["downstream"] = int(response.json()["headers"]["x-mesh-timeout-ms"])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"",
                 "headers": [(ENVOY.encode(), b"900")]}
        await AsgiMiddleware(app)(scope, receive, send)
    assert sent[0]["status"] == 200
    assert 0 < seen["left"] <= 0.9
    assert 0 < seen["downstream"] <= 900


def test_wsgi_middleware_reads_envoy_header(backends: BackendFactory,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A WSGI request with HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS runs under that deadline;
    a malformed value is ignored (DEBUG log) and the request has no deadline."""
    b = backends(1)
    seen: list[tuple[float, int]] = []
    with meshlib.MeshClient(services={"down": f"static://{b.addresses[0]}"}) as client:

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            left = time_left()
            response = client.get("http://down/")
            seen.append((left, int(response.json()["headers"]["x-mesh-timeout-ms"])))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        middleware = WsgiMiddleware(app)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/",
                   "HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS": "600"}
        assert b"".join(middleware(environ, lambda *a: None)) == b"ok"
        with caplog.at_level(logging.DEBUG, "meshlib.wsgi"):
            environ["HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS"] = "later"
            assert b"".join(middleware(environ, lambda *a: None)) == b"ok"
    assert 0 < seen[0][0] <= 0.6 and 0 < seen[0][1] <= 600
    assert math.isinf(seen[1][0])
    assert any(ENVOY in r.getMessage() for r in caplog.records)
