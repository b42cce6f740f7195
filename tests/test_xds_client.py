"""XdsClient against a real control plane (meshlib.testing.XdsServer) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("grpc")

from meshlib._xds.backoff import Backoff
from meshlib._xds.bootstrap import parse_bootstrap
from meshlib._xds.client import MAX_RESPONSE_BYTES, XdsClient, XdsNotReady
from meshlib._xds.resources import (
    ClusterSpec,
    EndpointSpec,
    EndpointsSpec,
    ListenerSpec,
    PathMatch,
    RouteConfigSpec,
    RouteSpec,
    VirtualHostSpec,
    XdsConfig,
)
from meshlib.testing import XdsServer

LISTENER = "users.shop.svc.cluster.local:80"


def routes(*clusters: str | tuple[str, int], name: str = "users-routes") -> RouteConfigSpec:
    pairs = tuple(c if isinstance(c, tuple) else (c, 1) for c in clusters)
    route = RouteSpec("all", PathMatch("prefix", ""), clusters=pairs)
    return RouteConfigSpec(name, (VirtualHostSpec("users", (LISTENER, "users"), (route,)),))


def eds(name: str, *ports: int) -> EndpointsSpec:
    return EndpointsSpec(name, tuple(EndpointSpec("127.0.0.1", p, health="HEALTHY")
                                     for p in ports))


def full_set(server: XdsServer, **changes: Any) -> dict[str, str]:
    resources: dict[str, Any] = {
        "listeners": [ListenerSpec(LISTENER, "users-routes")],
        "routes": [routes("users")],
        "clusters": [{"name": "users", "type": "EDS", "lb_policy": "LEAST_REQUEST",
                      "eds_cluster_config": {"eds_config": {"ads": {}}}}],
        "endpoints": [eds("users", 8001, 8002)],
    }
    resources.update(changes)
    return server.set(**resources)


def make_client(server: XdsServer, **kwargs: Any) -> XdsClient:
    kwargs.setdefault("backoff", Backoff(base=0.05, cap=0.2))
    return XdsClient(parse_bootstrap(kwargs.pop("bootstrap", server.bootstrap)), LISTENER,
                     **kwargs)


@contextlib.asynccontextmanager
async def running(client: XdsClient) -> AsyncIterator[XdsClient]:
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Callable[[], Any], *, timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` (bounded in time) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what or check}")


async def wait_for(server: XdsServer, *args: Any, **kwargs: Any) -> Any:
    """XdsServer.wait_for off the event loop (the client runs on this loop)."""
    return await asyncio.to_thread(server.wait_for, *args, **kwargs)


@pytest.fixture
async def server() -> AsyncIterator[XdsServer]:
    async with XdsServer() as running_server:
        yield running_server


async def test_acks_carry_each_types_version_and_nonce(server: XdsServer) -> None:
    """The client ends with a complete config, and ACKs every type with its version and
    the nonce of the response it acknowledges; the node is sent as the bootstrap says."""
    full_set(server)
    bootstrap = server.bootstrap_for("node-7", metadata={"ISTIO_VERSION": "1.24", "n": 2},
                                     locality={"zone": "eu-1a"})
    async with running(make_client(server, bootstrap=bootstrap)) as client:
        config = await client.wait_ready_async(10)
        assert set(config.clusters) == {"users"}
        assert [e.port for e in config.endpoints["users"].endpoints] == [8001, 8002]
        assert dict(config.versions) == {"lds": "1", "rds": "1", "cds": "1", "eds": "1"}
        await wait_for(server, "ack", type="eds")
        status = client.status()
        for kind in ("lds", "rds", "cds", "eds"):
            (ack,) = server.acks(type=kind)
            assert (ack.version, ack.node) == ("1", "node-7")
            assert ack.nonce == status["types"][kind]["nonce"]
        node = server.nodes()[0]
        assert node["id"] == "node-7" and node["metadata"] == {"ISTIO_VERSION": "1.24", "n": 2}
        assert node["locality"] == {"zone": "eu-1a"} and node["userAgentName"] == "meshlib"
        assert status["connected"] and status["ready"] and status["last_nack"] is None


async def test_a_nack_names_the_resource_and_keeps_the_last_good_config(
        server: XdsServer) -> None:
    """An invalid cluster is NACKed with the previous version, the response's nonce and
    the reason; the configuration in use does not change."""
    full_set(server)
    async with running(make_client(server)) as client:
        before = await client.wait_ready_async(10)
        mark = server.mark()
        server.set(clusters=[{"name": "users", "type": "EDS", "lb_policy": "MAGLEV",
                              "eds_cluster_config": {"eds_config": {"ads": {}}}}])
        nack = await wait_for(server, "nack", type="cds", after=mark)
        assert nack.version == "1"
        assert nack.error == ("Cluster 'users': lb_policy MAGLEV is not supported "
                              "(ROUND_ROBIN, LEAST_REQUEST or RANDOM)")
        assert nack.nonce == client.status()["types"]["cds"]["nonce"]
        assert client.snapshot() is before
        last = client.status()["last_nack"]
        assert (last["type"], last["resource"]) == ("cds", "users")


async def test_garbage_is_nacked_and_the_last_good_config_stays(server: XdsServer) -> None:
    """Bytes that are no Cluster are NACKed ("cannot decode"); routing data stays."""
    full_set(server)
    async with running(make_client(server)) as client:
        before = await client.wait_ready_async(10)
        mark = server.mark()
        server.send_raw("cds", [b"\xff\xff\xff\xff garbage"])
        nack = await wait_for(server, "nack", type="cds", after=mark)
        assert "cannot decode the Cluster" in nack.error
        assert client.snapshot() is before


async def test_rds_changes_move_the_cluster_subscriptions(server: XdsServer) -> None:
    """Clusters are asked for by name and follow the routes: a new cluster is added to
    the subscription (with the type's current version and nonce, not as an ACK), the
    old one dropped once the new configuration is complete."""
    full_set(server)
    async with running(make_client(server)) as client:
        await client.wait_ready_async(10)
        await wait_for(server, "ack", type="eds")
        mark = server.mark()
        cds_nonce = client.status()["types"]["cds"]["nonce"]
        updates: list[XdsConfig] = []
        client.on_update(updates.append)
        server.set(routes=[routes(("users", 90), ("users-v2", 10))])
        grow = await wait_for(server, "subscribe", type="cds", after=mark)
        assert grow.names == ("users", "users-v2")
        assert (grow.version, grow.nonce) == ("1", cds_nonce)
        server.set(clusters=[ClusterSpec("users"), ClusterSpec("users-v2")],
                   endpoints=[eds("users", 8001), eds("users-v2", 9001)])
        config = await until(lambda: updates and "users-v2" in updates[-1].clusters
                             and updates[-1])
        assert config.virtual_hosts[0].routes[0].clusters == (("users", 90), ("users-v2", 10))
        mark = server.mark()
        server.set(routes=[routes("users-v2")])
        shrink = await wait_for(server, "subscribe", type="cds", after=mark)
        assert shrink.names == ("users-v2",)
        await until(lambda: list(client.snapshot().clusters) == ["users-v2"])  # type: ignore[union-attr]
        assert client.status()["types"]["eds"]["subscribed"] == ["users-v2"]


async def test_endpoint_health_weights_and_localities_are_decoded(server: XdsServer) -> None:
    """EDS carries health, weights, localities and priorities into the config."""
    full_set(server, endpoints=[{"cluster_name": "users", "endpoints": [
        {"locality": {"region": "eu", "zone": "eu-1a"}, "load_balancing_weight": 3,
         "lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1",
                                                          "port_value": 80}}},
              "health_status": "HEALTHY", "load_balancing_weight": 5},
             {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2",
                                                          "port_value": 80}}},
              "health_status": "DRAINING"}]},
        {"locality": {"zone": "eu-1b"}, "priority": 1, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.3",
                                                         "port_value": 80}}}}]}]}])
    async with running(make_client(server)) as client:
        config = await client.wait_ready_async(10)
        assert config.endpoints["users"].endpoints == (
            EndpointSpec("10.0.0.1", 80, 5, "HEALTHY", "eu-1a", "eu", None, 3, 0),
            EndpointSpec("10.0.0.2", 80, 1, "DRAINING", "eu-1a", "eu", None, 3, 0),
            EndpointSpec("10.0.0.3", 80, 1, "UNKNOWN", "eu-1b", None, None, None, 1))


async def test_does_not_exist_after_the_timer_and_wait_ready_says_why(
        server: XdsServer) -> None:
    """A cluster named by a route and never sent is reported as not existing after the
    (here short) timer; wait_ready gives up with an error saying what is missing."""
    full_set(server, routes=[routes("ghost")])
    async with running(make_client(server, resource_timeout=0.3)) as client:
        await until(lambda: client.status()["does_not_exist"] == {"cds": ["ghost"]})
        with pytest.raises(XdsNotReady) as info:
            await client.wait_ready_async(0.05)
        message = str(info.value)
        assert f"xds listener {LISTENER!r}: no configuration from the control plane yet" in message
        assert "Cluster 'ghost' (does not exist)" in message and server.address in message


async def test_a_deleted_listener_is_reported_and_the_config_kept(server: XdsServer) -> None:
    """A listener missing from a later LDS response is deleted (status says so); the
    last complete configuration stays in use."""
    full_set(server)
    async with running(make_client(server)) as client:
        before = await client.wait_ready_async(10)
        server.set(listeners=[])
        await until(lambda: client.status()["does_not_exist"] == {"lds": [LISTENER]})
        assert client.snapshot() is before


async def test_reconnect_resends_held_versions_and_the_server_skips_them(
        server: XdsServer) -> None:
    """After the stream drops the client asks again with the versions it holds (no
    nonce); the server, seeing nothing new, sends nothing; a later change arrives."""
    full_set(server)
    async with running(make_client(server)) as client:
        before = await client.wait_ready_async(10)
        await wait_for(server, "ack", type="eds")
        mark = server.mark()
        server.drop_streams()
        for kind in ("lds", "rds", "cds", "eds"):
            again = await wait_for(server, "subscribe", type=kind, after=mark)
            assert (again.stream, again.version, again.nonce) == (2, "1", "")
        assert client.status()["types"]["cds"]["nonce"] == ""  # nothing was resent
        assert client.snapshot() is before
        server.set(endpoints=[eds("users", 8003)])
        config = await until(lambda: client.snapshot() is not before and client.snapshot())
        assert [e.port for e in config.endpoints["users"].endpoints] == [8003]
        assert client.status()["streams"] == 2


async def test_server_gone_and_back_on_the_same_port(server: XdsServer) -> None:
    """While the control plane is down the config stays and status says why; when it is
    back on the same port the client reconnects by itself."""
    full_set(server)
    async with running(make_client(server)) as client:
        before = await client.wait_ready_async(10)
        await asyncio.to_thread(server.stop)
        await until(lambda: not client.status()["connected"]
                    and client.status()["last_error"], what="the stream to end")
        await asyncio.sleep(0.3)  # a few reconnection attempts fail
        assert client.snapshot() is before and client.status()["last_error"]
        await asyncio.to_thread(server.start)
        await until(lambda: client.status()["connected"], what="a reconnect")
        assert client.snapshot() is before


async def test_an_oversized_response_is_refused_and_the_config_stays(
        server: XdsServer) -> None:
    """A response over the 16 MiB cap is refused by grpcio before decoding: the stream
    ends with a clear error, the config stays, the client reconnects."""
    full_set(server)
    async with running(make_client(server)) as client:
        before = await client.wait_ready_async(10)
        huge = b"\x0a" + b"\x80\x80\x80\x08" + b"x" * (MAX_RESPONSE_BYTES + 1024)
        server.send_raw("cds", [huge])
        error = await until(lambda: client.status()["last_error"], what="the refusal")
        assert f"larger than the {MAX_RESPONSE_BYTES:,}-byte limit" in error
        assert client.snapshot() is before
        await until(lambda: client.status()["connected"], what="a reconnect")


async def test_a_silent_control_plane_times_out_wait_ready(server: XdsServer) -> None:
    """A server that never answers: wait_ready raises XdsNotReady naming the state."""
    full_set(server)
    server.hold()
    async with running(make_client(server)) as client:
        await wait_for(server, "subscribe", type="lds")
        with pytest.raises(XdsNotReady, match="connected, no response yet"):
            await client.wait_ready_async(0.2)
        server.hold(False)
        assert (await client.wait_ready_async(10)).listener == LISTENER


async def test_responses_of_unknown_types_are_ignored(server: XdsServer) -> None:
    """A response of a type the client never asked for is ignored, and shown in status."""
    full_set(server)
    async with running(make_client(server)) as client:
        before = await client.wait_ready_async(10)
        server.send_raw("type.googleapis.com/envoy.config.core.v3.Node", [b""])
        await until(lambda: client.status()["last_ignored"])
        assert client.snapshot() is before and client.status()["last_nack"] is None


def test_sync_use_from_another_thread() -> None:
    """As meshlib's sync client does: run() on a thread's own loop, wait_ready() and
    snapshot() from the caller's thread."""
    with XdsServer() as server:
        full_set(server)
        client = make_client(server)
        loop = asyncio.new_event_loop()
        task: list[asyncio.Task[None]] = []

        def drive() -> None:
            asyncio.set_event_loop(loop)
            task.append(loop.create_task(client.run()))
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task[0])

        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        try:
            config = client.wait_ready(10)
            assert config is client.snapshot() and "users" in config.clusters
        finally:
            while not task:
                time.sleep(0.01)
            loop.call_soon_threadsafe(task[0].cancel)
            thread.join(10)
            loop.close()
        assert not thread.is_alive()


async def test_tls_channel_creds_verify_the_control_plane(tmp_path: Any) -> None:
    """Bootstrap ``tls`` creds with a CA file: the client verifies the server's
    certificate and gets its configuration; a client trusting another CA does not."""
    trustme = pytest.importorskip("trustme")
    ca, stranger = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "stranger.pem").write_bytes(stranger.cert_pem.bytes())
    chain = b"".join(blob.bytes() for blob in issued.cert_chain_pems)
    async with XdsServer(tls=(chain, issued.private_key_pem.bytes())) as server:
        full_set(server)
        good = server.bootstrap_for("tls-node", ca_certificate_file=str(tmp_path / "ca.pem"))
        async with running(make_client(server, bootstrap=good)) as client:
            assert "users" in (await client.wait_ready_async(10)).clusters
        bad = server.bootstrap_for("tls-node", ca_certificate_file=str(tmp_path / "stranger.pem"))
        async with running(make_client(server, bootstrap=bad)) as client:
            error = await until(lambda: client.status()["last_error"], what="a TLS failure")
            assert "UNAVAILABLE" in error and client.snapshot() is None
