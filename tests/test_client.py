"""MeshClient and AsyncMeshClient against real loopback servers: routing and pass-through."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any

import httpx
import pytest
import respx

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Policy
from meshlib.testing._backend import Backend


def _body(response: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


def test_service_request_is_routed_to_an_endpoint_and_keeps_its_url(
        backends: BackendFactory) -> None:
    """http://users/... reaches an endpoint with Host: users; the URL stays as written."""
    b = backends(2)
    with meshlib.MeshClient(services={"users": b.static_url}) as client:
        response = client.get("http://users/v1/me?x=1")
    assert response.status_code == 200
    assert str(response.request.url) == "http://users/v1/me?x=1"
    body = _body(response)
    assert body["headers"]["host"] == "users"
    assert body["path"] == "/v1/me"
    info = response.extensions["meshlib"]
    assert info["service"] == "users"
    assert info["endpoint"] in b.addresses
    assert info["endpoint"] == response.headers["x-backend"]
    assert info["attempts"] == 1 and info["hedged"] is False
    assert 0 < int(body["headers"]["x-mesh-timeout-ms"]) <= 10000


def test_other_hosts_pass_through_untouched(backends: BackendFactory) -> None:
    """A host that is not a service is plain httpx: no mesh header, no extension."""
    b = backends(1)
    with meshlib.MeshClient(services={"users": b.static_url}) as client:
        response = client.get(b.urls[0] + "/plain")
    assert response.status_code == 200
    assert "x-mesh-timeout-ms" not in _body(response)["headers"]
    assert "meshlib" not in response.extensions


def test_pass_through_is_not_retried(backends: BackendFactory) -> None:
    """Pass-through requests get no mesh retries."""
    b = backends(1, status=503)
    with meshlib.MeshClient(services={"users": "static://127.0.0.1:1"}) as client:
        assert client.get(b.urls[0]).status_code == 503
    assert b[0].count == 1


def test_requests_spread_across_endpoints_and_reuse_connections(
        backends: BackendFactory) -> None:
    """Every endpoint gets traffic, over a few kept-alive connections."""
    b = backends(3)
    policy = meshlib.Policy(balancer="round-robin")  # latency-blind: the spread is exact
    with meshlib.MeshClient(services={"users": b.static_url}, policy=policy) as client:
        seen = Counter(client.get("http://users/").headers["x-backend"] for _ in range(90))
    assert set(seen) == set(b.addresses)
    assert sum(server.connection_count for server in b) <= 6


@pytest.mark.parametrize("balancer", ["p2c-ewma", "least-request", "round-robin", "random"])
def test_each_balancer_routes_to_every_endpoint(backends: BackendFactory,
                                                balancer: str) -> None:
    """Each balancer, configured by policy, spreads requests over equal endpoints.

    p2c-ewma may rightly leave out an endpoint whose one sample was slowed by a
    busy machine (its estimate decays over 10 s), so it need only use several.
    """
    b = backends(3)
    policy = meshlib.Policy(balancer=balancer)  # type: ignore[arg-type]
    with meshlib.MeshClient(services={"users": b.static_url}, policy=policy) as client:
        seen = Counter(client.get("http://users/").headers["x-backend"] for _ in range(60))
    assert set(seen) <= set(b.addresses)
    assert len(seen) >= (2 if balancer == "p2c-ewma" else 3), seen
    if balancer == "round-robin":
        assert set(seen.values()) == {20}


def test_p2c_ewma_avoids_a_slow_endpoint_for_real(backends: BackendFactory) -> None:
    """Against real servers, p2c-ewma sends a 30 ms endpoint far less than fast ones."""
    b = backends(3, delay_ms=[0, 0, 30])
    with meshlib.MeshClient(services={"users": b.static_url}) as client:
        for _ in range(150):
            client.get("http://users/")
    assert b[2].count < 150 * 0.15, [s.count for s in b]


def test_environment_configures_services_and_policy(monkeypatch: pytest.MonkeyPatch,
                                                    backends: BackendFactory) -> None:
    """MESHLIB_SERVICES and MESHLIB_BALANCER configure a client built with no arguments."""
    b = backends(2)
    monkeypatch.setenv("MESHLIB_SERVICES", f"users={b.static_url};other=static://127.0.0.1:1")
    monkeypatch.setenv("MESHLIB_BALANCER", "round-robin")
    with meshlib.MeshClient() as client:
        seen = Counter(client.get("http://users/").headers["x-backend"] for _ in range(10))
    assert set(seen.values()) == {5}


def test_one_sync_client_shared_by_many_threads(backends: BackendFactory) -> None:
    """A MeshClient is safe to share: 8 threads x 40 requests all succeed, counts add up."""
    b = backends(3)
    errors: list[BaseException] = []
    with meshlib.MeshClient(services={"users": b.static_url}) as client:
        def work() -> None:
            try:
                for _ in range(40):
                    assert client.get("http://users/").status_code == 200
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        snap = client.snapshot()["services"]["users"]
    assert not errors
    assert b.count == 320
    assert sum(e["requests"] for e in snap["endpoints"]) == 320
    assert all(e["inflight"] == 0 for e in snap["endpoints"])


async def test_async_client_routes_concurrent_requests(backends: BackendFactory) -> None:
    """AsyncMeshClient routes 50 concurrent requests; in-flight returns to zero."""
    b = backends(3)
    async with meshlib.AsyncMeshClient(services={"users": b.static_url}) as client:
        responses = await asyncio.gather(*[client.get("http://users/a") for _ in range(50)])
        snap = client.snapshot()
    assert all(r.status_code == 200 for r in responses)
    assert b.count == 50
    assert {r.extensions["meshlib"]["endpoint"] for r in responses} <= set(b.addresses)
    assert all(e["inflight"] == 0 for e in snap["services"]["users"]["endpoints"])


async def test_async_pass_through(backends: BackendFactory) -> None:
    """The async client passes other hosts through untouched."""
    b = backends(1)
    async with meshlib.AsyncMeshClient(services={"users": b.static_url}) as client:
        response = await client.get(b.urls[0])
    assert "meshlib" not in response.extensions


def test_transport_works_inside_a_plain_httpx_client(backends: BackendFactory) -> None:
    """httpx.Client(transport=meshlib.MeshTransport(...)) routes services too."""
    b = backends(1)
    transport = meshlib.MeshTransport(services={"users": b.static_url})
    with httpx.Client(transport=transport) as client:
        response = client.get("http://users/")
    assert response.extensions["meshlib"]["endpoint"] == b.addresses[0]
    assert transport.snapshot()["services"]["users"]["endpoints"][0]["requests"] == 1


def test_post_body_stream_and_httpx_features_work(backends: BackendFactory) -> None:
    """post(json=...), stream() and build_request/send behave as in httpx."""
    b = backends(1)
    with meshlib.MeshClient(services={"users": b.static_url}, timeout=5) as client:
        response = client.post("http://users/items", json={"a": 1})
        assert _body(response)["body_bytes"] == len(b"{\"a\":1}")
        with client.stream("GET", "http://users/s") as streamed:
            assert b"".join(streamed.iter_bytes())
        request = client.build_request("PUT", "http://users/p", content=b"xyz")
        assert client.send(request).status_code == 200


def test_snapshot_has_the_documented_shape(backends: BackendFactory) -> None:
    """snapshot() is JSON-serialisable with endpoint stats and the budget balance."""
    b = backends(2)
    with meshlib.MeshClient(services={"users": b.static_url}) as client:
        client.get("http://users/")
        snap = json.loads(json.dumps(client.snapshot()))
    service = snap["services"]["users"]
    assert service["discovery"] == b.static_url
    assert isinstance(service["retry_budget"]["balance"], float)
    endpoint = service["endpoints"][0]
    assert set(endpoint) >= {"endpoint", "ewma_ms", "inflight", "breaker", "requests",
                             "failures"}
    assert endpoint["breaker"] == "closed"


def test_respx_mocks_keyed_on_the_service_url_still_match() -> None:
    """A user's respx mock of http://users/v1/me matches requests made through MeshClient."""
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get("http://users/v1/me").respond(200, json={"name": "ada"})
        with meshlib.MeshClient(services={"users": "static://127.0.0.1:9"}) as client:
            response = client.get("http://users/v1/me")
    assert route.called
    assert response.json() == {"name": "ada"}
    assert str(response.request.url) == "http://users/v1/me"


async def test_respx_mocks_match_async_requests() -> None:
    """The same holds for AsyncMeshClient."""
    with respx.mock(assert_all_called=True) as mock:
        mock.get("http://users/v1/me").respond(201)
        async with meshlib.AsyncMeshClient(services={"users": "static://127.0.0.1:9"}) as c:
            assert (await c.get("http://users/v1/me")).status_code == 201


async def test_async_attempt_under_a_sleeping_respx_mock_ends_at_its_time_limit() -> None:
    """A respx side effect that sleeps never touches a socket; AsyncMeshClient still ends
    the attempt at its time limit (the side effect is cancelled) and retries elsewhere."""
    calls: list[str] = []
    finished: list[str] = []

    async def first_slow(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            await asyncio.sleep(30)
            finished.append("slow")
        return httpx.Response(200, text="fast")

    policy = Policy(attempt_timeout=0.2, timeout=20.0, retries=1,
                    backoff=Backoff(base=0.001, max=0.005))
    with respx.mock(assert_all_called=True) as mock:
        mock.get("http://users/v1/me").mock(side_effect=first_slow)
        async with meshlib.AsyncMeshClient(services={"users": "static://127.0.0.1:9"},
                                           policy=policy) as client:
            response = await client.get("http://users/v1/me")
    assert response.text == "fast"
    assert response.extensions["meshlib"]["attempts"] == 2
    assert finished == []


async def test_async_deadline_under_a_sleeping_respx_mock() -> None:
    """With no time for a retry, the sleeping mock ends in DeadlineExceeded, not its answer."""
    started: list[str] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        started.append(request.url.path)
        await asyncio.sleep(30)
        return httpx.Response(200)

    # respx counts a call once its side effect returns: this one is cancelled first
    with respx.mock(assert_all_called=False) as mock:
        mock.get("http://users/v1/me").mock(side_effect=slow)
        async with meshlib.AsyncMeshClient(services={"users": "static://127.0.0.1:9"},
                                           policy=Policy(timeout=0.2)) as client:
            with pytest.raises(meshlib.DeadlineExceeded):
                await client.get("http://users/v1/me")
    assert started == ["/v1/me"]


def test_ipv6_endpoints(backends: BackendFactory) -> None:
    """An endpoint on [::1] is reached and reported as [::1]:port."""
    try:
        b: Backend = backends(1, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with meshlib.MeshClient(services={"users": b.static_url}) as client:
        response = client.get("http://users/")
    assert response.extensions["meshlib"]["endpoint"].startswith("[::1]:")


def test_a_proxy_from_the_environment_never_captures_service_hosts(
        monkeypatch: pytest.MonkeyPatch, backends: BackendFactory) -> None:
    """With HTTP_PROXY set, service requests still go straight to their endpoints."""
    b = backends(1)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    with meshlib.MeshClient(services={"users": b.static_url}) as client:
        response = client.get("http://users/")
    assert response.extensions["meshlib"]["endpoint"] == b.addresses[0]


def test_pass_through_uses_proxies_from_the_environment_like_plain_httpx(
        monkeypatch: pytest.MonkeyPatch, backends: BackendFactory) -> None:
    """HTTP_PROXY applies to pass-through hosts exactly as with httpx.Client."""
    proxy = backends(1)
    monkeypatch.setenv("HTTP_PROXY", proxy.urls[0])
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with httpx.Client() as plain:
        expected = plain.get("http://elsewhere.invalid/x").headers["x-backend"]
    with meshlib.MeshClient(services={"users": "static://127.0.0.1:9"}) as client:
        response = client.get("http://elsewhere.invalid/x")
    assert response.headers["x-backend"] == expected == proxy.addresses[0]
    assert proxy.count == 2
