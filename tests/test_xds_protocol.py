"""The ADS state machine (meshlib._xds.protocol) with a fake clock: no I/O, no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("google.protobuf")

from meshlib._xds import messages
from meshlib._xds.encode import to_envoy
from meshlib._xds.protocol import AdsProtocol, Request
from meshlib._xds.resources import (
    ClusterSpec,
    EndpointSpec,
    EndpointsSpec,
    ListenerSpec,
    PathMatch,
    RouteConfigSpec,
    RouteSpec,
    VirtualHostSpec,
)

LDS, RDS, CDS, EDS = messages.LISTENER, messages.ROUTE, messages.CLUSTER, messages.ENDPOINT
FULL = {LDS: "envoy.config.listener.v3.Listener", RDS: "envoy.config.route.v3.RouteConfiguration",
        CDS: "envoy.config.cluster.v3.Cluster",
        EDS: "envoy.config.endpoint.v3.ClusterLoadAssignment"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def packed(spec: Any) -> Any:
    type_url, body = to_envoy(spec)
    message = messages.from_dict(body, FULL[type_url])
    any_message = messages.AnyMessage()
    any_message.Pack(message)
    return any_message


def response(type_url: str, version: str, nonce: str, *items: Any) -> Any:
    resources = [item if getattr(item, "DESCRIPTOR", None) is not None
                 and item.DESCRIPTOR.full_name == "google.protobuf.Any" else packed(item)
                 for item in items]
    return messages.DiscoveryResponse(version_info=version, nonce=nonce, type_url=type_url,
                                      resources=resources)


def routes(name: str, *clusters: str | tuple[str, int]) -> RouteConfigSpec:
    pairs = tuple(c if isinstance(c, tuple) else (c, 1) for c in clusters)
    route = RouteSpec("r", PathMatch("prefix", ""), clusters=pairs)
    return RouteConfigSpec(name, (VirtualHostSpec("vh", ("*",), (route,)),))


def endpoints(name: str, *ports: int) -> EndpointsSpec:
    return EndpointsSpec(name, tuple(EndpointSpec("127.0.0.1", p) for p in ports))


def by_type(requests: list[Request]) -> dict[str, Request]:
    return {r.type_url: r for r in requests}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ads(clock: Clock) -> AdsProtocol:
    return AdsProtocol("users:80", clock=clock, resource_timeout=15.0)


def full_graph(ads: AdsProtocol) -> None:
    """Drive ``ads`` to a complete graph: listener -> users-routes -> users -> endpoints."""
    ads.start_stream()
    ads.receive(response(LDS, "1", "n1", ListenerSpec("users:80", "users-routes")))
    ads.receive(response(RDS, "1", "n2", routes("users-routes", "users")))
    ads.receive(response(CDS, "1", "n3", ClusterSpec("users")))
    ads.receive(response(EDS, "1", "n4", endpoints("users", 8001)))


def test_first_request_asks_for_the_listener_by_name(ads: AdsProtocol) -> None:
    """A new stream asks for the listener only, by name, with no version and no nonce."""
    assert ads.start_stream() == [Request(LDS, "", "", ("users:80",))]


def test_the_graph_is_followed_by_name_and_each_response_acked(ads: AdsProtocol) -> None:
    """Each accepted response is ACKed with its version and nonce, then what it names is
    asked for: listener -> route configuration -> clusters -> endpoints."""
    ads.start_stream()
    sent, changed = ads.receive(response(LDS, "1", "n1", ListenerSpec("users:80", "rc")))
    assert sent == [Request(LDS, "1", "n1", ("users:80",), "ack"), Request(RDS, "", "", ("rc",))]
    assert not changed and ads.config is None
    sent, _ = ads.receive(response(RDS, "7", "n2", routes("rc", "a", ("b", 3))))
    assert sent == [Request(RDS, "7", "n2", ("rc",), "ack"), Request(CDS, "", "", ("a", "b"))]
    sent, _ = ads.receive(response(CDS, "3", "n3", ClusterSpec("a"),
                                   ClusterSpec("b", eds_service_name="b-eds")))
    assert sent == [Request(CDS, "3", "n3", ("a", "b"), "ack"),
                    Request(EDS, "", "", ("a", "b-eds"))]
    sent, changed = ads.receive(response(EDS, "9", "n4", endpoints("a", 1), endpoints("b-eds", 2)))
    assert sent == [Request(EDS, "9", "n4", ("a", "b-eds"), "ack")]
    assert changed and ads.config is not None
    assert dict(ads.config.versions) == {"lds": "1", "rds": "7", "cds": "3", "eds": "9"}
    assert ads.config.endpoints["b"].cluster_name == "b-eds"
    assert ads.config.endpoints["b"].endpoints[0].port == 2


def test_an_invalid_resource_nacks_the_whole_response_and_keeps_the_type(
        ads: AdsProtocol) -> None:
    """A response holding one invalid cluster is NACKed with the previous version, the
    response's nonce and an error naming the cluster; no cluster of it is taken."""
    ads.start_stream()
    ads.receive(response(LDS, "1", "n1", ListenerSpec("users:80", "rc")))
    ads.receive(response(RDS, "1", "n2", routes("rc", "a", "b")))
    ads.receive(response(CDS, "1", "n3", ClusterSpec("a"), ClusterSpec("b")))
    ads.receive(response(EDS, "1", "n4", endpoints("a", 1), endpoints("b", 2)))
    before = ads.config
    bad = messages.from_dict({"name": "b", "type": "EDS", "lb_policy": "MAGLEV",
                              "eds_cluster_config": {"eds_config": {"ads": {}}}}, FULL[CDS])
    any_bad = messages.AnyMessage()
    any_bad.Pack(bad)
    sent, changed = ads.receive(response(CDS, "2", "n5", ClusterSpec("a", lb_policy="random"),
                                         any_bad))
    assert [r.kind for r in sent] == ["nack"]
    assert (sent[0].version_info, sent[0].response_nonce) == ("1", "n5")
    assert sent[0].error == ("Cluster 'b': lb_policy MAGLEV is not supported "
                             "(ROUND_ROBIN, LEAST_REQUEST or RANDOM)")
    assert not changed and ads.config is before
    assert ads.config is not None and ads.config.clusters["a"].lb_policy == "round-robin"
    assert ads.last_nack is not None and ads.last_nack.resource == "b"
    assert ads.status()["types"]["cds"]["version"] == "1"


def test_an_undecodable_resource_is_nacked(ads: AdsProtocol) -> None:
    """Bytes that are not a Cluster, or an Any of another type, are NACKed."""
    full_graph(ads)
    garbage = messages.AnyMessage(type_url=CDS, value=b"\xff\xff\xff\xff")
    sent, _ = ads.receive(response(CDS, "2", "n5", garbage))
    assert sent[0].kind == "nack" and "cannot decode the Cluster" in (sent[0].error or "")
    wrong = messages.AnyMessage(type_url=EDS, value=b"")
    sent, _ = ads.receive(response(CDS, "3", "n6", wrong))
    assert sent[0].kind == "nack" and "in a response of type" in (sent[0].error or "")
    assert sent[0].version_info == "1"


def test_a_repeated_nonce_is_ignored(ads: AdsProtocol) -> None:
    """A response carrying the nonce just handled is a duplicate: nothing is sent."""
    ads.start_stream()
    first = response(LDS, "1", "n1", ListenerSpec("users:80", "rc"))
    assert ads.receive(first)[0]
    assert ads.receive(first) == ([], False)


def test_a_type_never_asked_for_is_ignored(ads: AdsProtocol) -> None:
    """A response of an unknown type is ignored (as Envoy and gRPC do) and reported."""
    ads.start_stream()
    sent, _ = ads.receive(response("type.googleapis.com/some.Other", "1", "x"))
    assert sent == []
    assert "some.Other" in (ads.status()["last_ignored"] or "")


def test_resources_not_asked_for_are_ignored_even_if_invalid(ads: AdsProtocol) -> None:
    """Only the names asked for are validated; others in the response are skipped."""
    ads.start_stream()
    other = messages.from_dict({"name": "other"}, FULL[LDS])  # no api_listener: invalid
    any_other = messages.AnyMessage()
    any_other.Pack(other)
    sent, _ = ads.receive(response(LDS, "1", "n1", ListenerSpec("users:80", "rc"), any_other))
    assert sent[0].kind == "ack"


def test_resource_wrapper_is_unwrapped(ads: AdsProtocol) -> None:
    """Resources wrapped in envoy.service.discovery.v3.Resource are accepted."""
    ads.start_stream()
    wrapper = messages.Resource(name="users:80", resource=packed(ListenerSpec("users:80", "rc")))
    any_wrapper = messages.AnyMessage()
    any_wrapper.Pack(wrapper)
    sent, _ = ads.receive(response(LDS, "1", "n1", any_wrapper))
    assert sent[0].kind == "ack" and sent[1] == Request(RDS, "", "", ("rc",))


def test_does_not_exist_after_the_timer(ads: AdsProtocol, clock: Clock) -> None:
    """A name asked for and never sent is reported as not existing after 15 s."""
    ads.start_stream()
    ads.receive(response(LDS, "1", "n1", ListenerSpec("users:80", "rc")))
    assert ads.next_deadline() == clock.now + 15.0
    clock.now += 14.9
    ads.poll()
    assert ads.status()["does_not_exist"] == {}
    clock.now += 0.2
    ads.poll()
    assert ads.status()["does_not_exist"] == {"rds": ["rc"]}
    assert ads.waiting_for() == ["RouteConfiguration 'rc' (does not exist)"]
    assert ads.next_deadline() is None


def test_timers_stop_with_the_stream_and_restart_on_the_next(ads: AdsProtocol,
                                                             clock: Clock) -> None:
    """No does-not-exist verdict while the stream is down; the timer starts again."""
    ads.start_stream()
    ads.end_stream()
    clock.now += 60
    ads.poll()
    assert ads.status()["does_not_exist"] == {}
    ads.start_stream()
    assert ads.next_deadline() == clock.now + 15.0


def test_listener_missing_from_a_response_is_deleted_but_the_config_stays(
        ads: AdsProtocol) -> None:
    """LDS lists every listener asked for: a missing one is deleted (reported), while
    the configuration in use stays (the last good one)."""
    full_graph(ads)
    before = ads.config
    sent, changed = ads.receive(response(LDS, "2", "n5"))
    assert sent[0].kind == "ack" and not changed
    assert ads.status()["does_not_exist"] == {"lds": ["users:80"]}
    assert ads.config is before


def test_ignore_resource_deletion_keeps_the_listener(clock: Clock) -> None:
    """With the server feature ignore_resource_deletion a missing listener is kept."""
    ads = AdsProtocol("users:80", clock=clock, ignore_resource_deletion=True)
    full_graph(ads)
    ads.receive(response(LDS, "2", "n5"))
    assert ads.status()["does_not_exist"] == {}
    assert ads.status()["types"]["lds"]["held"] == ["users:80"]


def test_missing_endpoints_are_not_a_deletion(ads: AdsProtocol) -> None:
    """An EDS response that leaves an assignment out does not delete it."""
    ads.start_stream()
    ads.receive(response(LDS, "1", "n1", ListenerSpec("users:80", "rc")))
    ads.receive(response(RDS, "1", "n2", routes("rc", "a", "b")))
    ads.receive(response(CDS, "1", "n3", ClusterSpec("a"), ClusterSpec("b")))
    ads.receive(response(EDS, "1", "n4", endpoints("a", 1), endpoints("b", 2)))
    ads.receive(response(EDS, "2", "n5", endpoints("a", 3)))
    assert ads.config is not None
    assert ads.config.endpoints["b"].endpoints[0].port == 2
    assert ads.config.endpoints["a"].endpoints[0].port == 3


def test_cluster_deletion_is_reported_and_rds_change_makes_before_break(
        ads: AdsProtocol) -> None:
    """An RDS change naming a new cluster subscribes to it while the old one stays
    subscribed; once the new graph is complete the old cluster is let go."""
    full_graph(ads)
    sent, changed = ads.receive(response(RDS, "2", "n5", routes("users-routes", "users-v2")))
    assert not changed  # users-v2 is not there yet: the configuration in use stays
    assert by_type(sent)[CDS] == Request(CDS, "1", "n3", ("users", "users-v2"))
    sent, changed = ads.receive(response(CDS, "2", "n6", ClusterSpec("users"),
                                         ClusterSpec("users-v2")))
    assert by_type(sent)[EDS].resource_names == ("users", "users-v2")
    assert ads.config is not None and list(ads.config.clusters) == ["users"]  # still in use
    sent, changed = ads.receive(response(EDS, "2", "n7", endpoints("users", 1),
                                         endpoints("users-v2", 2)))
    assert changed and ads.config is not None
    assert list(ads.config.clusters) == ["users-v2"]
    # the complete new graph no longer needs users: it is unsubscribed
    assert by_type(sent)[CDS] == Request(CDS, "2", "n6", ("users-v2",))
    assert by_type(sent)[EDS] == Request(EDS, "2", "n7", ("users-v2",))


def test_the_config_in_use_takes_new_endpoints_while_a_new_route_waits(
        ads: AdsProtocol) -> None:
    """While the newest routes name a cluster that never comes, the routes in use
    stay and their clusters' endpoint updates still apply."""
    full_graph(ads)
    ads.receive(response(RDS, "2", "n5", routes("users-routes", "ghost")))
    _, changed = ads.receive(response(EDS, "2", "n6", endpoints("users", 9)))
    assert changed and ads.config is not None
    assert ads.config.virtual_hosts[0].routes[0].clusters == (("users", 1),)
    assert ads.config.endpoints["users"].endpoints[0].port == 9
    assert ads.config.versions["rds"] == "1" and ads.config.versions["eds"] == "2"
    assert ads.waiting_for() == ["Cluster 'ghost' (not received yet)"]


def test_a_new_stream_resends_held_versions_and_names(ads: AdsProtocol) -> None:
    """After a reconnect every type is asked for again with its version, no nonce."""
    full_graph(ads)
    ads.end_stream()
    assert ads.start_stream() == [Request(LDS, "1", "", ("users:80",)),
                                  Request(RDS, "1", "", ("users-routes",)),
                                  Request(CDS, "1", "", ("users",)),
                                  Request(EDS, "1", "", ("users",))]
    assert ads.next_deadline() is None  # everything is held: no timer


def test_inline_route_configuration(ads: AdsProtocol) -> None:
    """A listener with inline routes asks for no RouteConfiguration."""
    ads.start_stream()
    sent, _ = ads.receive(response(LDS, "1", "n1", ListenerSpec(
        "users:80", route_config=routes("inline", "users"), max_stream_duration=3.0)))
    assert by_type(sent)[CDS].resource_names == ("users",) and RDS not in by_type(sent)
    ads.receive(response(CDS, "1", "n2", ClusterSpec("users")))
    ads.receive(response(EDS, "1", "n3", endpoints("users", 1)))
    assert ads.config is not None and ads.config.route_config_name == "inline"
    assert ads.config.versions["rds"] == ""
    assert ads.config.virtual_hosts[0].routes[0].timeout == 3.0  # the listener's default


def test_static_cluster_needs_no_eds(ads: AdsProtocol) -> None:
    """A STATIC cluster's inline endpoints complete the graph without EDS."""
    ads.start_stream()
    ads.receive(response(LDS, "1", "n1", ListenerSpec("users:80", "rc")))
    ads.receive(response(RDS, "1", "n2", routes("rc", "users")))
    sent, changed = ads.receive(response(CDS, "1", "n3", ClusterSpec(
        "users", type="STATIC", load_assignment=endpoints("users", 7))))
    assert EDS not in by_type(sent) and changed
    assert ads.config is not None and ads.config.endpoints["users"].endpoints[0].port == 7
