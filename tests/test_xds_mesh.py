"""xds:/// services end to end: a real control plane (XdsServer) steering a MeshClient's
requests to real loopback backends (meshlib.testing.Fleet)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("grpc")

import meshlib
from meshlib._xds.resources import EndpointSpec, EndpointsSpec, ListenerSpec
from meshlib.testing import Fleet, XdsServer
from servers import wait_until

LISTENER = "users.shop.svc.cluster.local:80"
URL = f"xds:///{LISTENER}"


def eds(name: str, fleet: Fleet, health: str = "HEALTHY") -> EndpointsSpec:
    return EndpointsSpec(name, tuple(
        EndpointSpec("127.0.0.1", int(e.rpartition(":")[2]), health=health)  # type: ignore[arg-type]
        for e in fleet.endpoints))


def cluster(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}},
            **extra}


def route_config(*routes: dict[str, Any], domains: tuple[str, ...] = ("*",)) -> dict[str, Any]:
    return {"name": "users-routes",
            "virtual_hosts": [{"name": "users", "domains": list(domains), "routes": list(routes)}]}


def to(cluster_name: str, prefix: str = "/", **action: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster_name, **action}}


def split(weights: dict[str, int]) -> dict[str, Any]:
    return {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": n, "weight": w} for n, w in weights.items()]}}}


def which(response: httpx.Response) -> str:
    service: str = response.extensions["meshlib"]["service"]
    return service


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[XdsServer]:
    with XdsServer() as running:
        monkeypatch.setenv("MESHLIB_XDS_BOOTSTRAP", running.bootstrap)
        yield running


def publish(server: XdsServer, routes: dict[str, Any], clusters: list[dict[str, Any]],
            endpoints: list[EndpointsSpec]) -> dict[str, str]:
    return server.set(listeners=[ListenerSpec(LISTENER, "users-routes")], routes=[routes],
                      clusters=clusters, endpoints=endpoints)


def test_header_routing_and_the_default_route(server: XdsServer,
                                               mesh_fleet: Callable[..., Fleet]) -> None:
    """A header match sends to its cluster; other requests take the next route; the
    response names the cluster (``xds:NAME``) and the route."""
    v1, v2 = mesh_fleet(), mesh_fleet()
    publish(server, route_config(
        {"name": "canary", "match": {"prefix": "/", "headers": [
            {"name": "x-canary", "string_match": {"exact": "1"}}]},
         "route": {"cluster": "v2"}},
        to("v1")), [cluster("v1"), cluster("v2")], [eds("v1", v1), eds("v2", v2)])
    with meshlib.MeshClient(services={"users": URL}) as client:
        plain = client.get("http://users/a")
        canary = client.get("http://users/a", headers={"X-Canary": "1"})
        assert plain.status_code == canary.status_code == 200
        assert (which(plain), plain.extensions["meshlib"]["route"]) == ("xds:v1", 1)
        assert (which(canary), canary.extensions["meshlib"]["route"]) == ("xds:v2", "canary")
        assert canary.extensions["meshlib"]["endpoint"] == v2.endpoints[0]


async def test_a_canary_split_moved_while_traffic_runs_loses_no_request(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """The control plane moves a weighted split 100/0 -> 50/50 -> 0/100 while requests
    run: every request succeeds, and traffic follows each split."""
    v1, v2 = mesh_fleet(2), mesh_fleet(2)
    publish(server, route_config(split({"v1": 100, "v2": 0})), [cluster("v1"), cluster("v2")],
            [eds("v1", v1), eds("v2", v2)])
    async with meshlib.AsyncMeshClient(services={"users": URL}) as client:
        async def burst(n: int) -> list[str]:
            responses = await asyncio.gather(*(client.get("http://users/x") for _ in range(n)))
            assert [r.status_code for r in responses] == [200] * n
            return [which(r) for r in responses]

        assert set(await burst(20)) == {"xds:v1"}
        stop = asyncio.Event()
        seen: list[str] = []

        async def traffic() -> None:
            for _ in range(2000):  # bounded: ends when told, or after 2000 rounds
                if stop.is_set():
                    return
                seen.extend(await burst(4))

        runner = asyncio.create_task(traffic())
        await asyncio.to_thread(server.set, routes=[route_config(split({"v1": 50, "v2": 50}))])
        for _ in range(500):
            if "xds:v2" in seen:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(server.set, routes=[route_config(split({"v1": 0, "v2": 100}))])
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(runner, 30)
        assert "xds:v2" in seen
        drawn = await burst(200)
        assert set(drawn) == {"xds:v2"}


async def test_split_proportions_follow_the_weights(server: XdsServer,
                                                    mesh_fleet: Callable[..., Fleet]) -> None:
    """A 80/20 split draws each cluster within binomial bounds (1000 requests)."""
    v1, v2 = mesh_fleet(), mesh_fleet()
    publish(server, route_config(split({"v1": 80, "v2": 20})), [cluster("v1"), cluster("v2")],
            [eds("v1", v1), eds("v2", v2)])
    async with meshlib.AsyncMeshClient(services={"users": URL}) as client:
        drawn = []
        for _ in range(10):
            responses = await asyncio.gather(*(client.get("http://users/") for _ in range(100)))
            drawn.extend(which(r) for r in responses)
    share = drawn.count("xds:v2") / len(drawn)
    assert 0.2 - 0.05 < share < 0.2 + 0.05  # about 4 standard deviations


def test_route_timeout_and_retry_policy_come_from_the_route_action(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """RouteAction.timeout is the request's deadline; retry_policy's retriable status
    codes and num_retries are its retries (500 is not retried by meshlib's default)."""
    failing, slow = mesh_fleet(status=500, error_rate=1.0), mesh_fleet(latency=2.0)
    publish(server, route_config(
        to("failing", "/retry", retry_policy={"retry_on": "retriable-status-codes",
                                              "retriable_status_codes": [500],
                                              "num_retries": 3}),
        to("slow", "/slow", timeout="0.3s"),
        to("failing", "/")),
        [cluster("failing", outlier_detection={"consecutive_5xx": 1000}), cluster("slow")],
        [eds("failing", failing), eds("slow", slow)])
    with meshlib.testing.set_testing(), meshlib.MeshClient(services={"users": URL}) as client:
        plain = client.get("http://users/plain")
        retried = client.get("http://users/retry")
        assert (plain.status_code, plain.extensions["meshlib"]["attempts"]) == (500, 1)
        assert (retried.status_code, retried.extensions["meshlib"]["attempts"]) == (500, 4)
        with pytest.raises(meshlib.DeadlineExceeded, match=r"timeout 0\.3 s"):
            client.get("http://users/slow")


def test_a_nack_keeps_the_last_good_config(server: XdsServer,
                                            mesh_fleet: Callable[..., Fleet]) -> None:
    """A cluster meshlib cannot balance (RING_HASH) is NACKed: traffic stays on the last
    good configuration, and snapshot() shows the NACK and the versions held."""
    v1, v2 = mesh_fleet(), mesh_fleet()
    publish(server, route_config(to("v1")), [cluster("v1")], [eds("v1", v1)])
    with meshlib.MeshClient(services={"users": URL}) as client:
        assert which(client.get("http://users/")) == "xds:v1"
        server.set(routes=[route_config(to("v2"))],
                   clusters=[cluster("v1"), cluster("v2", lb_policy="RING_HASH")],
                   endpoints=[eds("v1", v1), eds("v2", v2)])
        server.wait_for("nack", type="cds")
        for _ in range(20):
            assert which(client.get("http://users/")) == "xds:v1"
        wait_until(lambda: client.snapshot()["services"]["users"]["xds"]["last_nack"],
                   timeout=10, what="the NACK in snapshot()")
        state = client.snapshot()["services"]["users"]["xds"]["last_nack"]
        assert "RING_HASH" in state["error"] or "ring" in state["error"].lower()
        xds = client.snapshot()["services"]["users"]["xds"]
        assert xds["connected"] and xds["types"]["lds"]["version"] == "1"


def test_control_plane_gone_traffic_continues_and_reconnect_resumes(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """The control plane stops: requests keep following the last good configuration;
    it comes back on the same port: the client reconnects and takes the new routes."""
    v1, v2 = mesh_fleet(), mesh_fleet()
    publish(server, route_config(to("v1")), [cluster("v1"), cluster("v2")],
            [eds("v1", v1), eds("v2", v2)])
    with meshlib.MeshClient(services={"users": URL}) as client:
        assert which(client.get("http://users/")) == "xds:v1"
        server.stop()
        wait_until(lambda: not client.snapshot()["services"]["users"]["xds"]["connected"],
                   timeout=10, what="the stream to end")
        for _ in range(20):
            assert which(client.get("http://users/")) == "xds:v1"
        server.set(routes=[route_config(to("v2"))])
        server.start()
        wait_until(lambda: which(client.get("http://users/")) == "xds:v2", timeout=15,
                   what="the new routes after reconnecting")
        assert client.snapshot()["services"]["users"]["xds"]["streams"] >= 2


def test_requests_wait_for_the_first_configuration(server: XdsServer,
                                                   mesh_fleet: Callable[..., Fleet]) -> None:
    """Before the first configuration a request waits (within its deadline) and is then
    routed; with none in time it raises NoEndpointsError naming the control plane."""
    v1 = mesh_fleet()
    with meshlib.MeshClient(services={"users": URL}) as client:
        with pytest.raises(meshlib.NoEndpointsError, match=r"xds:///users"), \
                meshlib.deadline(0.3):
            client.get("http://users/")
        timer = threading.Timer(0.3, lambda: publish(
            server, route_config(to("v1")), [cluster("v1")], [eds("v1", v1)]))
        timer.start()
        try:
            with meshlib.deadline(10):
                response = client.get("http://users/")
        finally:
            timer.cancel()
            timer.join()
        assert (response.status_code, which(response)) == (200, "xds:v1")


def test_no_matching_virtual_host_or_route_raises_no_route_error(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """A configuration whose virtual hosts do not cover the target, or whose routes do
    not match, raises NoRouteError and sends nothing."""
    v1 = mesh_fleet()
    publish(server, route_config(to("v1", "/api")), [cluster("v1")], [eds("v1", v1)])
    with meshlib.MeshClient(services={"users": URL}) as client:
        assert which(client.get("http://users/api/x")) == "xds:v1"
        with pytest.raises(meshlib.NoRouteError, match="nothing was sent"):
            client.get("http://users/other")
        server.set(routes=[route_config(to("v1"), domains=("orders.shop",))])
        wait_until(lambda: not client.snapshot()["routes"]["users"], timeout=10,
                   what="no virtual host")
        with pytest.raises(meshlib.NoRouteError):
            client.get("http://users/api/x")
    assert sum(len(h) for h in v1.hits()) == 1


def test_a_route_that_does_not_forward_does_not_fall_through(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """A redirect route matching the request raises NoRouteError; it never falls through
    to a later route."""
    v1 = mesh_fleet()
    publish(server, route_config(
        {"match": {"prefix": "/old"}, "redirect": {"path_redirect": "/new"}},
        to("v1")), [cluster("v1")], [eds("v1", v1)])
    with meshlib.MeshClient(services={"users": URL}) as client:
        with pytest.raises(meshlib.NoRouteError, match="forwards to no cluster"):
            client.get("http://users/old")
        assert which(client.get("http://users/new")) == "xds:v1"


async def test_max_requests_caps_the_clusters_requests_in_flight(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """circuit_breakers.max_requests: a request over the cap fails fast with MeshError
    and nothing is sent; the slot is free again once a request ends."""
    slow = mesh_fleet(latency=0.5)
    publish(server, route_config(to("slow")), [cluster("slow", circuit_breakers={
        "thresholds": [{"max_requests": 1}]})], [eds("slow", slow)])
    async with meshlib.AsyncMeshClient(services={"users": URL}) as client:
        first = asyncio.create_task(client.get("http://users/"))
        await asyncio.sleep(0.2)
        with pytest.raises(meshlib.MeshError, match="max_requests"):
            await client.get("http://users/")
        assert (await first).status_code == 200
        assert (await client.get("http://users/")).status_code == 200
    assert sum(len(h) for h in slow.hits()) == 2


def test_eds_health_draining_and_unhealthy_endpoints_are_never_used(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """Only HEALTHY and UNKNOWN endpoints take requests; DRAINING and UNHEALTHY never."""
    good, draining, sick = mesh_fleet(), mesh_fleet(), mesh_fleet()
    endpoints = EndpointsSpec("v1", (*eds("v1", good).endpoints,
                                     *eds("v1", draining, "DRAINING").endpoints,
                                     *eds("v1", sick, "UNHEALTHY").endpoints))
    publish(server, route_config(to("v1")), [cluster("v1")], [endpoints])
    with meshlib.MeshClient(services={"users": URL}) as client:
        for _ in range(30):
            assert client.get("http://users/").extensions["meshlib"]["endpoint"] == \
                good.endpoints[0]
        addresses = [e["endpoint"] for e in client.snapshot()["services"]["xds:v1"]["endpoints"]]
        assert addresses == good.endpoints
    assert not any(draining.hits()[0]) and not any(sick.hits()[0])


def test_a_removed_cluster_is_retired_and_a_kept_one_keeps_its_state(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """When the routes stop naming a cluster its runtime leaves the mesh; a cluster that
    stays unchanged keeps its runtime (endpoints, counters)."""
    v1, v2 = mesh_fleet(), mesh_fleet()
    publish(server, route_config(to("v2", "/two"), to("v1")), [cluster("v1"), cluster("v2")],
            [eds("v1", v1), eds("v2", v2)])
    with meshlib.MeshClient(services={"users": URL}) as client:
        client.get("http://users/")
        client.get("http://users/two")
        mesh = client.mesh_transport.mesh
        kept = mesh.runtimes["xds:v1"]
        server.set(routes=[route_config(to("v1"))])
        wait_until(lambda: "xds:v2" not in mesh.runtimes, timeout=10, what="v2 retired")
        assert mesh.runtimes["xds:v1"] is kept
        assert set(client.snapshot()["services"]) == {"xds:v1", "users"}
        assert which(client.get("http://users/two")) == "xds:v1"
        server.set(clusters=[cluster("v1", lb_policy="RANDOM")])  # new settings: rebuilt
        wait_until(lambda: mesh.runtimes["xds:v1"] is not kept, timeout=10,
                   what="v1 rebuilt")
        assert mesh.runtimes["xds:v1"].policy.balancer == "random"
        assert which(client.get("http://users/")) == "xds:v1"


def test_a_configuration_meshlib_cannot_carry_out_keeps_the_last_good_one(
        server: XdsServer, mesh_fleet: Callable[..., Fleet],
        caplog: pytest.LogCaptureFixture) -> None:
    """A route matching on :authority (valid xDS, not carried out by meshlib) leaves the
    last good configuration in use, and the log says why."""
    v1, v2 = mesh_fleet(), mesh_fleet()
    publish(server, route_config(to("v1")), [cluster("v1"), cluster("v2")],
            [eds("v1", v1), eds("v2", v2)])
    with meshlib.MeshClient(services={"users": URL}) as client:
        assert which(client.get("http://users/")) == "xds:v1"
        server.set(routes=[route_config({"match": {"prefix": "/", "headers": [
            {"name": ":authority", "string_match": {"exact": "users"}}]},
            "route": {"cluster": "v2"}})])
        server.wait_for("ack", type="rds", version=server.versions()["rds"])
        wait_until(lambda: any(":authority" in r.getMessage() for r in caplog.records),
                   timeout=10, what="the refusal logged")
        for _ in range(10):
            assert which(client.get("http://users/")) == "xds:v1"


def test_meshlib_services_may_name_an_xds_service(
        server: XdsServer, mesh_fleet: Callable[..., Fleet],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MESHLIB_SERVICES=users=xds:///LISTENER works like services= (sync client)."""
    v1 = mesh_fleet()
    publish(server, route_config(to("v1")), [cluster("v1")], [eds("v1", v1)])
    monkeypatch.setenv("MESHLIB_SERVICES", f"users={URL}")
    with meshlib.MeshClient() as client:
        assert which(client.get("http://users/")) == "xds:v1"


@pytest.mark.parametrize(("url", "bootstrap", "message"), [
    ("xds://", True, "expected xds:///TARGET"),
    (URL, False, "bootstrap"),
])
def test_a_bad_xds_service_raises_config_error_when_built(
        url: str, bootstrap: bool, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed xds:// URL, or no bootstrap, is a ConfigError when the client is built."""
    for name in ("GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG", "MESHLIB_XDS_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    if bootstrap:
        monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", '{"xds_servers": [{"server_uri": '
                           '"127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}], '
                           '"node": {"id": "n"}}')
    with pytest.raises(meshlib.ConfigError, match=message):
        meshlib.MeshClient(services={"users": url})
    monkeypatch.setenv("MESHLIB_SERVICES", f"users={url}")
    if url == "xds://":
        with pytest.raises(meshlib.ConfigError, match="MESHLIB_SERVICES"):
            meshlib.MeshClient(services={})


def test_resolve_prints_the_routes_clusters_and_endpoints(
        server: XdsServer, mesh_fleet: Callable[..., Fleet],
        capsys: pytest.CaptureFixture[str]) -> None:
    """meshlib resolve xds:///... prints what the control plane gives, as meshlib reads it."""
    from meshlib.cli import main

    v1, v2 = mesh_fleet(), mesh_fleet()
    publish(server, route_config(split({"v1": 90, "v2": 10})),
            [cluster("v1", lb_policy="LEAST_REQUEST"), cluster("v2")],
            [eds("v1", v1), eds("v2", v2)])
    assert main(["resolve", URL]) == 0
    out = capsys.readouterr().out
    assert "xds:v1 (90), xds:v2 (10)" in out
    assert "xds:v1: balancer=least-request" in out
    assert f"{v2.endpoints[0]}  weight=1 priority=0" in out
    assert main(["resolve", "--json", URL]) == 0
    assert '"xds:v2"' in capsys.readouterr().out


def test_priorities_fail_over_as_grpc_does(server: XdsServer,
                                           mesh_fleet: Callable[..., Fleet]) -> None:
    """Priority 0 takes every request while it is healthy; when its endpoint refuses
    connections, requests fail over to priority 1 (nothing lost), as in gRPC."""
    first, second = mesh_fleet(), mesh_fleet()
    endpoints = EndpointsSpec("v1", (
        EndpointSpec("127.0.0.1", int(first.endpoints[0].rpartition(":")[2]),
                     health="HEALTHY", zone="a", priority=0),
        EndpointSpec("127.0.0.1", int(second.endpoints[0].rpartition(":")[2]),
                     health="HEALTHY", zone="b", priority=1)))
    publish(server, route_config(to("v1")), [cluster("v1")], [endpoints])
    with meshlib.MeshClient(services={"users": URL}) as client:
        landed = {client.get("http://users/").extensions["meshlib"]["endpoint"]
                  for _ in range(20)}
        assert landed == {first.endpoints[0]}
        first.set(refuse=True)
        for _ in range(20):
            response = client.get("http://users/")
            assert response.status_code == 200
            assert response.extensions["meshlib"]["endpoint"] == second.endpoints[0]


def test_an_async_client_waits_and_follows_again_on_a_new_event_loop(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """AsyncMeshClient: a request waits for the first configuration; used again from a
    new event loop, the client follows the control plane there (new routes apply)."""
    v1, v2 = mesh_fleet(), mesh_fleet()
    client = meshlib.AsyncMeshClient(services={"users": URL})

    async def first() -> str:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, lambda: threading.Thread(target=publish, args=(
            server, route_config(to("v1")), [cluster("v1"), cluster("v2")],
            [eds("v1", v1), eds("v2", v2)])).start())
        with meshlib.deadline(10):
            return which(await client.get("http://users/"))

    async def second() -> str:
        await asyncio.to_thread(server.set, routes=[route_config(to("v2"))])
        for _ in range(500):  # bounded: about 5 s
            landed = which(await client.get("http://users/"))
            if landed == "xds:v2":
                break
            await asyncio.sleep(0.01)
        await client.aclose()
        return landed

    assert asyncio.run(first()) == "xds:v1"
    assert asyncio.run(second()) == "xds:v2"


def test_routes_given_in_code_win_over_the_control_planes(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """routes= for the xds service's host take precedence over the control plane's."""
    v1, other = mesh_fleet(), mesh_fleet()
    publish(server, route_config(to("v1")), [cluster("v1")], [eds("v1", v1)])
    with meshlib.MeshClient(services={"users": URL, "other": other.url},
                            routes={"users": [meshlib.Route(to="other")]}) as client:
        for _ in range(5):
            assert which(client.get("http://users/")) == "other"
        wait_until(lambda: "xds:v1" in client.snapshot()["services"], timeout=10,
                   what="the control plane's clusters")
        assert which(client.get("http://users/")) == "other"


def test_eds_changes_move_a_kept_clusters_endpoints(
        server: XdsServer, mesh_fleet: Callable[..., Fleet]) -> None:
    """An EDS update adds and removes endpoints of a running cluster: its runtime stays,
    the new endpoint takes requests, the removed one gets none."""
    old, new = mesh_fleet(), mesh_fleet()
    publish(server, route_config(to("v1")), [cluster("v1")], [eds("v1", old)])
    with meshlib.MeshClient(services={"users": URL}) as client:
        assert client.get("http://users/").extensions["meshlib"]["endpoint"] == old.endpoints[0]
        runtime = client.mesh_transport.mesh.runtimes["xds:v1"]
        server.set(endpoints=[eds("v1", new)])
        wait_until(lambda: [e["endpoint"] for e in client.snapshot()["services"]["xds:v1"][
            "endpoints"]] == new.endpoints, timeout=10, what="the new endpoint set")
        old.reset_hits()
        for _ in range(10):
            assert client.get("http://users/").extensions["meshlib"]["endpoint"] == \
                new.endpoints[0]
        assert client.mesh_transport.mesh.runtimes["xds:v1"] is runtime
        assert not any(old.hits())
