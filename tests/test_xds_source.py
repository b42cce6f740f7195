"""The mapping of an xDS configuration onto meshlib's routes and clusters (no I/O)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytest.importorskip("google.protobuf")

from meshlib import ConfigError
from meshlib._xds.resources import (
    ClusterSpec,
    EndpointSpec,
    EndpointsSpec,
    HeaderMatch,
    OutlierSpec,
    PathMatch,
    QueryMatch,
    RetrySpec,
    RouteSpec,
    StringMatch,
    VirtualHostSpec,
    XdsConfig,
)
from meshlib._xds_source import NOT_FORWARDED, route_update

TARGET = "users.shop.svc.cluster.local:80"
URL = f"xds:///{TARGET}"


def config(*routes: RouteSpec, domains: tuple[str, ...] = ("*",),
           clusters: tuple[ClusterSpec, ...] = (),
           endpoints: tuple[EndpointsSpec, ...] = ()) -> XdsConfig:
    names = {name for route in routes for name, _ in route.clusters}
    given = {c.name: c for c in clusters}
    all_clusters = {n: given.get(n, ClusterSpec(n)) for n in names}
    by_name = {e.cluster_name: e for e in endpoints}
    return XdsConfig(TARGET, "r", (VirtualHostSpec("vh", domains, routes),), all_clusters,
                     {n: by_name.get(n, EndpointsSpec(n)) for n in names},
                     {"lds": "1", "rds": "1", "cds": "1", "eds": "1"})


def route(name: str = "", path: PathMatch | None = None, **fields: Any) -> RouteSpec:
    fields.setdefault("clusters", (("v1", 1),))
    return RouteSpec(name, path or PathMatch("prefix", ""), **fields)


def request(path: str = "/", **headers: str) -> httpx.Request:
    return httpx.Request("GET", f"http://users{path}", headers=headers)


def test_the_virtual_host_is_chosen_by_the_target_like_grpc() -> None:
    """The virtual host whose domains match the listener's target wins; none: no rules."""
    exact = config(route(), domains=(TARGET,))
    assert len(route_update(exact, URL, TARGET).rules) == 1
    other = config(route(), domains=("orders.shop.svc.cluster.local:80",))
    update = route_update(other, URL, TARGET)
    assert update.rules == () and update.clusters == {}
    assert update.status["virtual_host"] is None


def test_path_kinds_and_case_sensitivity() -> None:
    """prefix (plain), exact, safe_regex (whole path) and path_separated_prefix, with
    case_sensitive=False folding case."""
    rules = route_update(config(
        route("p", PathMatch("prefix", "/API", case_sensitive=False)),
        route("e", PathMatch("exact", "/x")),
        route("r", PathMatch("regex", "/v[0-9]+/.*")),
        route("s", PathMatch("separated_prefix", "/seg"))), URL, TARGET).rules
    p, e, r, s = rules
    assert p.path is not None and p.path.matches("/apix") and not p.path.matches("/ap")
    assert e.path is not None and e.path.matches("/x") and not e.path.matches("/x/")
    assert r.path is not None and r.path.matches("/v2/a") and not r.path.matches("/v2")
    assert s.path is not None and s.path.matches("/seg/a") and not s.path.matches("/segx")


def test_header_and_query_matchers_keep_envoys_semantics() -> None:
    """StringMatcher kinds, present/absent, inverted matches (a missing header matches no
    inverted string match, as in Envoy), ranges; an exact :method becomes the method."""
    rule, = route_update(config(route(headers=(
        HeaderMatch("x-a", match=StringMatch("prefix", "ab", ignore_case=True)),
        HeaderMatch("x-b", match=StringMatch("exact", "no"), invert=True),
        HeaderMatch("x-c", range=(10, 20)),
        HeaderMatch("x-d", present=False),
        HeaderMatch(":method", match=StringMatch("exact", "GET"))),
        query=(QueryMatch("debug"),))), URL, TARGET).rules
    ok = {"x-a": "ABc", "x-b": "yes", "x-c": "15"}
    assert rule.method == "GET"

    def holds(path: str = "/?debug=1", **headers: str) -> bool:
        req = request(path, **headers)
        raw = req.url.raw_path.decode()
        return rule.matches(req.method, raw.partition("?")[0], req.headers, req.url.params)

    assert holds(**ok)
    assert not holds("/", **ok)  # query parameter missing
    assert not holds(**{**ok, "x-b": "no"})
    assert not holds(**{k: v for k, v in ok.items() if k != "x-b"})  # absent: no match
    assert not holds(**{**ok, "x-c": "20"})
    assert not holds(**{**ok, "x-d": "1"})


def test_a_pseudo_header_other_than_method_is_refused() -> None:
    """A matcher on :authority or :path cannot be carried out: ConfigError naming it."""
    with pytest.raises(ConfigError, match=":authority"):
        route_update(config(route(headers=(
            HeaderMatch(":authority", match=StringMatch("exact", "x")),))), URL, TARGET)


def test_weighted_clusters_and_non_forwarding_routes() -> None:
    """weighted_clusters become weighted backends keyed xds:NAME; a redirect sends to a
    cluster that does not exist (it must not fall through)."""
    split, redirect = route_update(config(
        route("split", clusters=(("v1", 90), ("v2", 10))),
        route("old", kind="redirect", clusters=())), URL, TARGET).rules
    assert [(b.cluster, b.weight) for b in split.backends] == [("xds:v1", 90), ("xds:v2", 10)]
    assert redirect.clusters() == (NOT_FORWARDED,)


def test_route_timeout_and_retry_policy_become_the_route_policy() -> None:
    """timeout -> Policy.timeout; retry_policy -> retries, attempt_timeout, backoff and
    the statuses its conditions name (5xx: all of them; gateway-error: 502-504)."""
    rule, gateway = route_update(config(
        route("a", timeout=1.5, retry=RetrySpec(("5xx", "reset"), num_retries=3,
                                                per_try_timeout=0.2, backoff_base=0.01)),
        route("b", retry=RetrySpec(("gateway-error", "retriable-status-codes"),
                                   status_codes=(409,)))), URL, TARGET).rules
    assert rule.policy is not None and gateway.policy is not None
    assert rule.policy.timeout == 1.5 and rule.policy.retries == 3
    assert rule.policy.attempt_timeout == 0.2
    assert (rule.policy.backoff.base, rule.policy.backoff.max) == (0.01, 0.1)
    assert rule.policy.retry_on == tuple(range(500, 600))
    assert gateway.policy.retry_on == (409, 502, 503, 504) and gateway.policy.retries == 1
    assert gateway.policy.given == {"retries", "retry_on"}


def test_a_route_without_timeout_or_retries_leaves_the_policy_to_the_service() -> None:
    """No RouteAction timeout and no retry policy: the route sets no policy field."""
    rule, = route_update(config(route()), URL, TARGET).rules
    assert rule.policy is None


def test_cluster_settings_become_the_cluster_policy() -> None:
    """lb_policy picks the balancer; outlier_detection gives the breaker's failures,
    ejection times and max ejection percent; max_requests is the in-flight cap."""
    outlier = OutlierSpec(consecutive_5xx=3, base_ejection_time=2.0, max_ejection_time=20.0,
                          max_ejection_percent=40)
    update = route_update(config(route(clusters=(("v1", 1), ("v2", 1))), clusters=(
        ClusterSpec("v1", lb_policy="least-request", outlier=outlier, max_requests=7),
        ClusterSpec("v2", lb_policy="random"))), URL, TARGET)
    v1, v2 = update.clusters["xds:v1"], update.clusters["xds:v2"]
    assert v1.policy is not None and v2.policy is not None
    assert v1.policy.balancer == "least-request" and v2.policy.balancer == "random"
    breaker = v1.policy.breaker
    assert (breaker.failures, breaker.reset_timeout, breaker.max_reset_timeout,
            breaker.max_ejection_percent) == (3, 2.0, 20.0, 40.0)
    assert v2.policy.given == {"balancer"}  # no outlier detection: the breaker is not set
    assert getattr(v1, "max_requests", None) == 7 and getattr(v2, "max_requests", 0) is None


def test_endpoints_health_weights_zones_and_priorities() -> None:
    """HEALTHY and UNKNOWN endpoints are used, DRAINING/UNHEALTHY never; a locality's
    weight is shared among its endpoints by their weights; zone and priority are kept."""
    endpoints = EndpointsSpec("v1", (
        EndpointSpec("10.0.0.1", 80, weight=1, health="HEALTHY", zone="a", locality_weight=60),
        EndpointSpec("10.0.0.2", 80, weight=3, health="UNKNOWN", zone="a", locality_weight=60),
        EndpointSpec("10.0.0.3", 80, health="DRAINING", zone="a", locality_weight=60),
        EndpointSpec("10.0.0.4", 80, health="UNHEALTHY", zone="b"),
        EndpointSpec("10.0.1.1", 80, weight=5, zone="b", priority=1)))
    update = route_update(config(route(), endpoints=(endpoints,)), URL, TARGET)
    found = update.clusters["xds:v1"].discovery.initial()
    assert found is not None
    assert [(e.address, e.weight, e.zone, e.priority) for e in found] == [
        ("10.0.0.1:80", 15.0, "a", 0), ("10.0.0.2:80", 45.0, "a", 0),
        ("10.0.1.1:80", 5.0, "b", 1)]
