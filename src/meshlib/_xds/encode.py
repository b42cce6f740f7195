"""Resource dataclasses back to Envoy's JSON form: what a control plane would send.

The inverse of `.resources`' decoders, used by
`meshlib.testing.XdsServer` to serve the dataclasses, and by tests
(decoding what this encodes gives back the same dataclass, except that
endpoints are grouped by locality and priority, and a single cluster of
weight 1 is written as `cluster`).
"""

from __future__ import annotations

from typing import Any

from . import messages
from .resources import (
    ClusterSpec,
    EndpointsSpec,
    HeaderMatch,
    ListenerSpec,
    OutlierSpec,
    PathMatch,
    QueryMatch,
    RetrySpec,
    RouteConfigSpec,
    RouteSpec,
    StringMatch,
    VirtualHostSpec,
)

__all__ = ["duration", "to_envoy"]

_Spec = ListenerSpec | RouteConfigSpec | ClusterSpec | EndpointsSpec


def to_envoy(spec: _Spec) -> tuple[str, dict[str, Any]]:
    """`(type_url, Envoy JSON)` of a listener, route configuration, cluster or endpoints."""
    if isinstance(spec, ListenerSpec):
        return messages.LISTENER, _listener(spec)
    if isinstance(spec, RouteConfigSpec):
        return messages.ROUTE, _route_configuration(spec)
    if isinstance(spec, ClusterSpec):
        return messages.CLUSTER, _cluster(spec)
    if isinstance(spec, EndpointsSpec):
        return messages.ENDPOINT, _endpoints(spec)
    raise TypeError(f"not a resource dataclass: {spec!r}")


def duration(seconds: float) -> str:
    """A protobuf JSON duration: `1.5` -> `"1.500s"`."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _listener(spec: ListenerSpec) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": messages.HCM,
        "stat_prefix": spec.name,
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": messages.ROUTER}}],
    }
    if spec.route_config is not None:
        hcm["route_config"] = _route_configuration(spec.route_config)
    else:
        hcm["rds"] = {"route_config_name": spec.route_config_name, "config_source": {"ads": {}}}
    if spec.max_stream_duration is not None:
        hcm["common_http_protocol_options"] = {
            "max_stream_duration": duration(spec.max_stream_duration)}
    return {"name": spec.name, "api_listener": {"api_listener": hcm}}


def _route_configuration(spec: RouteConfigSpec) -> dict[str, Any]:
    return {"name": spec.name, "virtual_hosts": [_virtual_host(v) for v in spec.virtual_hosts]}


def _virtual_host(spec: VirtualHostSpec) -> dict[str, Any]:
    return {"name": spec.name, "domains": list(spec.domains),
            "routes": [_route(r) for r in spec.routes]}


def _string_match(spec: StringMatch) -> dict[str, Any]:
    if spec.kind == "regex":
        return {"safe_regex": {"regex": spec.value}}
    result: dict[str, Any] = {spec.kind: spec.value}
    if spec.ignore_case:
        result["ignore_case"] = True
    return result


def _path(spec: PathMatch) -> dict[str, Any]:
    key = {"prefix": "prefix", "exact": "path", "separated_prefix": "path_separated_prefix"}
    if spec.kind == "regex":
        return {"safe_regex": {"regex": spec.value}}
    result: dict[str, Any] = {key[spec.kind]: spec.value}
    if not spec.case_sensitive:
        result["case_sensitive"] = False
    return result


def _header(spec: HeaderMatch) -> dict[str, Any]:
    result: dict[str, Any] = {"name": spec.name}
    if spec.match is not None:
        result["string_match"] = _string_match(spec.match)
    elif spec.range is not None:
        result["range_match"] = {"start": str(spec.range[0]), "end": str(spec.range[1])}
    else:
        result["present_match"] = bool(spec.present)
    if spec.invert:
        result["invert_match"] = True
    if spec.missing_as_empty:
        result["treat_missing_header_as_empty"] = True
    return result


def _query(spec: QueryMatch) -> dict[str, Any]:
    if spec.match is None:
        return {"name": spec.name, "present_match": True}
    return {"name": spec.name, "string_match": _string_match(spec.match)}


def _retry(spec: RetrySpec) -> dict[str, Any]:
    result: dict[str, Any] = {"retry_on": ",".join(spec.retry_on),
                              "num_retries": spec.num_retries}
    if spec.status_codes:
        result["retriable_status_codes"] = list(spec.status_codes)
    if spec.per_try_timeout is not None:
        result["per_try_timeout"] = duration(spec.per_try_timeout)
    if spec.backoff_base is not None:
        backoff = {"base_interval": duration(spec.backoff_base)}
        if spec.backoff_max is not None:
            backoff["max_interval"] = duration(spec.backoff_max)
        result["retry_back_off"] = backoff
    return result


def _route(spec: RouteSpec) -> dict[str, Any]:
    match = _path(spec.path)
    if spec.headers:
        match["headers"] = [_header(h) for h in spec.headers]
    if spec.query:
        match["query_parameters"] = [_query(q) for q in spec.query]
    result: dict[str, Any] = {"match": match}
    if spec.name:
        result["name"] = spec.name
    if spec.kind == "redirect":
        result["redirect"] = {"path_redirect": "/"}
    elif spec.kind == "direct_response":
        result["direct_response"] = {"status": 503}
    elif spec.kind == "non_forwarding":
        result["non_forwarding_action"] = {}
    elif spec.kind == "filter_action":
        result["filter_action"] = {}
    else:
        action: dict[str, Any] = {}
        if len(spec.clusters) == 1 and spec.clusters[0][1] == 1:
            action["cluster"] = spec.clusters[0][0]
        else:
            action["weighted_clusters"] = {
                "clusters": [{"name": n, "weight": w} for n, w in spec.clusters]}
        if spec.timeout is not None:
            action["timeout"] = duration(spec.timeout)
        if spec.retry is not None:
            action["retry_policy"] = _retry(spec.retry)
        result["route"] = action
    return result


_LB = {"round-robin": "ROUND_ROBIN", "least-request": "LEAST_REQUEST", "random": "RANDOM"}


def _outlier(spec: OutlierSpec) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in OutlierSpec.__dataclass_fields__:
        value = getattr(spec, name)
        if name == "success_rate_stdev_factor":
            result[name] = round(value * 1000)
        elif name in ("interval", "base_ejection_time", "max_ejection_time",
                      "max_ejection_time_jitter"):
            result[name] = duration(value)
        else:
            result[name] = value
    return result


def _cluster(spec: ClusterSpec) -> dict[str, Any]:
    result: dict[str, Any] = {"name": spec.name, "type": spec.type,
                              "lb_policy": _LB[spec.lb_policy]}
    if spec.type == "EDS":
        eds: dict[str, Any] = {"eds_config": {"ads": {}}}
        if spec.eds_service_name:
            eds["service_name"] = spec.eds_service_name
        result["eds_cluster_config"] = eds
    elif spec.load_assignment is not None:
        result["load_assignment"] = _endpoints(spec.load_assignment)
    if spec.connect_timeout is not None:
        result["connect_timeout"] = duration(spec.connect_timeout)
    if spec.max_requests is not None:
        result["circuit_breakers"] = {"thresholds": [{"max_requests": spec.max_requests}]}
    if spec.outlier is not None:
        result["outlier_detection"] = _outlier(spec.outlier)
    return result


def _endpoints(spec: EndpointsSpec) -> dict[str, Any]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for endpoint in spec.endpoints:
        key = (endpoint.region, endpoint.zone, endpoint.sub_zone, endpoint.priority,
               endpoint.locality_weight)
        entry: dict[str, Any] = {
            "endpoint": {"address": {"socket_address": {"address": endpoint.host,
                                                        "port_value": endpoint.port}}},
            "health_status": endpoint.health,
            "load_balancing_weight": endpoint.weight,
        }
        if endpoint.hostname:
            entry["endpoint"]["hostname"] = endpoint.hostname
        groups.setdefault(key, []).append(entry)
    localities = []
    for (region, zone, sub_zone, priority, weight), entries in groups.items():
        locality = {k: v for k, v in (("region", region), ("zone", zone),
                                      ("sub_zone", sub_zone)) if v}
        group: dict[str, Any] = {"locality": locality, "lb_endpoints": entries}
        if priority:
            group["priority"] = priority
        if weight is not None:
            group["load_balancing_weight"] = weight
        localities.append(group)
    return {"cluster_name": spec.cluster_name, "endpoints": localities}
