"""Differential: one configuration from XdsServer, served to a real Envoy 1.40 and to a
MeshClient; a corpus of requests lands on the same backend through both, and a weighted
split draws alike (within binomial bounds)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("grpc")

import meshlib
from meshlib._xds.resources import ListenerSpec
from meshlib.testing import XdsServer
from meshlib.testing._backend import Backend
from servers import free_port
from test_xds_envoy import Envoy, envoy_binary, socket_listener

pytestmark = pytest.mark.server

LISTENER = "users.shop.svc.cluster.local:80"


def routes() -> dict[str, Any]:
    def to(cluster: str, match: dict[str, Any]) -> dict[str, Any]:
        return {"match": match, "route": {"cluster": cluster}}

    return {"name": "users-routes", "virtual_hosts": [{"name": "users", "domains": ["*"],
                                                       "routes": [
        to("c0", {"path": "/exact"}),
        to("c1", {"prefix": "/CaSe", "case_sensitive": False}),
        to("c2", {"safe_regex": {"regex": "/items/[0-9]+"}}),
        to("c3", {"prefix": "/", "headers": [{"name": "x-env",
                                              "string_match": {"exact": "canary"}}]}),
        to("c4", {"prefix": "/", "headers": [{"name": "x-tier",
                                              "string_match": {"prefix": "gold"}}]}),
        to("c5", {"prefix": "/q", "query_parameters": [{"name": "debug",
                                                        "string_match": {"exact": "1"}}]}),
        to("c5", {"path_separated_prefix": "/seg"}),
        to("c3", {"prefix": "/", "headers": [{"name": "x-absent", "present_match": False,
                                              "invert_match": True}]}),
        {"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "c0", "weight": 70}, {"name": "c1", "weight": 30}]}}},
        to("c6", {"prefix": "/"}),
    ]}]}


#: (path, headers) requests whose backend both must agree on
CORPUS: list[tuple[str, dict[str, str]]] = [
    ("/exact", {}), ("/exact/", {}), ("/exactly", {}),
    ("/case/x", {}), ("/CASE", {}), ("/cas", {}),
    ("/items/42", {}), ("/items/x", {}), ("/items/42/more", {}),
    ("/", {}), ("/x", {"x-env": "canary"}), ("/x", {"x-env": "Canary"}),
    ("/x", {"x-tier": "gold-plus"}), ("/x", {"x-tier": "silver"}),
    ("/q?debug=1", {}), ("/q?debug=2", {}), ("/qq?debug=1", {}), ("/x?debug=1", {}),
    ("/seg", {}), ("/seg/a", {}), ("/segx", {}),
    ("/y", {"x-absent": "here"}),
]


def clusters() -> list[dict[str, Any]]:
    return [{"name": f"c{i}", "type": "EDS", "connect_timeout": "1s",
             "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}
            for i in range(7)]


def endpoints(backend: Backend) -> list[dict[str, Any]]:
    out = []
    for i, address in enumerate(backend.addresses):
        host, port = address.rsplit(":", 1)
        out.append({"cluster_name": f"c{i}", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": host,
                                                        "port_value": int(port)}}},
            "health_status": "HEALTHY"}]}]})
    return out


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[XdsServer, Envoy, Backend, int]]:
    backend = Backend(7).start()
    server = XdsServer().start()
    envoy = Envoy(envoy_binary(), server.port)
    try:
        port = free_port()
        server.set(listeners=[socket_listener(port), ListenerSpec(LISTENER, "users-routes")],
                   routes=[routes()], clusters=clusters(), endpoints=endpoints(backend))
        envoy.start()
        monkeypatch.setenv("MESHLIB_XDS_BOOTSTRAP", server.bootstrap_for("meshlib-diff"))
        yield server, envoy, backend, port
    finally:
        envoy.kill_process()
        server.close()
        backend.stop()


def via_envoy(client: httpx.Client, port: int, path: str, headers: dict[str, str]) -> str:
    deadline = time.monotonic() + 20
    while True:  # the listener and its routes may take a moment after the ACK
        try:
            response = client.get(f"http://127.0.0.1:{port}{path}", headers=headers)
        except httpx.ConnectError:
            response = None
        if response is not None and "x-backend" in response.headers:
            return response.headers["x-backend"]
        if time.monotonic() > deadline:
            raise AssertionError(f"Envoy did not route {path}: {response}")
        time.sleep(0.05)


def test_envoy_and_meshlib_route_the_same_corpus_alike(
        setup: tuple[XdsServer, Envoy, Backend, int]) -> None:
    """Exact, case-insensitive prefix, regex, header (exact, prefix, inverted present),
    query and separated-prefix routes: every request of the corpus reaches the same
    backend through Envoy and through meshlib."""
    server, _, _, port = setup
    with httpx.Client(trust_env=False, timeout=5) as plain, \
            meshlib.MeshClient(services={"users": f"xds:///{LISTENER}"}) as mesh:
        via_envoy(plain, port, "/", {})  # Envoy is serving
        landed = {}
        for path, headers in CORPUS:
            envoy_backend = via_envoy(plain, port, path, headers)
            mesh_backend = mesh.get(f"http://users{path}", headers=headers).headers["x-backend"]
            landed[(path, tuple(headers.items()))] = (envoy_backend, mesh_backend)
        differ = {k: v for k, v in landed.items() if v[0] != v[1]}
        assert differ == {}
        assert len({e for e, _ in landed.values()}) == 7  # the corpus reaches every cluster
        assert server.nacks() == []


def test_a_weighted_split_draws_alike_through_envoy_and_meshlib(
        setup: tuple[XdsServer, Envoy, Backend, int]) -> None:
    """A 70/30 split: both send about 30% to the second cluster (400 requests each,
    within about 4 standard deviations)."""
    _, _, backend, port = setup
    second = backend.addresses[1]
    with httpx.Client(trust_env=False, timeout=5) as plain, \
            meshlib.MeshClient(services={"users": f"xds:///{LISTENER}"}) as mesh:
        via_envoy(plain, port, "/", {})
        envoy_share = sum(via_envoy(plain, port, "/split", {}) == second
                          for _ in range(400)) / 400
        mesh_share = sum(mesh.get("http://users/split").headers["x-backend"] == second
                         for _ in range(400)) / 400
    for share in (envoy_share, mesh_share):
        assert 0.30 - 0.09 < share < 0.30 + 0.09
