"""Decoding and validating xDS resources (meshlib._xds.resources), and the encoder back."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

pytest.importorskip("google.protobuf")

from meshlib._xds import messages
from meshlib._xds.encode import to_envoy
from meshlib._xds.resources import (
    MAX_REGEX_LENGTH,
    ClusterSpec,
    EndpointSpec,
    EndpointsSpec,
    HeaderMatch,
    ListenerSpec,
    OutlierSpec,
    PathMatch,
    QueryMatch,
    ResourceError,
    RetrySpec,
    RouteConfigSpec,
    RouteSpec,
    StringMatch,
    VirtualHostSpec,
    XdsConfig,
    compile_regex,
    decode_cluster,
    decode_endpoints,
    decode_listener,
    decode_route_configuration,
    select_virtual_host,
    usable_endpoints,
)

HCM = messages.HCM
ROUTER = messages.ROUTER


def cluster(**fields: Any) -> ClusterSpec:
    body = {"name": "users", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}
    body.update(fields)
    return decode_cluster(messages.from_dict(body, "envoy.config.cluster.v3.Cluster"))


def route_config(*routes: dict[str, Any], **vhost: Any) -> RouteConfigSpec:
    host = {"name": "vh", "domains": ["users"], "routes": list(routes)}
    host.update(vhost)
    return decode_route_configuration(messages.from_dict(
        {"name": "rc", "virtual_hosts": [host]}, "envoy.config.route.v3.RouteConfiguration"))


def one_route(**fields: Any) -> RouteSpec:
    body = {"match": {"prefix": "/"}, "route": {"cluster": "users"}}
    body.update(fields)
    return route_config(body).virtual_hosts[0].routes[0]


def listener(hcm: dict[str, Any], name: str = "users:80") -> ListenerSpec:
    return decode_listener(messages.from_dict(
        {"name": name, "api_listener": {"api_listener": {"@type": HCM, **hcm}}},
        "envoy.config.listener.v3.Listener"))


def assignment(body: dict[str, Any]) -> EndpointsSpec:
    return decode_endpoints(messages.from_dict(
        body, "envoy.config.endpoint.v3.ClusterLoadAssignment"))


def lb(address: str, port: int, **fields: Any) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": address,
                                                        "port_value": port}}}, **fields}


# -- listeners ------------------------------------------------------------------------------

RDS = {"rds": {"route_config_name": "rc", "config_source": {"ads": {}}},
       "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}]}


def test_listener_with_rds_over_ads() -> None:
    """The api_listener's HttpConnectionManager names its route configuration."""
    assert listener(RDS) == ListenerSpec("users:80", "rc")


def test_listener_max_stream_duration() -> None:
    """common_http_protocol_options.max_stream_duration is the default route timeout."""
    spec = listener({**RDS, "common_http_protocol_options": {"max_stream_duration": "2.5s"}})
    assert spec.max_stream_duration == 2.5


FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def with_filters(*filters: tuple[str, str, bool]) -> ListenerSpec:
    """A listener whose HTTP filters are ``(name, type URL, is_optional)``: type URLs
    outside meshlib's pool (as real filters are) are set on the message directly."""
    message = messages.from_dict(
        {"name": "users:80", "api_listener": {"api_listener": {"@type": HCM, "rds": RDS["rds"]}}},
        "envoy.config.listener.v3.Listener")
    hcm = messages.HttpConnectionManager.FromString(message.api_listener.api_listener.value)
    for name, type_url, optional in filters:
        entry = hcm.http_filters.add(name=name, is_optional=optional)
        entry.typed_config.type_url = type_url
    message.api_listener.api_listener.value = hcm.SerializeToString()
    return decode_listener(message)


@pytest.mark.parametrize(("hcm", "reason"), [
    ({"rds": {"route_config_name": "rc", "config_source": {"path": "/x"}},
      "http_filters": RDS["http_filters"]}, "rds.config_source is not ads or self"),
    ({"scoped_routes": {"name": "s"}, "http_filters": RDS["http_filters"]},
     "scoped_routes are not supported"),
    ({"rds": RDS["rds"], "http_filters": [RDS["http_filters"][0], RDS["http_filters"][0]]},
     "the router must be the last HTTP filter"),
    ({"http_filters": RDS["http_filters"]}, "neither rds nor route_config"),
    ({"rds": RDS["rds"]}, "http_filters is empty"),
])
def test_listener_refusals(hcm: dict[str, Any], reason: str) -> None:
    """What a client cannot honour in a listener is refused with the reason."""
    with pytest.raises(ResourceError) as info:
        listener(hcm)
    assert reason in str(info.value)


def test_http_filters_meshlib_cannot_honour_are_refused_unless_optional() -> None:
    """A filter other than the router is refused, unless marked is_optional; the
    router must end the chain; names are unique."""
    with pytest.raises(ResourceError, match=r"http_filters\[0\] 'fault' \(type.googleapis"):
        with_filters(("fault", FAULT, False), ("router", ROUTER, False))
    assert with_filters(("fault", FAULT, True), ("router", ROUTER, False)).route_config_name
    with pytest.raises(ResourceError, match="the last HTTP filter is not the router"):
        with_filters(("fault", FAULT, True))
    with pytest.raises(ResourceError, match="duplicate filter name"):
        with_filters(("x", FAULT, True), ("x", FAULT, True), ("router", ROUTER, False))


def test_a_listener_without_api_listener_is_refused() -> None:
    """A socket listener (Envoy's) is not one a client can use."""
    message = messages.from_dict({"name": "l", "address": {"socket_address": {
        "address": "127.0.0.1", "port_value": 80}}}, "envoy.config.listener.v3.Listener")
    with pytest.raises(ResourceError, match="no api_listener"):
        decode_listener(message)


# -- routes ---------------------------------------------------------------------------------


def test_route_matches_and_action_are_decoded() -> None:
    """Path, headers (lower-cased), query parameters, weights, timeout and retry."""
    spec = one_route(
        name="canary",
        match={"path_separated_prefix": "/api", "case_sensitive": False,
               "headers": [{"name": "X-Env", "string_match": {"exact": "Canary",
                                                             "ignore_case": True}},
                           {"name": ":method", "exact_match": "GET"},
                           {"name": "x-debug", "present_match": True, "invert_match": True},
                           {"name": "x-n", "range_match": {"start": "1", "end": "10"}}],
               "query_parameters": [{"name": "v", "string_match": {"prefix": "2"}},
                                    {"name": "flag", "present_match": True}]},
        route={"weighted_clusters": {"clusters": [{"name": "v1", "weight": 90},
                                                  {"name": "v2", "weight": 10},
                                                  {"name": "v3", "weight": 0}]},
               "timeout": "1.5s",
               "retry_policy": {"retry_on": "5xx, Reset,retriable-status-codes",
                                "num_retries": 3, "per_try_timeout": "0.25s",
                                "retriable_status_codes": [503, 409],
                                "retry_back_off": {"base_interval": "0.01s",
                                                   "max_interval": "0.1s"}}})
    assert spec == RouteSpec(
        "canary", PathMatch("separated_prefix", "/api", False),
        (HeaderMatch("x-env", StringMatch("exact", "Canary", True)),
         HeaderMatch(":method", StringMatch("exact", "GET")),
         HeaderMatch("x-debug", present=True, invert=True),
         HeaderMatch("x-n", range=(1, 10))),
        (QueryMatch("v", StringMatch("prefix", "2")), QueryMatch("flag")),
        "route", (("v1", 90), ("v2", 10)), 1.5,
        RetrySpec(("5xx", "reset", "retriable-status-codes"), (503, 409), 3, 0.25, 0.01, 0.1))


def test_route_timeout_falls_back_to_max_stream_duration_and_zero_means_none() -> None:
    """timeout, else max_stream_duration.max_stream_duration; 0 is "no limit" (None)."""
    assert one_route(route={"cluster": "c", "max_stream_duration": {
        "max_stream_duration": "4s", "grpc_timeout_header_max": "1s"}}).timeout == 4.0
    assert one_route(route={"cluster": "c", "timeout": "0s"}).timeout is None
    assert one_route(route={"cluster": "c"}).timeout is None


def test_virtual_host_retry_policy_applies_when_the_route_has_none() -> None:
    """The route's retry policy wins over its virtual host's; no merging."""
    config = route_config(
        {"match": {"prefix": "/a"}, "route": {"cluster": "c"}},
        {"match": {"prefix": "/b"}, "route": {"cluster": "c", "retry_policy": {
            "retry_on": "reset"}}},
        retry_policy={"retry_on": "5xx", "num_retries": 2})
    first, second = config.virtual_hosts[0].routes
    assert first.retry == RetrySpec(("5xx",), num_retries=2)
    assert second.retry == RetrySpec(("reset",), num_retries=1)


@pytest.mark.parametrize(("action", "kind"), [
    ({"redirect": {"path_redirect": "/x"}}, "redirect"),
    ({"direct_response": {"status": 503}}, "direct_response"),
    ({"non_forwarding_action": {}}, "non_forwarding"),
])
def test_non_forwarding_routes_are_kept_without_clusters(action: dict[str, Any],
                                                         kind: str) -> None:
    """Routes that do not forward are kept (matching requests must fail), with no cluster."""
    body: dict[str, Any] = {"match": {"prefix": "/"}, **action}
    spec = route_config(body).virtual_hosts[0].routes[0]
    assert (spec.kind, spec.clusters) == (kind, ())


@pytest.mark.parametrize(("route", "reason"), [
    ({"match": {"safe_regex": {"regex": "("}}, "route": {"cluster": "c"}},
     "match.safe_regex: regex '(' does not compile"),
    ({"match": {"safe_regex": {"regex": "a(?=b)"}}, "route": {"cluster": "c"}},
     "look-ahead"),
    ({"match": {"prefix": "/", "headers": [{"name": "x", "string_match": {
        "safe_regex": {"regex": "x" * (MAX_REGEX_LENGTH + 1)}}}]}, "route": {"cluster": "c"}},
     f"more than the {MAX_REGEX_LENGTH} meshlib accepts"),
    ({"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}},
     "route.cluster_header is not supported"),
    ({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 0}, {"name": "b", "weight": 0}]}}},
     "the weights sum to 0"),
    ({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1, "cluster_header": "x"}]}}}, "cluster_header is not supported"),
    ({"match": {"prefix": "/"}, "route": {"cluster": "c", "prefix_rewrite": "/v2"}},
     "route.prefix_rewrite is not supported"),
    ({"match": {"prefix": "/"}, "route": {"cluster": "c", "host_rewrite_literal": "x"}},
     "route.host_rewrite_literal is not supported"),
    ({"match": {"prefix": "/"}, "route": {"cluster": "c", "request_mirror_policies": [
        {"cluster": "m"}]}}, "request_mirror_policies are not supported"),
    ({"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "c"}},
     "match.grpc is not supported"),
    ({"match": {"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 50}}},
      "route": {"cluster": "c"}}, "runtime_fraction below 100% is not supported"),
    ({"match": {"prefix": "/", "headers": [{"name": "x", "prefix_match": ""}]},
      "route": {"cluster": "c"}}, "an empty prefix_match is not allowed"),
    ({"match": {"path_separated_prefix": "/api/"}, "route": {"cluster": "c"}},
     "must not be empty, end in '/'"),
    ({"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
        "retry_on": "5xx", "retriable_headers": [{"name": "x"}]}}},
     "retry_policy.retriable_headers is not supported"),
    ({"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
        "retry_on": "5xx", "retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}}}},
     "max_interval is below base_interval"),
    ({"match": {"prefix": "/"}}, "no action"),
])
def test_route_refusals(route: dict[str, Any], reason: str) -> None:
    """What a route needs and meshlib cannot honour is refused, naming where."""
    with pytest.raises(ResourceError) as info:
        route_config(route)
    assert "virtual_hosts[0] 'vh': routes[0]" in str(info.value)
    assert reason in str(info.value)


def test_virtual_host_refusals() -> None:
    """Duplicate domains, bad wildcards and require_tls are refused."""
    with pytest.raises(ResourceError, match="domain 'users' is also in virtual host 'a'"):
        decode_route_configuration(messages.from_dict({"name": "rc", "virtual_hosts": [
            {"name": "a", "domains": ["users"]}, {"name": "b", "domains": ["USERS"]}]},
            "envoy.config.route.v3.RouteConfiguration"))
    for domain in ("a*b", "*a*", "**"):
        with pytest.raises(ResourceError, match="a wildcard may only start or end"):
            route_config(domains=[domain])
    with pytest.raises(ResourceError, match="require_tls is not supported"):
        route_config(require_tls="ALL")


def test_select_virtual_host_as_envoy_does() -> None:
    """Exact, then the longest suffix wildcard, then the longest prefix wildcard, then *."""
    hosts = tuple(VirtualHostSpec(name, domains, ()) for name, domains in [
        ("any", ("*",)), ("exact", ("api.example.com",)), ("suffix", ("*.example.com",)),
        ("longer-suffix", ("*.api2.example.com",)), ("prefix", ("api.*",)),
        ("port", ("users:8080",))])

    def chosen(authority: str) -> str | None:
        vhost = select_virtual_host(hosts, authority)
        return vhost.name if vhost else None

    assert chosen("API.example.com") == "exact"
    assert chosen("x.api2.example.com") == "longer-suffix"
    assert chosen("www.example.com") == "suffix"
    assert chosen("api.other") == "prefix"
    assert chosen("users:8080") == "port"
    assert chosen("users") == "any"
    assert chosen(".example.com") == "any"  # a wildcard matches at least one character
    assert select_virtual_host(hosts[1:], "nothing") is None


# -- matchers (reference semantics) ------------------------------------------------------------


def test_header_match_semantics() -> None:
    """Missing headers match no value condition, inverted or not, unless treated as empty."""
    exact = HeaderMatch("x", StringMatch("exact", "a"))
    assert exact.matches("a") and not exact.matches("b") and not exact.matches(None)
    inverted = dataclasses.replace(exact, invert=True)
    assert inverted.matches("b") and not inverted.matches("a") and not inverted.matches(None)
    assert dataclasses.replace(inverted, missing_as_empty=True).matches(None)
    assert HeaderMatch("x", present=False).matches(None)
    assert HeaderMatch("x", present=True, invert=True).matches(None)
    ranged = HeaderMatch("x", range=(-10, 0))
    assert ranged.matches("-1") and not ranged.matches("0") and not ranged.matches("-1x")
    assert HeaderMatch("x", StringMatch("regex", "[0-9]{3}")).matches("123")
    assert not HeaderMatch("x", StringMatch("regex", "[0-9]{3}")).matches("1234")


def test_path_and_route_match_semantics() -> None:
    """Prefix, exact (case-insensitive when asked), regex (whole path), separated prefix."""
    assert PathMatch("prefix", "/API", False).matches("/api/x")
    assert not PathMatch("exact", "/a").matches("/a/")
    assert PathMatch("regex", "/v[0-9]+").matches("/v12")
    assert not PathMatch("regex", "/v[0-9]+").matches("/v12/x")
    separated = PathMatch("separated_prefix", "/api")
    assert separated.matches("/api") and separated.matches("/api/x")
    assert not separated.matches("/apix")
    route = RouteSpec("r", PathMatch("prefix", "/"), (HeaderMatch("x-env",
                      StringMatch("exact", "canary")),), (QueryMatch("v"),))
    assert route.matches("/a", {"x-env": "canary"}, {"v": "1"})
    assert not route.matches("/a", {"x-env": "canary"})


def test_compile_regex_refuses_what_re2_refuses() -> None:
    """Back-references, look-around and possessive quantifiers are refused."""
    for pattern in ("(a)\\1", "(?<=a)b", "a++", "(?>a)"):
        with pytest.raises(ResourceError, match="RE2"):
            compile_regex(pattern)
    assert compile_regex("^/users/[0-9]+$").fullmatch("/users/42")


# -- clusters -------------------------------------------------------------------------------


def test_cluster_defaults_and_fields() -> None:
    """lb_policy, circuit breaker max_requests, connect_timeout, eds_service_name."""
    spec = cluster(lb_policy="LEAST_REQUEST", connect_timeout="0.25s",
                   eds_cluster_config={"eds_config": {"ads": {}}, "service_name": "users-eds"},
                   circuit_breakers={"thresholds": [{"priority": "HIGH", "max_requests": 5},
                                                    {"max_requests": 100}]})
    assert spec == ClusterSpec("users", "EDS", "users-eds", "least-request", None, 100, 0.25)
    assert spec.eds_name == "users-eds"
    assert cluster().eds_name == "users"


def test_outlier_detection_takes_envoys_defaults() -> None:
    """An empty outlier_detection message means Envoy's defaults; set fields override."""
    assert cluster(outlier_detection={}).outlier == OutlierSpec()
    spec = cluster(outlier_detection={"consecutive_5xx": 3, "interval": "1s",
                                      "success_rate_stdev_factor": 2500,
                                      "enforcing_consecutive_gateway_failure": 100})
    assert spec.outlier == OutlierSpec(consecutive_5xx=3, interval=1.0,
                                       success_rate_stdev_factor=2.5,
                                       enforcing_consecutive_gateway_failure=100)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"lb_policy": "RING_HASH"}, "lb_policy RING_HASH is not supported"),
    ({"lb_policy": "MAGLEV"}, "lb_policy MAGLEV is not supported"),
    ({"type": "STRICT_DNS"}, "type STRICT_DNS is not supported"),
    ({"type": "STATIC"}, "a STATIC cluster needs a load_assignment"),
    ({"eds_cluster_config": {"eds_config": {"path": "/x"}}}, "is not ads or self"),
    ({"transport_socket": {"name": "envoy.transport_sockets.tls"}},
     "transport_socket 'envoy.transport_sockets.tls' (TLS to the endpoints) is not supported"),
    ({"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 3}},
     "choice_count 3 is not supported"),
    ({"outlier_detection": {"max_ejection_percent": 101}}, "more than 100"),
    ({"load_balancing_policy": {"policies": [{"typed_extension_config": {
        "name": "x", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct",
                                      "value": {}}}}]}},
     "has no policy meshlib supports"),
])
def test_cluster_refusals(fields: dict[str, Any], reason: str) -> None:
    """Cluster types, balancers and transports meshlib cannot honour are refused."""
    with pytest.raises(ResourceError) as info:
        cluster(**fields)
    assert reason in str(info.value)


def test_typed_load_balancing_policy_first_supported_wins() -> None:
    """load_balancing_policy: the first policy meshlib knows is used (as gRPC does)."""
    message = messages.from_dict({"name": "users", "type": "EDS", "eds_cluster_config": {
        "eds_config": {"ads": {}}}}, "envoy.config.cluster.v3.Cluster")
    prefix = "type.googleapis.com/envoy.extensions.load_balancing_policies."
    for type_url in (prefix + "ring_hash.v3.RingHash", prefix + "least_request.v3.LeastRequest",
                     prefix + "random.v3.Random"):
        policy = message.load_balancing_policy.policies.add()
        policy.typed_extension_config.name = type_url.rsplit(".", 1)[-1]
        policy.typed_extension_config.typed_config.type_url = type_url
    assert decode_cluster(message).lb_policy == "least-request"
    del message.load_balancing_policy.policies[1:]
    with pytest.raises(ResourceError, match=r"load_balancing_policy \(RingHash\) has no policy"):
        decode_cluster(message)


def test_static_cluster_with_inline_endpoints() -> None:
    """A STATIC cluster carries its endpoints."""
    spec = cluster(type="STATIC", load_assignment={"endpoints": [{"lb_endpoints": [
        lb("10.0.0.1", 80)]}]})
    assert spec.load_assignment == EndpointsSpec("users", (EndpointSpec("10.0.0.1", 80),))
    assert spec.eds_name is None


# -- endpoints ------------------------------------------------------------------------------


def test_endpoints_health_weights_localities_and_priorities() -> None:
    """Every endpoint of every locality, with its health, weight, locality and priority."""
    spec = assignment({"cluster_name": "users", "endpoints": [
        {"locality": {"region": "eu", "zone": "eu-1a"}, "load_balancing_weight": 3,
         "lb_endpoints": [lb("10.0.0.1", 80, health_status="HEALTHY", load_balancing_weight=5),
                          lb("10.0.0.2", 80, health_status="DRAINING")]},
        {"locality": {"zone": "eu-1b", "sub_zone": "rack-2"}, "priority": 1,
         "lb_endpoints": [lb("::1", 81, health_status="UNHEALTHY"), lb("10.0.0.4", 80)]}]})
    assert spec.endpoints == (
        EndpointSpec("10.0.0.1", 80, 5, "HEALTHY", "eu-1a", "eu", None, 3, 0),
        EndpointSpec("10.0.0.2", 80, 1, "DRAINING", "eu-1a", "eu", None, 3, 0),
        EndpointSpec("::1", 81, 1, "UNHEALTHY", "eu-1b", None, "rack-2", None, 1),
        EndpointSpec("10.0.0.4", 80, 1, "UNKNOWN", "eu-1b", None, "rack-2", None, 1))
    assert [e.address for e in usable_endpoints(spec.endpoints)] == ["10.0.0.1:80",
                                                                      "10.0.0.4:80"]
    assert spec.endpoints[2].address == "[::1]:81"


@pytest.mark.parametrize(("body", "reason"), [
    ({"cluster_name": "c", "endpoints": [{"lb_endpoints": [lb("10.0.0.1", 80,
                                                              load_balancing_weight=0)]}]},
     "load_balancing_weight is 0"),
    ({"cluster_name": "c", "endpoints": [{"lb_endpoints": [lb("10.0.0.1", 80),
                                                           lb("10.0.0.1", 80)]}]},
     "address 10.0.0.1:80 appears twice"),
    ({"cluster_name": "c", "endpoints": [{"priority": 1, "lb_endpoints": [lb("a", 1)]}]},
     "priorities [1] are not contiguous from 0"),
    ({"cluster_name": "c", "policy": {"drop_overloads": [{"category": "x", "drop_percentage": {
        "numerator": 1}}]}}, "drop_overloads is not supported"),
    ({"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "pipe": {"path": "/tmp/s"}}}}]}]}, "not a socket_address"),
])
def test_endpoint_refusals(body: dict[str, Any], reason: str) -> None:
    """What the balancer cannot use is refused, naming the endpoint."""
    with pytest.raises(ResourceError) as info:
        assignment(body)
    assert reason in str(info.value)


# -- the config and the encoder -----------------------------------------------------------------


def test_xds_config_is_immutable() -> None:
    """The mappings of a config are read-only views; equal configs compare equal."""
    config = XdsConfig("l", "rc", (), {"c": ClusterSpec("c")}, {}, {"lds": "1"})
    with pytest.raises(TypeError):
        config.clusters["d"] = ClusterSpec("d")  # type: ignore[index]
    assert config == XdsConfig("l", "rc", (), {"c": ClusterSpec("c")}, {}, {"lds": "1"})


FULL = {messages.LISTENER: "envoy.config.listener.v3.Listener",
        messages.ROUTE: "envoy.config.route.v3.RouteConfiguration",
        messages.CLUSTER: "envoy.config.cluster.v3.Cluster",
        messages.ENDPOINT: "envoy.config.endpoint.v3.ClusterLoadAssignment"}
DECODE = {messages.LISTENER: decode_listener, messages.ROUTE: decode_route_configuration,
          messages.CLUSTER: decode_cluster, messages.ENDPOINT: decode_endpoints}


@pytest.mark.parametrize("spec", [
    ListenerSpec("users:80", "rc", max_stream_duration=2.0),
    ListenerSpec("users:80", route_config=RouteConfigSpec("inline", ())),
    RouteConfigSpec("rc", (VirtualHostSpec("vh", ("users", "*.users"), (
        RouteSpec("a", PathMatch("prefix", "/v1", False),
                  (HeaderMatch("x-env", StringMatch("suffix", "ary", True)),
                   HeaderMatch("x-n", range=(1, 5), invert=True, missing_as_empty=True)),
                  (QueryMatch("q", StringMatch("regex", "[a-z]+")),),
                  clusters=(("v1", 90), ("v2", 10)), timeout=1.5,
                  retry=RetrySpec(("5xx",), (503,), 3, 0.25, 0.01, 0.1)),
        RouteSpec("", PathMatch("regex", "/x/[0-9]+"), kind="direct_response"))),)),
    ClusterSpec("users", "EDS", "users-eds", "random", OutlierSpec(interval=3.0), 7, 0.5),
    ClusterSpec("s", "STATIC", load_assignment=EndpointsSpec("s", (EndpointSpec("a", 1),))),
    EndpointsSpec("users", (EndpointSpec("10.0.0.1", 80, 2, "HEALTHY", "z", "r", "s", 4, 0),
                            EndpointSpec("10.0.0.2", 80, 1, "DRAINING", None, None, None,
                                         None, 1, "b.example"))),
])
def test_encode_then_decode_gives_the_same_spec(spec: Any) -> None:
    """What XdsServer serves for a dataclass decodes back to that dataclass."""
    type_url, body = to_envoy(spec)
    assert DECODE[type_url](messages.from_dict(body, FULL[type_url])) == spec
