"""Gateway API HTTPRoutes attached to k8s:// Services, against the loopback Kubernetes API
stand-in (tests/k8s_server.py) and real loopback backends."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from k8s_server import FakeKubeAPI, endpoint, endpoint_slice, http_route, service_object
from meshlib._discovery import _k8s
from meshlib._discovery._k8s import K8sDiscovery
from meshlib._k8s_routes import (
    HttpRouteSource,
    RouteError,
    compile_httproutes,
    parse_duration,
    parse_httproute,
)
from meshlib.testing import Fleet
from servers import wait_until


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Short backoffs; no service account of this machine is ever read."""
    monkeypatch.setattr(K8sDiscovery, "BACKOFF_INITIAL", 0.05)
    monkeypatch.setattr(K8sDiscovery, "BACKOFF_MAX", 0.2)
    monkeypatch.setattr(HttpRouteSource, "RETRY_MISSING", 0.2)
    monkeypatch.setattr(_k8s, "SERVICE_ACCOUNT_DIR", str(tmp_path / "serviceaccount"))
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as server:
        monkeypatch.setenv("MESHLIB_K8S_API", server.url)
        yield server


def port_of(fleet: Fleet) -> int:
    return int(fleet.endpoints[0].rpartition(":")[2])


def deploy(api: FakeKubeAPI, name: str, fleet: Fleet, service_port: int = 80) -> None:
    """A Service ``name`` (port ``service_port`` named http -> the fleet's port) and its
    EndpointSlice."""
    api.put(service_object(name, [("http", service_port, port_of(fleet))]))
    api.put(endpoint_slice(f"{name}-1", name, [endpoint("127.0.0.1")],
                           ports=[("http", port_of(fleet))]))


def service_of(response: httpx.Response) -> str:
    name: str = response.extensions["meshlib"]["service"]
    return name


def backend(name: str, weight: int = 1, port: int = 80) -> dict[str, Any]:
    return {"name": name, "port": port, "weight": weight}


def test_durations_follow_gep_2257() -> None:
    """Gateway API durations: h, m, s and ms parts; anything else is refused."""
    assert parse_duration("1m30s", "t") == 90.0
    assert parse_duration("500ms", "t") == 0.5
    for bad in ("1.5s", "10", "-1s", "1d"):
        with pytest.raises(RouteError):
            parse_duration(bad, "t")


def test_rules_are_ordered_by_gateway_api_precedence() -> None:
    """Exact paths before prefixes, longer prefixes first, then method, headers and
    query counts, then the older route."""
    older = parse_httproute(http_route("a", "users", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
         "backendRefs": [backend("a")]}], created="2026-01-01T00:00:00Z"))
    newer = parse_httproute(http_route("b", "users", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                      "headers": [{"name": "X-Canary", "value": "1"}]},
                     {"path": {"type": "Exact", "value": "/api/exact"}},
                     {"path": {"type": "PathPrefix", "value": "/api/longer"}}],
         "backendRefs": [backend("b")]}], created="2026-02-01T00:00:00Z"))
    other = parse_httproute(http_route("c", "orders", [{"backendRefs": [backend("c")]}]))
    rules, backends = compile_httproutes([older, newer, other], "users", "default")
    described = [(r.key, r.path.kind if r.path else None, r.path.value if r.path else None,
                  len(r.headers)) for r in rules]
    assert described == [("b/0", "exact", "/api/exact", 0),
                         ("b/0", "segment_prefix", "/api/longer", 0),
                         ("b/0", "segment_prefix", "/api", 1),
                         ("a/0", "segment_prefix", "/api", 0)]
    assert set(backends) == {"k8s:a.default:80", "k8s:b.default:80"}


def test_timeouts_and_linkerd_annotations_become_the_route_policy() -> None:
    """timeouts.request / backendRequest, and retry.linkerd.io / timeout.linkerd.io
    annotations (the rule's timeouts win over the annotations)."""
    route = parse_httproute(http_route("a", "users", [
        {"backendRefs": [backend("a")], "timeouts": {"request": "2s", "backendRequest": "500ms"}},
        {"backendRefs": [backend("a")]}], annotations={
            "retry.linkerd.io/http": "5xx,429", "retry.linkerd.io/limit": "3",
            "retry.linkerd.io/timeout": "300ms", "timeout.linkerd.io/request": "10s"}))
    first, second = compile_httproutes([route], "users", "default")[0]
    assert first.policy is not None and second.policy is not None
    assert (first.policy.timeout, first.policy.attempt_timeout) == (2.0, 0.5)
    assert (second.policy.timeout, second.policy.attempt_timeout) == (10.0, 0.3)
    assert second.policy.retries == 3
    assert second.policy.retry_on == (429, *range(500, 600))


def test_an_httproute_splits_and_falls_back_to_the_service_when_deleted(
        api: FakeKubeAPI, mesh_fleet: Callable[..., Fleet]) -> None:
    """A 75/25 split between two backend Services (each through its own EndpointSlices,
    its port name read from the Service); deleting the route sends everything to the
    Service itself again."""
    users, v1, v2 = mesh_fleet(), mesh_fleet(), mesh_fleet()
    deploy(api, "users", users)
    deploy(api, "users-v1", v1)
    deploy(api, "users-v2", v2, service_port=8080)
    with meshlib.MeshClient(services={"users": "k8s://users.default:http"}) as client:
        assert service_of(client.get("http://users/")) == "users"
        api.put(http_route("split", "users", [{"backendRefs": [
            backend("users-v1", 75), backend("users-v2", 25, port=8080)]}]))
        wait_until(lambda: client.snapshot()["routes"].get("users"), timeout=10, what="the routes")
        seen = [service_of(client.get("http://users/")) for _ in range(400)]
        assert set(seen) == {"k8s:users-v1.default:80", "k8s:users-v2.default:8080"}
        share = seen.count("k8s:users-v2.default:8080") / len(seen)
        assert 0.25 - 0.09 < share < 0.25 + 0.09  # about 4 standard deviations
        snapshot = client.snapshot()["services"]
        assert snapshot["users"]["httproutes"]["attached"] == ["default/split"]
        assert snapshot["k8s:users-v2.default:8080"]["discovery"] == \
            "k8s://users-v2.default:http"
        api.delete("split", kind="HTTPRoute")
        wait_until(lambda: not client.snapshot()["routes"].get("users"), timeout=10,
                   what="no routes")
        assert {service_of(client.get("http://users/")) for _ in range(20)} == {"users"}
        wait_until(lambda: "k8s:users-v1.default:80" not in client.snapshot()["services"],
                   timeout=10, what="the backend retired")


def test_matches_route_by_header_and_unmatched_requests_go_to_the_service(
        api: FakeKubeAPI, mesh_fleet: Callable[..., Fleet]) -> None:
    """A header match sends to its backend; requests no rule matches go to the Service."""
    users, canary = mesh_fleet(), mesh_fleet()
    deploy(api, "users", users)
    deploy(api, "users-canary", canary)
    api.put(http_route("canary", "users", [{
        "matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
        "backendRefs": [backend("users-canary")]}]))
    with meshlib.MeshClient(services={"users": "k8s://users.default:http"}) as client:
        wait_until(lambda: client.snapshot()["routes"].get("users"), timeout=10, what="the routes")
        hit = client.get("http://users/", headers={"X-Canary": "yes"})
        assert (service_of(hit), hit.extensions["meshlib"]["route"]) == (
            "k8s:users-canary.default:80", "canary/0")
        assert service_of(client.get("http://users/")) == "users"


def test_a_request_timeout_from_the_httproute_is_the_deadline(
        api: FakeKubeAPI, mesh_fleet: Callable[..., Fleet]) -> None:
    """timeouts.request bounds the logical request."""
    users, slow = mesh_fleet(), mesh_fleet(latency=2.0)
    deploy(api, "users", users)
    deploy(api, "users-slow", slow)
    api.put(http_route("slow", "users", [{"backendRefs": [backend("users-slow")],
                                          "timeouts": {"request": "300ms"}}]))
    with meshlib.MeshClient(services={"users": "k8s://users.default:http"}) as client:
        wait_until(lambda: client.snapshot()["routes"].get("users"), timeout=10, what="the routes")
        with pytest.raises(meshlib.DeadlineExceeded, match=r"timeout 0\.3 s"):
            client.get("http://users/")


@pytest.mark.parametrize("answer", [404, 403])
def test_no_crd_or_no_permission_means_no_routes_said_once(
        api: FakeKubeAPI, mesh_fleet: Callable[..., Fleet], answer: int,
        caplog: pytest.LogCaptureFixture) -> None:
    """HTTPRoutes answering 404 (no CRD) or 403 (RBAC): requests go to the Service, the
    log says so once however often it is tried again (a refusal at WARNING, a missing
    CRD, which is common, at INFO)."""
    users = mesh_fleet()
    deploy(api, "users", users)
    api.httproutes = answer
    caplog.set_level(logging.INFO, logger="meshlib.routes")
    with meshlib.MeshClient(services={"users": "k8s://users.default:http"}) as client:
        wait_until(lambda: api.list_count("httproutes") >= 3, timeout=10, what="tries again")
        assert service_of(client.get("http://users/")) == "users"
        error = client.snapshot()["services"]["users"]["httproutes"]["error"]
        assert f"HTTP {answer}" in error
    said = [r for r in caplog.records if "cannot read HTTPRoutes" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == (logging.WARNING if answer == 403 else logging.INFO)


def test_a_rule_with_a_redirect_filter_raises_no_route_error_and_does_not_fall_through(
        api: FakeKubeAPI, mesh_fleet: Callable[..., Fleet]) -> None:
    """A rule whose filters would redirect is kept in its place: requests it matches
    raise NoRouteError (nothing sent) instead of reaching the next rule or the Service."""
    users, v1 = mesh_fleet(), mesh_fleet()
    deploy(api, "users", users)
    deploy(api, "users-v1", v1)
    api.put(http_route("r", "users", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}],
         "backendRefs": [backend("users-v1")]},
        {"backendRefs": [backend("users-v1")]}]))
    with meshlib.MeshClient(services={"users": "k8s://users.default:http"}) as client:
        wait_until(lambda: client.snapshot()["routes"].get("users"), timeout=10,
                   what="the routes")
        with pytest.raises(meshlib.NoRouteError, match="nothing was sent"):
            client.get("http://users/old/x")
        assert service_of(client.get("http://users/new")) == "k8s:users-v1.default:80"
    assert sum(len(h) for h in users.hits()) == 0
