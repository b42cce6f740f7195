"""Exercises the public API under ``mypy --strict`` (run by ``make typecheck``), not by pytest."""

from __future__ import annotations

import httpx

import meshlib
import meshlib.testing
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.etcd import EtcdRegistration
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware


def sync_usage() -> int:
    """Typical sync use: services, policy, scopes, errors, extensions, snapshot."""
    policy = meshlib.Policy(
        timeout=2.0, attempt_timeout=0.5, retries=1, retry_on=(503,),
        retry_budget=meshlib.RetryBudget(ratio=0.1), backoff=meshlib.Backoff(base=0.01),
        balancer="least-request", breaker=meshlib.Breaker(failures=3, reset_timeout=5.0),
        hedge=meshlib.Hedge(delay="p95"), idempotent=None,
    ).replace(retries=2)
    services: dict[str, str | meshlib.Service] = {
        "users": "static://127.0.0.1:8001",
        "orders": meshlib.Service("dns+srv://_http._tcp.orders.test", policy=policy,
                                  tls_server_name="orders.internal"),
    }
    with meshlib.MeshClient(services=services, policy=policy, timeout=5.0) as client, \
            meshlib.deadline(0.5), meshlib.policy(retries=0):
        try:
            response: httpx.Response = client.get("http://users/v1/me")
        except meshlib.DeadlineExceeded:
            return -1
        except (meshlib.NoEndpointsError, meshlib.CircuitOpenError, meshlib.MeshError):
            return -2
        info: meshlib.MeshInfo = response.extensions["meshlib"]
        endpoint: str | None = info["endpoint"]
        attempts: int = info["attempts"]
        snapshot: dict[str, object] = client.snapshot()
        left: float = meshlib.time_left()
        _ = (info, endpoint, attempts, snapshot, left, meshlib.current_deadline())
        return response.status_code


@meshlib.deadline(1.0)
@meshlib.policy(idempotent=True)
async def async_usage() -> int:
    """Typical async use, with the decorators on a coroutine."""
    async with meshlib.AsyncMeshClient(services={"users": "static://127.0.0.1:8001"}) as c:
        return (await c.post("http://users/x", json={})).status_code


def transports_and_servers() -> None:
    """Transports, middlewares, registration and test helpers type-check."""
    httpx.Client(transport=meshlib.MeshTransport(services={"a": "static://127.0.0.1:1"}))
    httpx.AsyncClient(transport=meshlib.AsyncMeshTransport(services={"a": "static://[::1]:1"}))
    httpx.AsyncClient(transport=meshlib.AsyncMeshTransport(services={"a": "static://[::1]:1"},
                                                           pool="aiohttp"))
    meshlib.AsyncMeshClient(services={"a": "static://127.0.0.1:1"}, pool="httpcore")
    meshlib.testing.set_testing(True)
    _ = (AsgiMiddleware, WsgiMiddleware, EtcdRegistration)
    try:
        meshlib.Policy(retries=-1)
    except meshlib.ConfigError as exc:
        _ = str(exc)


def testing_tools() -> list[list[str]]:
    """Testing mode as a call and a context manager, and the fault fleet, type-check."""
    meshlib.testing.set_testing(False)
    with meshlib.testing.set_testing(attempts=1), meshlib.testing.Fleet(
            3, latency=0.01, error_rate=0.1, status=503, retry_after="1") as fleet:
        fleet.set(refuse=False, stall=False, drop=0.0)
        fleet.set(0, latency=0.5)
        url: str = fleet.url
        endpoints: list[str] = list(fleet.endpoints)
        _ = (url, endpoints)
        return [[hit.method for hit in hits] for hits in fleet.hits()]


def outlier_knobs() -> meshlib.Policy:
    """Outlier handling and slow start knobs type-check."""
    return meshlib.Policy(
        breaker=meshlib.Breaker(failures=5, reset_timeout=30.0, max_ejection_percent=50,
                                max_reset_timeout=120.0),
        slow_start=meshlib.SlowStart(window=30.0, aggression=1.0, min_weight_percent=10.0),
        propagate_grpc_timeout=True,
    )


def flask_lines() -> None:
    """The Flask lines docs/deploying.md shows: assigning to Flask's ``wsgi_app`` method
    needs the ignore under mypy --strict; serving ``MeshMiddleware(app)`` needs none."""
    import flask

    app = flask.Flask(__name__)
    app.wsgi_app = WsgiMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    application = WsgiMiddleware(app)
    _ = application


def breaker_off_and_errors() -> meshlib.Policy:
    """Plain httpx behaviour for one service, and the middleware's map_errors switch."""
    _ = AsgiMiddleware(lambda scope, receive, send: send({}), map_errors=False)
    return meshlib.Policy(retries=0, breaker=None)
