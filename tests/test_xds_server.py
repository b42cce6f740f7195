"""meshlib.testing.XdsServer speaks ADS as production control planes do (a raw gRPC stream)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("grpc")

import grpc
import grpc.aio

from meshlib._xds import messages
from meshlib._xds.resources import ClusterSpec, EndpointSpec, EndpointsSpec
from meshlib.testing import XdsServer

CDS, EDS, LDS = messages.CLUSTER, messages.ENDPOINT, messages.LISTENER


class RawStream:
    """A bare ADS stream: write DiscoveryRequests, read DiscoveryResponses (bounded)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        method = self.channel.stream_stream(
            messages.ADS_METHOD, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages.DiscoveryResponse.FromString)
        self.call = method()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in self.call:
                await self.queue.put(response)
        await self.queue.put(None)

    async def send(self, type_url: str, names: tuple[str, ...] = (), version: str = "",
                   nonce: str = "", error: str | None = None, node: str = "raw") -> None:
        request = messages.DiscoveryRequest(type_url=type_url, resource_names=list(names),
                                            version_info=version, response_nonce=nonce)
        request.node.id = node
        if error is not None:
            request.error_detail.message = error
        await self.call.write(request)

    async def response(self, timeout: float = 5.0) -> Any:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def silent(self, seconds: float = 0.3) -> bool:
        """Whether nothing arrives for ``seconds``."""
        try:
            await asyncio.wait_for(self.queue.get(), seconds)
        except asyncio.TimeoutError:
            return True
        return False

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await self.channel.close()


@pytest.fixture
async def server() -> AsyncIterator[XdsServer]:
    async with XdsServer() as running:
        running.set(clusters=[ClusterSpec("a"), ClusterSpec("b")],
                    endpoints=[EndpointsSpec("a", (EndpointSpec("10.0.0.1", 80),)),
                               EndpointsSpec("b", (EndpointSpec("10.0.0.2", 80),))])
        yield running


@pytest.fixture
async def stream(server: XdsServer) -> AsyncIterator[RawStream]:
    raw = RawStream(server.address)
    yield raw
    await raw.close()


def names(response: Any) -> list[str]:
    return sorted(messages.Cluster.FromString(r.value).name if r.type_url == CDS else
                  messages.ClusterLoadAssignment.FromString(r.value).cluster_name
                  for r in response.resources)


async def wait(server: XdsServer, kind: Any, mark: int) -> Any:
    return await asyncio.to_thread(server.wait_for, kind, after=mark)


async def test_wildcard_and_by_name_subscriptions(server: XdsServer, stream: RawStream) -> None:
    """An empty first CDS request is a wildcard (Envoy); EDS is asked for by name."""
    await stream.send(CDS)
    response = await stream.response()
    assert (response.version_info, names(response)) == ("1", ["a", "b"])
    await stream.send(EDS, ("b",))
    assert names(await stream.response()) == ["b"]
    record = server.requests(type="cds")[0]
    assert (record.kind, record.node, record.names) == ("subscribe", "raw", ())


async def test_ack_re_request_and_stale_nonce(server: XdsServer, stream: RawStream) -> None:
    """The last response's nonce is an ACK the first time, a re-request (answered with a
    new nonce) the second; an older nonce is stale and ignored."""
    await stream.send(EDS, ("a",))
    first = await stream.response()
    await stream.send(EDS, ("a",), version="1", nonce=first.nonce)
    assert await stream.silent()
    await stream.send(EDS, ("a",), version="1", nonce=first.nonce)
    again = await stream.response()
    assert again.nonce != first.nonce and names(again) == ["a"]
    mark = server.mark()
    await stream.send(EDS, ("a", "b"), version="1", nonce=first.nonce)
    assert (await wait(server, "stale", mark)).nonce == first.nonce
    assert await stream.silent()
    assert [r.kind for r in server.requests(type="eds")] == [
        "subscribe", "ack", "re-request", "stale"]


async def test_nacks_are_recorded_and_not_answered(server: XdsServer,
                                                   stream: RawStream) -> None:
    """A NACK (error_detail) is recorded with its error; the server does not resend."""
    await stream.send(CDS, ("a",))
    first = await stream.response()
    await stream.send(CDS, ("a",), version="", nonce=first.nonce, error="bad cluster")
    assert await stream.silent()
    (nack,) = server.nacks(type="cds")
    assert (nack.error, nack.nonce, nack.version) == ("bad cluster", first.nonce, "")


async def test_a_new_version_is_pushed_and_names_can_change(server: XdsServer,
                                                            stream: RawStream) -> None:
    """set() pushes to subscribers; a request with other names is answered with them;
    an empty list unsubscribes a by-name subscriber."""
    await stream.send(EDS, ("a",))
    first = await stream.response()
    await stream.send(EDS, ("a",), version="1", nonce=first.nonce)
    server.set(endpoints=[EndpointsSpec("a", (EndpointSpec("10.0.0.9", 80),)),
                          EndpointsSpec("b", ())])
    pushed = await stream.response()
    assert (pushed.version_info, names(pushed)) == ("2", ["a"])
    await stream.send(EDS, ("a", "b"), version="2", nonce=pushed.nonce)
    both = await stream.response()
    assert names(both) == ["a", "b"]
    assert server.requests(type="eds")[-1].kind == "ack"  # an ACK changing the names
    mark = server.mark()
    await stream.send(EDS, (), version="2", nonce=both.nonce)
    assert (await wait(server, "ack", mark)).names == ()
    server.set(endpoints=[EndpointsSpec("a", ())])
    assert await stream.silent()


async def test_a_resuming_client_is_not_sent_what_it_holds(server: XdsServer) -> None:
    """A new stream from a node asking with the version it acknowledged gets nothing
    until something changes (so held versions save the transfer)."""
    first = RawStream(server.address)
    try:
        await first.send(EDS, ("a",), node="n1")
        response = await first.response()
        await first.send(EDS, ("a",), version="1", nonce=response.nonce, node="n1")
        await asyncio.to_thread(server.wait_for, "ack", type="eds")
    finally:
        await first.close()
    second = RawStream(server.address)
    try:
        await second.send(EDS, ("a",), version="1", node="n1")
        assert await second.silent()
        await second.send(EDS, ("a", "b"), version="1", node="n1")  # new names: answered
        assert names(await second.response()) == ["a", "b"]
    finally:
        await second.close()
    third = RawStream(server.address)
    try:
        await third.send(EDS, ("a",), version="1", node="another-node")
        assert names(await third.response()) == ["a"]
    finally:
        await third.close()


async def test_nothing_is_sent_before_the_first_set_of_a_type(server: XdsServer,
                                                              stream: RawStream) -> None:
    """No listeners were ever set: an LDS request waits (as go-control-plane does)."""
    await stream.send(LDS, ("users:80",))
    assert await stream.silent()
    server.set(listeners=[])
    response = await stream.response()
    assert (response.type_url, len(response.resources)) == (LDS, 0)


async def test_hold_drop_and_raw_hooks(server: XdsServer, stream: RawStream) -> None:
    """hold() answers nothing until released; send_raw() sends anything; drop_streams()
    ends the stream with UNAVAILABLE."""
    server.hold()
    await stream.send(CDS, ("a",))
    assert await stream.silent()
    server.hold(False)
    assert names(await stream.response()) == ["a"]
    server.send_raw("cds", [b"\xffgarbage"], version="x")
    raw = await stream.response()
    assert (raw.version_info, raw.resources[0].value) == ("x", b"\xffgarbage")
    server.drop_streams()
    assert await stream.response() is None
    assert await stream.call.code() == grpc.StatusCode.UNAVAILABLE


def test_set_accepts_dataclasses_dicts_and_messages_and_refuses_garbage() -> None:
    """Resources may be dataclasses, Envoy JSON dicts or messages; a bad one raises
    ValueError naming it and the server is unchanged."""
    with XdsServer() as server:
        message = messages.from_dict({"name": "m", "type": "EDS", "eds_cluster_config": {
            "eds_config": {"ads": {}}}}, "envoy.config.cluster.v3.Cluster")
        versions = server.set(clusters=[ClusterSpec("a"), {"name": "d", "@type": CDS}, message])
        assert versions == {"cds": "1"}
        with pytest.raises(ValueError, match=r"cds resource #0 does not convert.*no_such_field"):
            server.set(clusters=[{"name": "x", "no_such_field": 1}])
        with pytest.raises(ValueError, match="has @type"):
            server.set(clusters=[{"name": "x", "@type": EDS}])
        with pytest.raises(ValueError, match="two cds resources named 'a'"):
            server.set(clusters=[ClusterSpec("a"), ClusterSpec("a")])
        with pytest.raises(ValueError, match="is a ClusterSpec"):
            server.set(endpoints=[ClusterSpec("a")])
        assert server.versions() == {"cds": "1"}


def test_stop_and_start_keep_the_port_and_the_resources() -> None:
    """A stopped server frees its port; start() serves the same resources on it again."""
    with XdsServer() as server:
        server.set(clusters=[ClusterSpec("a")])
        port = server.port
        server.stop()
        assert server.streams == 0
        server.start()
        assert server.port == port and server.versions() == {"cds": "1"}
        bootstrap = server.bootstrap
        assert f'"server_uri": "127.0.0.1:{port}"' in bootstrap
