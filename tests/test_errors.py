"""The errors a mesh request raises say what happened: the request, the service, the
route, the endpoints tried, the attempts made and the last cause."""

from __future__ import annotations

import re

import httpx
import pytest

import meshlib
from meshlib.testing import Fleet


def test_refusals_name_service_endpoints_attempts_and_cause() -> None:
    """Retries over two refusing endpoints raise ConnectError naming all of it."""
    with Fleet(2, refuse=True) as fleet, meshlib.testing.set_testing(), meshlib.MeshClient(
            services={"users": fleet.url},
            policy=meshlib.Policy(retries=2, breaker=meshlib.Breaker(failures=50))) as client:
        endpoints = fleet.endpoints
        with pytest.raises(httpx.ConnectError) as caught:
            client.get("http://users/v1/me")
    text = str(caught.value)
    assert text.startswith("GET http://users/v1/me failed after 3 attempts on service 'users'")
    for endpoint in endpoints:
        assert endpoint in text
    assert "last cause: ConnectError:" in text
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.request.url == "http://users/v1/me"


def test_route_is_named() -> None:
    """With routes configured, the error names the route that was chosen."""
    with Fleet(1, refuse=True) as fleet, meshlib.MeshClient(
            services={"users-v1": fleet.url},
            routes={"users": [meshlib.Route(meshlib.Match(path_prefix="/v1"), to="users-v1",
                                            name="v1")]},
            policy=meshlib.Policy(retries=0)) as client:
        with pytest.raises(httpx.ConnectError,
                           match=r"1 attempt on service 'users-v1' \(route 'v1'; "
                                 r"endpoints tried: 127\.0\.0\.1:\d+\)"):
            client.get("http://users/v1/me")


def test_deadline_names_its_origin_and_last_cause() -> None:
    """A deadline that passes during a stalled attempt names how it was set and the timeout."""
    with Fleet(1, stall=True) as fleet, meshlib.MeshClient(
            services={"users": fleet.url}) as client:
        with meshlib.deadline(0.3), pytest.raises(meshlib.DeadlineExceeded) as caught:
            client.get("http://users/slow")
    text = str(caught.value)
    assert text.startswith("GET http://users/slow: deadline passed (deadline 0.3 s from "
                           "meshlib.deadline) after 1 attempt on service 'users'")
    assert "last cause: ReadTimeout" in text
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


def test_endpoint_breakers_open_say_when_the_next_trial_is_due() -> None:
    """When every endpoint's breaker is open, CircuitOpenError says when the next trial is."""
    policy = meshlib.Policy(retries=0, breaker=meshlib.Breaker(failures=1, reset_timeout=30.0))
    with Fleet(1, refuse=True) as fleet, meshlib.MeshClient(
            services={"users": fleet.url}, policy=policy) as client:
        with pytest.raises(httpx.ConnectError):
            client.get("http://users/a")
        with pytest.raises(meshlib.CircuitOpenError) as caught:
            client.get("http://users/a")
    text = str(caught.value)
    assert "failed after 0 attempts on service 'users' (endpoints tried: none)" in text
    assert "every endpoint of service 'users' has an open circuit breaker" in text
    trial = re.search(r"next trial in (\d+\.\d) s", text)
    assert trial is not None and 0.0 < float(trial.group(1)) <= 30.0
    assert "nothing was sent" in text


async def test_async_refusal_is_explained_too() -> None:
    """The async client raises the same explaining ConnectError."""
    async with Fleet(1, refuse=True) as fleet, meshlib.AsyncMeshClient(
            services={"users": fleet.url}, policy=meshlib.Policy(retries=0)) as client:
        with pytest.raises(httpx.ConnectError,
                           match=r"^GET http://users/x failed after 1 attempt on service "
                                 r"'users' .*last cause: ConnectError"):
            await client.get("http://users/x")


def test_scoped_policy_where_a_policy_belongs_points_to_policy() -> None:
    """meshlib.policy(...) (the scope) given as a client's, service's or route's policy."""
    hint = (r"got meshlib\.policy\(retries=1\), the scoped override .* "
            r"use meshlib\.Policy\(retries=1\)")
    with pytest.raises(meshlib.ConfigError, match="^policy must be a meshlib.Policy, " + hint):
        meshlib.MeshClient(services={"users": "static://127.0.0.1:1"},
                           policy=meshlib.policy(retries=1))  # type: ignore[arg-type]
    with pytest.raises(meshlib.ConfigError, match="^Service policy must .*" + hint):
        meshlib.Service("static://127.0.0.1:1",
                        policy=meshlib.policy(retries=1))  # type: ignore[arg-type]
    with pytest.raises(meshlib.ConfigError, match="^Route policy must .*" + hint):
        meshlib.Route(to="users", policy=meshlib.policy(retries=1))  # type: ignore[arg-type]


def test_bare_host_port_suggests_static() -> None:
    """Service("127.0.0.1:8001") and services={"users": "h:p,h:p"} suggest static://."""
    with pytest.raises(meshlib.ConfigError,
                       match=r"got '127\.0\.0\.1:8001'; did you mean 'static://127\.0\.0\.1:8001'\?"):
        meshlib.Service("127.0.0.1:8001")
    with pytest.raises(meshlib.ConfigError,
                       match=r"^service 'users': .*did you mean "
                             r"'static://127\.0\.0\.1:8001,\[::1\]:8002'\?"):
        meshlib.MeshClient(services={"users": "127.0.0.1:8001,[::1]:8002"})
    with pytest.raises(meshlib.ConfigError) as caught:
        meshlib.Service("users.example.com")
    assert "static://" not in str(caught.value)


def test_hedge_delay_error_names_p95() -> None:
    """A wrong string for Hedge.delay names the one string accepted, "p95"."""
    with pytest.raises(meshlib.ConfigError, match=r'number of seconds or "p95".*got \'p99\''):
        meshlib.Hedge(delay="p99")  # type: ignore[arg-type]


def test_retries_0_still_fails_fast_once_the_breaker_opens() -> None:
    """retries=0 means one attempt; the breakers still turn refusals into CircuitOpenError."""
    policy = meshlib.Policy(retries=0, breaker=meshlib.Breaker(failures=2))
    with Fleet(1, refuse=True) as fleet, meshlib.MeshClient(
            services={"users": meshlib.Service(fleet.url, policy=policy)}) as client:
        errors = []
        for _ in range(4):
            with pytest.raises(httpx.TransportError) as caught:
                client.get("http://users/x")
            errors.append(type(caught.value))
    assert errors == [httpx.ConnectError, httpx.ConnectError, meshlib.CircuitOpenError,
                      meshlib.CircuitOpenError]


def test_breaker_none_with_retries_0_is_plain_httpx_behaviour() -> None:
    """Policy(retries=0, breaker=None): every refusal is a ConnectError after one attempt,
    and a failing route's 503s come back as responses, never CircuitOpenError."""
    policy = meshlib.Policy(retries=0, breaker=None)
    with Fleet(1, refuse=True) as refusing, Fleet(2, error_rate=1.0, status=503) as failing, \
            meshlib.MeshClient(services={
                "users": meshlib.Service(refusing.url, policy=policy),
                "orders": meshlib.Service(failing.url, policy=policy)}) as client:
        for _ in range(12):
            with pytest.raises(httpx.ConnectError, match="after 1 attempt"):
                client.get("http://users/x")
        statuses = {client.get("http://orders/x").status_code for _ in range(12)}
        snapshot = client.snapshot()
    assert statuses == {503}
    for service in ("users", "orders"):
        assert {e["breaker"] for e in snapshot["services"][service]["endpoints"]} == {"closed"}


def test_breaker_none_cannot_be_scoped() -> None:
    """A breaker is state of the service: meshlib.policy(breaker=None) is refused."""
    with pytest.raises(meshlib.ConfigError, match="breaker"):
        meshlib.policy(breaker=None)
