"""Routes against real loopback servers: matching, splits, per-route policy, layering,
the routes file, and what a response tells."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Hedge, Match, Policy, Route, Split

FAST = Policy(backoff=Backoff(base=0.001, max=0.005))


def _backend_of(response: httpx.Response) -> str:
    return str(response.headers["x-backend"])


def test_path_header_method_and_query_matching(backends: BackendFactory) -> None:
    """Each condition steers to its service; the first matching route wins; anything
    else goes to the service of the host's name."""
    users, v2, admin, search = (backends(1) for _ in range(4))
    services = {"users": users.static_url, "users-v2": v2.static_url,
                "admin": admin.static_url, "search": search.static_url}
    routes = {"users": [
        Route(Match(headers={"X-Canary": "yes"}), to="users-v2", name="canary"),
        Route(Match(path_prefix="/admin"), to="admin"),
        Route(Match(path="/find", method="post"), to="search"),
        Route(Match(path_regex=r"/q/[0-9]+", query={"engine": "new"}), to="search"),
    ]}
    with meshlib.MeshClient(services=services, routes=routes, policy=FAST) as client:
        def at(path: str, **kwargs: object) -> str:
            return _backend_of(client.request(kwargs.pop("method", "GET"),  # type: ignore[arg-type]
                                              f"http://users{path}", **kwargs))  # type: ignore[arg-type]

        assert at("/x", headers={"x-canary": "yes"}) == v2.addresses[0]  # name ignores case
        assert at("/x", headers={"x-canary": "YES"}) == users.addresses[0]  # value exact
        assert at("/admin") == admin.addresses[0]
        assert at("/admin/users/7") == admin.addresses[0]
        assert at("/administrator") == users.addresses[0]  # segment-aware prefix
        assert at("/find", method="POST") == search.addresses[0]
        assert at("/find") == users.addresses[0]  # GET: method differs
        assert at("/find/more", method="POST") == users.addresses[0]  # exact path
        assert at("/q/42?engine=new") == search.addresses[0]
        assert at("/q/42?engine=old") == users.addresses[0]
        assert at("/q/42x?engine=new") == users.addresses[0]  # fullmatch
        # the first matching route wins
        assert at("/admin", headers={"x-canary": "yes"}) == v2.addresses[0]


def test_split_draws_within_binomial_bounds(backends: BackendFactory) -> None:
    """A 90/10 split over 2,000 requests sends 10% to the canary, within 5 sigma."""
    stable, canary = backends(2), backends(1)
    routes = {"users": [Route(to=Split({"users-v1": 90, "users-v2": 10}))]}
    services = {"users-v1": stable.static_url, "users-v2": canary.static_url}
    with meshlib.MeshClient(services=services, routes=routes, policy=FAST) as client:
        seen: dict[str, int] = {}
        for _ in range(2000):
            response = client.get("http://users/")
            service = response.extensions["meshlib"]["service"]
            seen[service] = seen.get(service, 0) + 1
    n, p = 2000, 0.10
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(seen.get("users-v2", 0) - n * p) < 5 * sigma, seen
    assert seen["users-v1"] + seen.get("users-v2", 0) == n
    assert canary.count == seen.get("users-v2", 0)


def test_retries_stay_in_the_service_the_split_drew(backends: BackendFactory) -> None:
    """A split draws once per logical request: retries never cross to the other side
    (and the failing side's route fails fast on its own)."""
    bad, good = backends(3, status=503), backends(1)
    routes = {"users": [Route(to=Split({"bad": 1, "good": 1}))]}
    answered_good = failed_fast = 0
    with meshlib.MeshClient(services={"bad": bad.static_url, "good": good.static_url},
                            routes=routes, policy=FAST.replace(retries=2)) as client:
        for _ in range(40):
            try:
                response = client.get("http://users/")
            except meshlib.CircuitOpenError as exc:
                assert "'bad'" in str(exc)
                failed_fast += 1
                continue
            info = response.extensions["meshlib"]
            if info["service"] == "bad":
                assert response.status_code == 503
            else:
                assert response.status_code == 200
                assert info["attempts"] == 1
                answered_good += 1
    assert good.count == answered_good > 0
    assert failed_fast > 0


def test_no_route_matched(backends: BackendFactory) -> None:
    """A host whose routes do not match raises NoRouteError with nothing sent, unless a
    service has its name."""
    b = backends(1)
    routes = {"api": [Route(Match(path_prefix="/v1"), to="users")],
              "users": [Route(Match(path_prefix="/v9"), to="users", name="v9")]}
    with meshlib.MeshClient(services={"users": b.static_url}, routes=routes) as client:
        assert client.get("http://api/v1/me").status_code == 200
        before = b.count
        with pytest.raises(meshlib.NoRouteError) as caught:
            client.get("http://api/v2/me")
        assert "api" in str(caught.value) and "nothing was sent" in str(caught.value)
        assert isinstance(caught.value, httpx.TransportError)
        assert b.count == before
        # users has routes, none matches /x: the service of the host's name takes it
        response = client.get("http://users/x")
        assert response.status_code == 200
        assert response.extensions["meshlib"]["route"] is None
        assert client.get("http://users/v9/a").extensions["meshlib"]["route"] == "v9"
        assert client.get("http://api/v1/a").extensions["meshlib"]["route"] == 0


def test_per_route_timeout_and_retries(backends: BackendFactory) -> None:
    """A route's policy applies to its requests only, field by field over the service's."""
    b = backends(2, status=503)
    routes = {"svc": [
        Route(Match(path_prefix="/once"), to="svc", policy=Policy(retries=0), name="once"),
        Route(Match(path_prefix="/slow"), to="svc", policy=Policy(timeout=0.3), name="slow"),
    ]}
    client_policy = FAST.replace(retries=2, breaker=meshlib.Breaker(failures=1000))
    with meshlib.MeshClient(services={"svc": b.static_url}, routes=routes,
                            policy=client_policy) as client:
        assert client.get("http://svc/once").extensions["meshlib"]["attempts"] == 1
        assert client.get("http://svc/other").extensions["meshlib"]["attempts"] == 3
        b.set(status=200)
        # the route's deadline reaches the server (and keeps the client's retries)
        seen = client.get("http://svc/slow").json()["headers"]
        assert int(seen["x-mesh-timeout-ms"]) <= 300
        started = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            client.get("http://svc/slow?delay_ms=2000")
        assert time.monotonic() - started < 1.5
        other = client.get("http://svc/other").json()["headers"]
        assert int(other["x-mesh-timeout-ms"]) > 5000


def test_route_policy_may_not_set_cluster_fields() -> None:
    """breaker, retry_budget, balancer and slow_start belong to a service."""
    with pytest.raises(meshlib.ConfigError, match="breaker"):
        meshlib.MeshClient(services={"svc": "static://127.0.0.1:1"},
                           routes={"svc": [Route(to="svc", policy=Policy(
                               breaker=meshlib.Breaker(failures=2)))]})


def test_bad_routes_are_config_errors() -> None:
    """Every mistake is a ConfigError naming what is wrong, when the client is built."""
    services = {"svc": "static://127.0.0.1:1"}
    cases = [
        ({"svc": [Route(to="nope")]}, "not a configured service"),
        ({"svc": Route(to="svc")}, "list of meshlib.Route"),
        ({"bad host!": [Route(to="svc")]}, "not a host name"),
        ({"svc": [Route(to="svc", name="a"), Route(to="svc", name="a")]}, "named 'a'"),
    ]
    for routes, message in cases:
        with pytest.raises(meshlib.ConfigError, match=message):
            meshlib.MeshClient(services=services, routes=routes)  # type: ignore[arg-type]
    with pytest.raises(meshlib.ConfigError, match="one of path"):
        Match(path="/a", path_prefix="/b")
    with pytest.raises(meshlib.ConfigError, match="start with '/'"):
        Match(path_prefix="api")
    with pytest.raises(meshlib.ConfigError, match="at most 1000"):
        Match(path_regex="a" * 1001)
    with pytest.raises(meshlib.ConfigError, match="not a valid regular expression"):
        Match(path_regex="(")
    with pytest.raises(meshlib.ConfigError, match="weight"):
        Split({"a": 0})
    with pytest.raises(meshlib.ConfigError, match="HTTP method"):
        Match(method="GET /")


def test_policy_layers_field_by_field(backends: BackendFactory) -> None:
    """MESHLIB_TIMEOUT=0.5 plus a client policy that only sets a hedge keeps the 0.5 s
    deadline; a Service policy of retries=1 under a client timeout of 2.0 keeps 2.0 s."""
    b = backends(2)
    env = {"MESHLIB_TIMEOUT": "0.5"}
    with meshlib.MeshClient(services={"svc": b.static_url}, environ=env,
                            policy=Policy(hedge=Hedge(0.05))) as client:
        sent = client.get("http://svc/").json()["headers"]
        assert 300 < int(sent["x-mesh-timeout-ms"]) <= 500
    service = meshlib.Service(b.static_url, policy=Policy(retries=1))
    with meshlib.MeshClient(services={"svc": service}, policy=Policy(timeout=2.0)) as client:
        sent = client.get("http://svc/").json()["headers"]
        assert 1500 < int(sent["x-mesh-timeout-ms"]) <= 2000
        b.set(status=503)
        assert client.get("http://svc/").extensions["meshlib"]["attempts"] == 2
    # a scoped policy is the most specific layer; a scoped deadline can only shorten
    route = Route(to="svc", policy=Policy(timeout=3.0, retries=0))
    b.set(status=200)
    with meshlib.MeshClient(services={"svc": service}, routes={"svc": [route]}) as client:
        sent = client.get("http://svc/").json()["headers"]
        assert 2500 < int(sent["x-mesh-timeout-ms"]) <= 3000
        with meshlib.policy(timeout=1.0):
            sent = client.get("http://svc/").json()["headers"]
            assert int(sent["x-mesh-timeout-ms"]) <= 1000
        with meshlib.deadline(0.4), meshlib.policy(timeout=5.0):
            sent = client.get("http://svc/").json()["headers"]
            assert int(sent["x-mesh-timeout-ms"]) <= 400


def test_policy_given_fields() -> None:
    """A Policy remembers the fields it was given; replace adds to them."""
    assert Policy(hedge=Hedge(0.05)).given == {"hedge"}
    assert Policy().given == frozenset()
    assert Policy(timeout=1.0).replace(retries=0).given == {"timeout", "retries"}


def _write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def test_routes_file_is_read_and_watched(backends: BackendFactory, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """MESHLIB_ROUTES routes requests; a change is picked up; a bad change keeps the last
    good routes (logged)."""
    v1, v2 = backends(1), backends(1)
    routes_file = tmp_path / "routes.json"
    _write(routes_file, {"users": [{"match": {"path_prefix": "/v2"}, "to": "users-v2",
                                    "name": "v2", "policy": {"timeout": "800ms"}}]})
    env = {"MESHLIB_ROUTES": str(routes_file),
           "MESHLIB_SERVICES": f"users={v1.static_url} users-v2={v2.static_url}"}
    with meshlib.MeshClient(environ=env) as client:
        response = client.get("http://users/v2/x")
        assert _backend_of(response) == v2.addresses[0]
        assert int(response.json()["headers"]["x-mesh-timeout-ms"]) <= 800
        assert _backend_of(client.get("http://users/v1/x")) == v1.addresses[0]
        # a new host, added by the file later
        _write(routes_file, {"people": [{"to": {"users-v2": 1}}]})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if _backend_of(client.get("http://people/")) == v2.addresses[0]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the changed routes file was not picked up")
        routes_file.write_text("{not json")
        time.sleep(1.5)
        assert _backend_of(client.get("http://people/")) == v2.addresses[0]
        assert any("keeping the last good routes" in r.getMessage() for r in caplog.records)


def test_bad_routes_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    """A bad file when the client is built raises ConfigError naming it and the entry."""
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"svc": [{"to": "svc", "policy": {"timeout": "fast"}}]}))
    env = {"MESHLIB_ROUTES": str(path), "MESHLIB_SERVICES": "svc=static://127.0.0.1:1"}
    with pytest.raises(meshlib.ConfigError, match=r"routes.json.*svc\[0\]\.policy\.timeout"):
        meshlib.MeshClient(environ=env)
    with pytest.raises(meshlib.ConfigError, match="MESHLIB_ROUTES"):
        meshlib.MeshClient(environ={"MESHLIB_ROUTES": str(tmp_path / "missing.json")})
    with pytest.raises(meshlib.ConfigError, match="absolute path"):
        meshlib.MeshClient(environ={"MESHLIB_ROUTES": "routes.json"})


async def test_async_client_routes(backends: BackendFactory) -> None:
    """The async client takes the same routes."""
    a, b = backends(1), backends(1)
    routes = {"users": [Route(Match(method="DELETE"), to="b", name="deletes")]}
    async with meshlib.AsyncMeshClient(services={"users": a.static_url, "b": b.static_url},
                                       routes=routes) as client:
        response = await client.delete("http://users/x")
        assert _backend_of(response) == b.addresses[0]
        assert response.extensions["meshlib"]["route"] == "deletes"
        assert _backend_of(await client.get("http://users/x")) == a.addresses[0]
