"""Failure accounting by route, against real loopback servers: a route that drops its
connections ejects no healthy host, the caller's own limits never count, ejection slots
belong to live endpoints, a whole-service outage fails fast and recovers, and one bad
endpoint among healthy peers is still ejected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Breaker, Match, Policy, Route
from meshlib._discovery._file import FileDiscovery
from meshlib.wsgi import MeshMiddleware
from test_wsgi import serve_wsgi

FAST = Policy(backoff=Backoff(base=0.001, max=0.005))

Client = meshlib.MeshClient | meshlib.AsyncMeshClient


def _breakers(client: Client, service: str = "svc") -> dict[str, str]:
    snap = client.snapshot()["services"][service]
    return {e["endpoint"]: e["breaker"] for e in snap["endpoints"]}


def _route(client: Client, route: str, service: str = "svc") -> str:
    routes = client.snapshot()["services"][service]["routes"]
    return str(routes.get(route, {"breaker": "closed"})["breaker"])


# -- a route-local fault ------------------------------------------------------------------

def test_a_route_that_drops_connections_ejects_no_healthy_host(
        backends: BackendFactory) -> None:
    """`/export` reads the request, then closes the connection, on every instance: its
    route fails fast (nothing sent) while the next 20 requests to `/users/me` on the
    same service all succeed; no endpoint is ejected."""
    b = backends(4)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        for _ in range(20):
            with pytest.raises(httpx.HTTPError):
                client.get("http://svc/export?mode=close")
        assert _route(client, "GET /export") == "open"
        sent = b.count
        with pytest.raises(meshlib.CircuitOpenError, match="GET /export"):
            client.get("http://svc/export?mode=close")
        assert b.count == sent
        for _ in range(20):
            assert client.get("http://svc/users/me").status_code == 200
        assert set(_breakers(client).values()) == {"closed"}


def test_a_configured_route_failing_does_not_fail_its_siblings(
        backends: BackendFactory) -> None:
    """With routes configured, the breaker is the configured route's (by its name): a
    route answering 503 everywhere opens; a sibling route to the same service does not."""
    b = backends(3)
    routes = {"svc": [Route(Match(path_prefix="/export"), to="svc", name="export"),
                      Route(to="svc", name="rest")]}
    with meshlib.MeshClient(services={"svc": b.static_url}, routes=routes,
                            policy=FAST.replace(retries=0)) as client:
        for _ in range(30):
            with contextlib.suppress(meshlib.CircuitOpenError):
                assert client.get("http://svc/export/all?status=503").status_code == 503
        assert _route(client, "svc#export") == "open"
        with pytest.raises(meshlib.CircuitOpenError, match="export"):
            client.get("http://svc/export/all?status=503")
        for _ in range(20):
            response = client.get("http://svc/users/me")
            assert response.status_code == 200
            assert response.extensions["meshlib"]["route"] == "rest"
        assert _route(client, "svc#rest") == "closed"
        assert set(_breakers(client).values()) == {"closed"}


# -- the caller's own limits ---------------------------------------------------------------

def _limit_cases() -> list[str]:
    return ["scoped-policy", "timeout-argument"]


@pytest.mark.parametrize("limit", _limit_cases())
def test_a_callers_short_limit_opens_no_breaker(backends: BackendFactory, limit: str) -> None:
    """One caller's `meshlib.policy(attempt_timeout=0.005)` or `client.get(...,
    timeout=0.005)` against 30 ms endpoints: every request times out, and no endpoint
    nor route breaker opens; callers without the limit are then served by all four."""
    b = backends(4, delay_ms=30)
    policy = FAST.replace(breaker=Breaker(failures=2))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(20):
            with pytest.raises(httpx.TimeoutException):
                if limit == "scoped-policy":
                    with meshlib.policy(attempt_timeout=0.005):
                        client.get("http://svc/users/me")
                else:
                    client.get("http://svc/users/me", timeout=0.005)
        assert set(_breakers(client).values()) == {"closed"}
        route = client.snapshot()["services"]["svc"]["routes"]["GET /users"]
        assert (route["breaker"], route["consecutive_failures"]) == ("closed", 0)
        b.reset_counts()
        for _ in range(40):
            assert client.get("http://svc/users/me").status_code == 200
        assert len([n for n in b.counts.values() if n]) == 4


def test_an_inherited_deadline_header_opens_no_breaker(backends: BackendFactory) -> None:
    """A real WSGI server behind `meshlib.wsgi.MeshMiddleware` relays to 30 ms upstreams;
    its callers send `x-mesh-timeout-ms: 5`: every relayed call runs out of time, and no
    upstream breaker (endpoint or route) opens; callers without the header are served."""
    b = backends(4, delay_ms=30)
    policy = FAST.replace(breaker=Breaker(failures=2))
    client = meshlib.MeshClient(services={"down": b.static_url}, policy=policy)

    def relay(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            status = client.get("http://down/users/me").status_code
            body = b"%d" % status
            start_response("200 OK", [("content-type", "text/plain")])
        except httpx.HTTPError as exc:
            body = type(exc).__name__.encode()
            start_response("504 Gateway Timeout", [("content-type", "text/plain")])
        return [body]

    try:
        with serve_wsgi(MeshMiddleware(relay)) as url, httpx.Client(timeout=10) as caller:
            for _ in range(20):
                r = caller.get(url + "/", headers={"x-mesh-timeout-ms": "5"})
                assert r.status_code == 504, r.text
            assert set(_breakers(client, "down").values()) == {"closed"}
            route = client.snapshot()["services"]["down"]["routes"]["GET /users"]
            assert (route["breaker"], route["consecutive_failures"]) == ("closed", 0)
            for _ in range(20):
                r = caller.get(url + "/")
                assert (r.status_code, r.text) == (200, "200")
    finally:
        client.close()


# -- ejection slots belong to live endpoints ------------------------------------------------

def _write_endpoints(path: Path, addresses: list[str]) -> None:
    entries = [{"host": a.rsplit(":", 1)[0], "port": int(a.rsplit(":", 1)[1])}
               for a in addresses]
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(entries))
    os.replace(temp, path)


def test_endpoints_retired_while_ejected_give_their_slots_back(
        backends: BackendFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two of four endpoints answer 503 and are ejected (the 50% cap is full). Discovery
    then drops them and adds a new always-503 endpoint: it is ejected in turn, because
    the retired endpoints freed their slots."""
    monkeypatch.setattr(FileDiscovery, "POLL_INTERVAL", 0.02)
    b = backends(4, status=[503, 503, 200, 200])
    newcomer = backends(1, status=503)
    path = tmp_path / "svc.json"
    _write_endpoints(path, b.addresses)
    bad = set(b.addresses[:2])
    policy = FAST.replace(retries=0, breaker=Breaker(failures=2, reset_timeout=60.0))
    with meshlib.MeshClient(services={"svc": f"file://{path}"}, policy=policy) as client, \
            meshlib.policy(balancer="round-robin"):
        for _ in range(40):
            client.get("http://svc/")
            if all(_breakers(client)[a] == "open" for a in bad):
                break
        assert {a for a, s in _breakers(client).items() if s == "open"} == bad
        _write_endpoints(path, [*b.addresses[2:], newcomer.addresses[0]])
        deadline = time.monotonic() + 5
        while set(_breakers(client)) != {*b.addresses[2:], newcomer.addresses[0]}:
            assert time.monotonic() < deadline, _breakers(client)
            time.sleep(0.02)
        for _ in range(30):
            client.get("http://svc/")
            if _breakers(client)[newcomer.addresses[0]] == "open":
                break
        states = _breakers(client)
        assert states[newcomer.addresses[0]] == "open", states
        assert [states[a] for a in b.addresses[2:]] == ["closed", "closed"]
        assert _route(client, "GET /") == "closed"


def test_one_bad_endpoint_among_three_is_still_ejected(backends: BackendFactory) -> None:
    """One endpoint answers 503 where its two peers answer 200: it is ejected, its peers
    and the route stay closed, and the callers see only 200s once it is out."""
    b = backends(3, status=[503, 200, 200])
    policy = FAST.replace(retries=0, breaker=Breaker(failures=3, reset_timeout=60.0))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client, \
            meshlib.policy(balancer="round-robin"):
        for _ in range(60):
            client.get("http://svc/")
            if _breakers(client)[b.addresses[0]] == "open":
                break
        assert _breakers(client) == {b.addresses[0]: "open", b.addresses[1]: "closed",
                                     b.addresses[2]: "closed"}
        assert _route(client, "GET /") == "closed"
        assert {client.get("http://svc/").status_code for _ in range(20)} == {200}


# -- a whole-service outage ----------------------------------------------------------------

async def test_an_outage_of_every_instance_fails_fast_and_recovers(
        backends: BackendFactory) -> None:
    """All five instances answer 503. Over 1,000 requests from 4 tasks the servers see at
    most 1.3 attempts per request; then at least 95% of requests fail fast with nothing
    sent; after the instances heal, requests succeed again within 2 x reset_timeout."""
    b = backends(5, status=503)
    reset = 0.5
    policy = FAST.replace(breaker=Breaker(reset_timeout=reset, max_reset_timeout=reset))
    outcomes: dict[str, int] = {}

    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, policy=policy) as client:
        async def worker(n: int) -> None:
            for _ in range(n):
                try:
                    r = await client.get("http://svc/orders")
                    key = str(r.status_code)
                except meshlib.CircuitOpenError:
                    key = "fast"
                outcomes[key] = outcomes.get(key, 0) + 1

        await asyncio.gather(*(worker(250) for _ in range(4)))
        assert sum(outcomes.values()) == 1000
        assert b.count / 1000 <= 1.3, (b.count, outcomes)
        assert _route(client, "GET /orders") in ("open", "half-open")
        assert set(_breakers(client).values()) == {"closed"}  # nobody ejected for it

        outcomes.clear()
        sent = b.count
        await asyncio.gather(*(worker(50) for _ in range(4)))
        assert outcomes.get("fast", 0) >= 0.95 * 200, outcomes
        assert b.count - sent <= 10

        b.set(status=200)
        healed_at = time.monotonic()
        while True:
            with contextlib.suppress(meshlib.CircuitOpenError):
                if (await client.get("http://svc/orders")).status_code == 200:
                    break
            assert time.monotonic() - healed_at < 2 * reset + 0.5
            await asyncio.sleep(0.01)
        assert _route(client, "GET /orders") == "closed"
        results = [(await client.get("http://svc/orders")).status_code for _ in range(20)]
        assert set(results) == {200}


# -- a busy, partly failing route is not shut by coincidence --------------------------------

def test_streak_needed_grows_with_the_routes_usual_failure_rate() -> None:
    from meshlib._route_health import streak_needed

    assert streak_needed(5, None) == 5 and streak_needed(5, 0.0) == 5
    assert streak_needed(5, 0.01) == 5
    assert streak_needed(5, 0.3) == 18  # 0.3 ** 18 < 1e-9
    assert streak_needed(5, 0.9) == 197
    assert streak_needed(5, 1.0) == 200


def _warm_up(client: meshlib.MeshClient, url: str, closed: Any) -> None:
    """Send `url` until the windows know how often things fail (a route or endpoint with
    fewer than 20 requests in its window is judged as if it never failed) and `closed()`
    holds; a run by coincidence while they learn is closed again by a trial."""
    deadline = time.monotonic() + 10
    sent = 0
    while sent < 100 or not closed():
        assert time.monotonic() < deadline, client.snapshot()
        with contextlib.suppress(meshlib.CircuitOpenError):
            client.get(url)
            sent += 1


def test_a_route_failing_now_and_then_is_never_shut_but_an_outage_still_is(
        backends: BackendFactory) -> None:
    """Two endpoints answer 30% of a route's requests with 503. Over 4,000 requests, runs
    of five failures happen by coincidence (several expected): the route's breaker never
    opens, because a route that usually fails 30% needs 18 in a row. When every request
    then fails, the route still fails fast."""
    b = backends(2)
    policy = FAST.replace(retries=0, breaker=Breaker(reset_timeout=0.1))
    url = "http://svc/search?fail_pct=30"
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        _warm_up(client, url, lambda: _route(client, "GET /search") == "closed")
        codes: dict[str, int] = {}
        for _ in range(4000):
            try:
                key = str(client.get(url).status_code)
            except meshlib.CircuitOpenError:
                key = "failed fast"
            codes[key] = codes.get(key, 0) + 1
        assert "failed fast" not in codes, codes
        assert 900 < codes.get("503", 0) < 1500, codes  # the route did fail about 30%
        for _ in range(200):
            try:
                client.get("http://svc/search?status=503")
            except meshlib.CircuitOpenError:
                break
        else:
            raise AssertionError("the route never failed fast")
        assert _route(client, "GET /search") == "open"


def test_endpoints_failing_as_often_as_their_peers_are_not_ejected(
        backends: BackendFactory) -> None:
    """Three endpoints each answer 30% of requests with 503. Runs of five failures on one
    endpoint happen by coincidence over 4,000 requests; none is ejected, because its
    peers fail as often. One endpoint that then fails every request is still ejected."""
    b = backends(3)
    policy = FAST.replace(retries=0, breaker=Breaker(reset_timeout=0.1))
    url = "http://svc/search?fail_pct=30"
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client, \
            meshlib.policy(balancer="round-robin"):
        _warm_up(client, url, lambda: set(_breakers(client).values()) == {"closed"})
        ejected = 0
        for _ in range(4000):
            client.get(url)
            ejected += set(_breakers(client).values()) != {"closed"}
        assert ejected == 0 and set(_breakers(client).values()) == {"closed"}
        b[0].status = 503
        for _ in range(300):
            client.get("http://svc/search")
            if _breakers(client)[b.addresses[0]] != "closed":
                break
        assert _breakers(client)[b.addresses[0]] != "closed"
        assert [_breakers(client)[a] for a in b.addresses[1:]] == ["closed", "closed"]
