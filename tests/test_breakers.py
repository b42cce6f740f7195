"""Circuit breakers against real servers: eject, fail fast, recover with one trial."""

from __future__ import annotations

import time

import pytest

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Breaker, Policy

FAST = Policy(backoff=Backoff(base=0.001, max=0.005))


def _breakers(client: meshlib.MeshClient) -> dict[str, str]:
    snap = client.snapshot()["services"]["svc"]
    return {e["endpoint"]: e["breaker"] for e in snap["endpoints"]}


def test_failing_endpoint_is_ejected_after_consecutive_failures(
        backends: BackendFactory) -> None:
    """Five 503s in a row, where its peer answers 200, open an endpoint's breaker; traffic
    then avoids it. (A 503 before any peer has answered proves nothing against it: with
    round-robin, 12 requests give it at least five counted failures.)"""
    b = backends(2, status=[503, 200])
    policy = FAST.replace(retries=0, balancer="round-robin",
                          breaker=Breaker(failures=5, reset_timeout=30))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(12):
            client.get("http://svc/")
        assert _breakers(client)[b.addresses[0]] == "open"
        b.reset_counts()
        for _ in range(20):
            assert client.get("http://svc/").status_code == 200
    assert b[0].count == 0


def test_4xx_answers_do_not_open_the_breaker(backends: BackendFactory) -> None:
    """404s are successes for the breaker."""
    b = backends(1, status=404)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(breaker=Breaker(failures=2))) as client:
        for _ in range(10):
            assert client.get("http://svc/").status_code == 404
        assert _breakers(client)[b.addresses[0]] == "closed"


def test_every_breaker_open_fails_fast_with_nothing_sent(backends: BackendFactory) -> None:
    """When all endpoints are open, CircuitOpenError is raised at once, nothing sent."""
    b = backends(2)
    for server in b:
        server.refuse()
    policy = FAST.replace(retries=0, breaker=Breaker(failures=2, reset_timeout=30))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(8):
            try:
                client.get("http://svc/")
            except meshlib.CircuitOpenError:
                break
            except meshlib.MeshError:
                raise
            except Exception:
                continue
        assert set(_breakers(client).values()) == {"open"}
        for server in b:
            server.restore()
        b.reset_counts()
        start = time.monotonic()
        with pytest.raises(meshlib.CircuitOpenError):
            client.get("http://svc/")
        assert time.monotonic() - start < 0.5
    assert b.count == 0


def _route(client: meshlib.MeshClient, route: str) -> str:
    routes = client.snapshot()["services"]["svc"]["routes"]
    return str(routes.get(route, {"breaker": "closed"})["breaker"])


def test_breaker_recovers_through_one_trial_after_reset_timeout(
        backends: BackendFactory) -> None:
    """After reset_timeout one trial request goes through; its success closes the breaker.

    One endpoint failing alone is its route failing everywhere: the route's breaker is
    the one that opens (an endpoint is only ejected for failing where its peers succeed).
    """
    b = backends(1, status=503)
    policy = FAST.replace(retries=0, breaker=Breaker(failures=3, reset_timeout=0.3))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(3):
            client.get("http://svc/")
        with pytest.raises(meshlib.CircuitOpenError):
            client.get("http://svc/")
        b[0].status = 200
        time.sleep(0.35)
        assert _route(client, "GET /") == "half-open"
        assert client.get("http://svc/").status_code == 200
        assert _route(client, "GET /") == "closed"
        assert _breakers(client)[b.addresses[0]] == "closed"


def test_failed_trial_reopens_the_breaker(backends: BackendFactory) -> None:
    """A failed trial opens the breaker again for another reset_timeout."""
    b = backends(1, status=503)
    policy = FAST.replace(retries=0, breaker=Breaker(failures=2, reset_timeout=0.2))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(2):
            client.get("http://svc/")
        time.sleep(0.25)
        assert client.get("http://svc/").status_code == 503  # the trial
        assert _route(client, "GET /") == "open"
        b.reset_counts()
        with pytest.raises(meshlib.CircuitOpenError):
            client.get("http://svc/")
    assert b.count == 0


def test_fast_failing_endpoint_does_not_attract_traffic(backends: BackendFactory) -> None:
    """An endpoint answering 503 in ~0 ms does not win p2c-ewma over a 5 ms healthy one."""
    b = backends(2, status=[503, 200], delay_ms=[0, 5])
    policy = FAST.replace(retries=0, breaker=Breaker(failures=10**6))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(200):
            client.get("http://svc/")
    assert b[0].count < 20, (b[0].count, b[1].count)
