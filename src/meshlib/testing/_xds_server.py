"""`XdsServer`: a real ADS control plane on 127.0.0.1, for tests.

It speaks state-of-the-world ADS as production control planes do (Istio's
istiod, go-control-plane):

- per-type versions and per-stream nonces; a new version of a type is
  pushed to every stream subscribed to it;
- wildcard subscriptions (Envoy: an empty first request for listeners or
  clusters, or `*`) and subscriptions by name (gRPC, Istio's proxyless
  clients, meshlib); a later request changes the names (an empty list, for
  a client that subscribed by name, unsubscribes from everything);
- a request carrying the nonce of the last response is its ACK (or NACK,
  with `error_detail`); one carrying that nonce again is a re-request and
  is answered (Envoy re-requests endpoints that way after a cluster
  change); a request carrying an older nonce is stale and ignored;
- a client that reconnects with the version it holds, for names it had
  acknowledged at that version, is not sent them again;
- nothing is sent for a type before the first `XdsServer.set()` that
  includes it (as go-control-plane waits for a snapshot).

Resources are given as meshlib's resource dataclasses
(`meshlib._xds.resources`), as dicts in Envoy's JSON form (what Envoy's
docs and `config_dump` show; converted with protobuf's `json_format` in
meshlib's private descriptor pool), or as messages of that pool.

It runs on its own thread and event loop, so it serves sync and async tests
alike. Test hooks make it misbehave: `XdsServer.send_raw()` (anything, garbage
included), `XdsServer.hold()` (never answer), `XdsServer.drop_streams()`,
and `XdsServer.stop()` / `XdsServer.start()` (the same port).

Needs the `xds` extra (grpcio, protobuf).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import grpc
import grpc.aio

from .._xds import messages
from .._xds.encode import to_envoy
from .._xds.resources import ClusterSpec, EndpointsSpec, ListenerSpec, RouteConfigSpec

__all__ = ["XdsRequest", "XdsServer"]

#: the argument names of ``set()`` and the type each one carries
_ARGUMENTS = {"listeners": messages.LISTENER, "routes": messages.ROUTE,
              "clusters": messages.CLUSTER, "endpoints": messages.ENDPOINT}
_FULL_NAMES = {messages.LISTENER: "envoy.config.listener.v3.Listener",
               messages.ROUTE: "envoy.config.route.v3.RouteConfiguration",
               messages.CLUSTER: "envoy.config.cluster.v3.Cluster",
               messages.ENDPOINT: "envoy.config.endpoint.v3.ClusterLoadAssignment"}
_SHORT = {messages.LISTENER: "lds", messages.ROUTE: "rds", messages.CLUSTER: "cds",
          messages.ENDPOINT: "eds"}
_BY_SHORT = {v: k for k, v in _SHORT.items()}
#: the order a change is pushed in (make before break, as Envoy's docs advise)
_PUSH_ORDER = (messages.CLUSTER, messages.ENDPOINT, messages.LISTENER, messages.ROUTE)
#: types whose state-of-the-world responses list every resource subscribed to
_FULL_STATE = (messages.LISTENER, messages.CLUSTER)

Kind = Literal["subscribe", "ack", "nack", "re-request", "stale"]
Resource = ListenerSpec | RouteConfigSpec | ClusterSpec | EndpointsSpec | dict[str, Any] | Any


@dataclass(frozen=True, slots=True)
class XdsRequest:
    """One DiscoveryRequest received, and how the server read it.

    `kind`: `subscribe` (a first request, or one changing the names),
    `ack`, `nack` (`error` holds `error_detail.message`),
    `re-request` (the last response's nonce again: answered again) or
    `stale` (an older nonce: ignored). `type` is `lds`, `rds`, `cds`
    or `eds` (`type_url` in full); `node` is the stream's node id;
    `stream` numbers the streams from 1; `at` is `time.monotonic()`.
    """

    stream: int
    node: str
    type_url: str
    version: str
    nonce: str
    names: tuple[str, ...]
    error: str | None
    kind: Kind
    at: float

    @property
    def type(self) -> str:
        """`lds`, `rds`, `cds`, `eds`, or the type URL for other types."""
        return _SHORT.get(self.type_url, self.type_url)


@dataclass(slots=True)
class _Subscription:
    names: set[str] | None  # None: wildcard
    nonce: str = ""
    version: str = ""
    answered: bool = True  # whether the last response (if any) got its ACK/NACK


@dataclass(slots=True)
class _Stream:
    id: int
    outbox: asyncio.Queue[Any]
    node: str = ""
    node_message: dict[str, Any] | None = None
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Abort:
    code: grpc.StatusCode
    details: str


class XdsServer:
    """An ADS control plane on 127.0.0.1 (`port=0`: a free port), for tests.

    Use it as a context manager (`with` or `async with`), or call
    `start()` and `close()`. `bootstrap` is a gRPC bootstrap
    JSON pointing at it. `tls` (a certificate chain and its private key, PEM)
    makes it serve TLS; pass the CA's file to `bootstrap_for()`.
    """

    def __init__(self, *, port: int = 0, node_id: str = "meshlib-test",
                 tls: tuple[bytes, bytes] | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.node_id = node_id
        #: (certificate chain PEM, private key PEM) to serve TLS with, or None (plain)
        self.tls = tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._resources: dict[str, dict[str, Any]] = {t: {} for t in _ARGUMENTS.values()}
        self._versions: dict[str, str] = {}
        self._counter = itertools.count(1)
        self._nonces = itertools.count(1)
        self._stream_ids = itertools.count(1)
        self._streams: dict[int, _Stream] = {}
        self._acked: dict[tuple[str, str], tuple[str, frozenset[str] | None]] = {}
        self._holding = False
        self._records: list[XdsRequest] = []
        self._nodes: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> XdsServer:
        """Start serving (again, on the same port after `stop()`)."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="meshlib-xds-server",
                                      daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        if self._server is None:
            self._call(self._start_server())
        return self

    def stop(self) -> None:
        """Stop serving (every stream ends, the port is freed); the resources stay."""
        if self._server is not None and self._loop is not None:
            self._call(self._stop_server())

    def close(self) -> None:
        """Stop serving and end the server's thread."""
        self.stop()
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> XdsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> XdsServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)

    def _call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start_server(self) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                          ("grpc.max_send_message_length", -1)])
        handler = grpc.stream_stream_rpc_method_handler(
            self._ads, request_deserializer=messages.DiscoveryRequest.FromString,
            response_serializer=messages.serialize)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            messages.ADS_SERVICE, {"StreamAggregatedResources": handler}),))
        address = f"{self.host}:{self.port}"
        if self.tls is None:
            port = server.add_insecure_port(address)
        else:
            chain, key = self.tls
            port = server.add_secure_port(
                address, grpc.ssl_server_credentials([(key, chain)]))
        if port == 0:
            raise OSError(f"XdsServer: cannot listen on {self.host}:{self.port}")
        self.port = port
        await server.start()
        self._server = server

    async def _stop_server(self) -> None:
        server, self._server = self._server, None
        for stream in list(self._streams.values()):
            stream.outbox.put_nowait(None)
        if server is not None:
            await server.stop(grace=None)

    # -- what tests read ------------------------------------------------------------------

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        """A gRPC bootstrap JSON pointing at this server (insecure), node id `node_id`
        (for a TLS server, use `bootstrap_for()` with the CA's file)."""
        return self.bootstrap_for(self.node_id)

    def bootstrap_for(self, node_id: str, *, cluster: str = "meshlib-test",
                      metadata: dict[str, Any] | None = None,
                      locality: dict[str, str] | None = None,
                      server_features: Sequence[str] = ("xds_v3",),
                      ca_certificate_file: str | None = None) -> str:
        """A gRPC bootstrap JSON pointing at this server, for the node given: `insecure`
        creds, or `tls` verified with `ca_certificate_file` when it is given."""
        node: dict[str, Any] = {"id": node_id, "cluster": cluster}
        if metadata:
            node["metadata"] = metadata
        if locality:
            node["locality"] = locality
        creds: dict[str, Any] = {"type": "insecure"}
        if ca_certificate_file is not None:
            creds = {"type": "tls", "config": {"ca_certificate_file": ca_certificate_file}}
        return json.dumps({"xds_servers": [{"server_uri": self.address,
                                            "channel_creds": [creds],
                                            "server_features": list(server_features)}],
                           "node": node})

    @property
    def streams(self) -> int:
        """How many ADS streams are open."""
        return len(self._streams)

    def versions(self) -> dict[str, str]:
        """The current version of each type set so far (`lds`, `rds`, `cds`, `eds`)."""
        return {_SHORT[t]: v for t, v in self._versions.items()}

    def requests(self, kind: Kind | None = None, *, type: str | None = None,
                 node: str | None = None) -> list[XdsRequest]:
        """Every request received, oldest first; filtered by `kind`, `type` (`lds`...
        or a type URL) and `node` (id) when given."""
        type_url = _BY_SHORT.get(type, type) if type else None
        with self._changed:
            return [r for r in self._records
                    if (kind is None or r.kind == kind)
                    and (type_url is None or r.type_url == type_url)
                    and (node is None or r.node == node)]

    def nodes(self) -> list[dict[str, Any]]:
        """The `node` of each stream's first request, in Envoy's JSON form, oldest first."""
        with self._changed:
            return list(self._nodes)

    def acks(self, *, type: str | None = None, node: str | None = None) -> list[XdsRequest]:
        """The ACKs received (see `requests()`)."""
        return self.requests("ack", type=type, node=node)

    def nacks(self, *, type: str | None = None, node: str | None = None) -> list[XdsRequest]:
        """The NACKs received (see `requests()`); `error` says why."""
        return self.requests("nack", type=type, node=node)

    def wait_for(self, kind: Kind | None = None, *, type: str | None = None,
                 node: str | None = None, version: str | None = None, after: int = 0,
                 timeout: float = 10.0) -> XdsRequest:
        """The first request (from the `after`-th on) matching, waiting up to `timeout`.

        Raises `TimeoutError` naming what was awaited and what arrived.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self._records[after:]:
                    if ((kind is None or record.kind == kind)
                            and (type is None or type in (record.type, record.type_url))
                            and (node is None or record.node == node)
                            and (version is None or record.version == version)):
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(f"{r.kind} {r.type} v{r.version!r}"
                                     for r in self._records[after:][-10:])
                    raise TimeoutError(f"XdsServer: no {kind or 'request'} (type={type}, "
                                       f"version={version}, node={node}) within {timeout} s; "
                                       f"last seen: {seen or 'nothing'}")
                self._changed.wait(left)

    def mark(self) -> int:
        """How many requests were received so far: pass it as `after` to `wait_for()`."""
        with self._changed:
            return len(self._records)

    # -- what tests change ----------------------------------------------------------------

    def set(self, *, listeners: Iterable[Resource] | None = None,
            routes: Iterable[Resource] | None = None,
            clusters: Iterable[Resource] | None = None,
            endpoints: Iterable[Resource] | None = None) -> dict[str, str]:
        """Replace the resources of each type given, as a new version pushed to every
        stream subscribed to that type. Returns the versions (`{"cds": "3", ...}`).

        Each resource is a resource dataclass, a dict in Envoy's JSON form, or a
        message of meshlib's pool. Raises `ValueError` for one that does not
        convert (the server is unchanged).
        """
        given = {"listeners": listeners, "routes": routes, "clusters": clusters,
                 "endpoints": endpoints}
        converted = {_ARGUMENTS[arg]: _convert_all(_ARGUMENTS[arg], items)
                     for arg, items in given.items() if items is not None}
        if not converted:
            raise ValueError("XdsServer.set: give listeners, routes, clusters or endpoints")
        version = str(next(self._counter))
        if self._loop is None:  # not started: nobody to push to
            self._store(converted, version)
        else:
            self._call(self._apply(converted, version))
        return {_SHORT[t]: version for t in converted}

    def send_raw(self, type_url: str, resources: Sequence[bytes | tuple[str, bytes] | Any], *,
                 version: str | None = None) -> None:
        """Send a response of `type_url` holding `resources` to every open stream.

        Each resource is bytes (sent as an `Any` of `type_url`: garbage is
        welcome), a `(type_url, bytes)` pair, or an `Any`/resource message of
        meshlib's pool. It bypasses `set()` (nothing is stored); `type_url`
        may be a short name (`cds`).
        """
        type_url = _BY_SHORT.get(type_url, type_url)
        anys = []
        for item in resources:
            if isinstance(item, bytes):
                anys.append(messages.AnyMessage(type_url=type_url, value=item))
            elif isinstance(item, tuple):
                anys.append(messages.AnyMessage(type_url=item[0], value=item[1]))
            elif item.DESCRIPTOR.full_name == "google.protobuf.Any":
                anys.append(item)
            else:
                anys.append(messages.AnyMessage(
                    type_url=messages.type_url(item.DESCRIPTOR.full_name),
                    value=item.SerializeToString()))
        self._call(self._raw(type_url, anys, version or f"raw-{next(self._counter)}"))

    def hold(self, holding: bool = True) -> None:
        """While holding, send nothing (requests are still read and recorded); on release
        every stream gets the current state of what it subscribes to."""
        self._call(self._hold(holding))

    def drop_streams(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                     details: str = "XdsServer dropped the stream") -> None:
        """End every open stream with `code` (the server keeps listening)."""
        self._call(self._drop(code, details))

    # -- the server's loop ----------------------------------------------------------------

    def _store(self, converted: dict[str, dict[str, Any]], version: str) -> None:
        for type_url, resources in converted.items():
            self._resources[type_url] = resources
            self._versions[type_url] = version

    async def _apply(self, converted: dict[str, dict[str, Any]], version: str) -> None:
        self._store(converted, version)
        for type_url in _PUSH_ORDER:
            if type_url in converted:
                for stream in list(self._streams.values()):
                    if type_url in stream.subscriptions:
                        self._respond(stream, type_url)

    async def _raw(self, type_url: str, anys: list[Any], version: str) -> None:
        for stream in list(self._streams.values()):
            nonce = str(next(self._nonces))
            subscription = stream.subscriptions.get(type_url)
            if subscription is not None:
                subscription.nonce, subscription.version = nonce, version
                subscription.answered = False
            stream.outbox.put_nowait(messages.DiscoveryResponse(
                version_info=version, type_url=type_url, nonce=nonce, resources=anys))

    async def _hold(self, holding: bool) -> None:
        self._holding = holding
        if not holding:
            for stream in list(self._streams.values()):
                for type_url in _PUSH_ORDER:
                    if type_url in stream.subscriptions:
                        self._respond(stream, type_url)

    async def _drop(self, code: grpc.StatusCode, details: str) -> None:
        for stream in list(self._streams.values()):
            stream.outbox.put_nowait(_Abort(code, details))

    async def _ads(self, requests: Any, context: Any) -> Any:
        stream = _Stream(next(self._stream_ids), asyncio.Queue())
        self._streams[stream.id] = stream
        reader = asyncio.create_task(self._read(stream, requests))
        try:
            while True:
                item = await stream.outbox.get()
                if item is None:
                    return
                if isinstance(item, _Abort):
                    await context.abort(item.code, item.details)
                yield item
        finally:
            self._streams.pop(stream.id, None)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, stream: _Stream, requests: Any) -> None:
        try:
            async for request in requests:
                self._on_request(stream, request)
        except asyncio.CancelledError:
            raise
        except Exception:  # the client went away mid-read
            pass
        stream.outbox.put_nowait(None)

    def _on_request(self, stream: _Stream, request: Any) -> None:
        if request.HasField("node"):
            stream.node = request.node.id or stream.node
            if stream.node_message is None:
                stream.node_message = messages.to_dict(request.node)
                with self._changed:
                    self._nodes.append(stream.node_message)
        type_url = request.type_url
        names = tuple(request.resource_names)
        error = request.error_detail.message if request.HasField("error_detail") else None
        subscription = stream.subscriptions.get(type_url)
        send = False
        kind: Kind
        if subscription is None:
            kind = "subscribe"
            wildcard = "*" in names or (not names and type_url in _FULL_STATE)
            subscription = _Subscription(None if wildcard else set(names))
            stream.subscriptions[type_url] = subscription
            send = not self._client_has(stream.node, type_url, request.version_info,
                                        subscription.names)
        elif request.response_nonce and request.response_nonce != subscription.nonce:
            kind = "stale"
        else:
            wanted = self._names(subscription, names)
            changed = wanted != subscription.names
            subscription.names = wanted
            if not request.response_nonce:
                kind, send = "subscribe", True
            elif not subscription.answered:
                subscription.answered = True
                nack = error is not None or request.version_info != subscription.version
                kind = "nack" if nack else "ack"
                if not nack:
                    self._acked[(stream.node, type_url)] = (
                        request.version_info,
                        None if wanted is None else frozenset(wanted))
                send = changed
            else:
                kind, send = ("subscribe" if changed else "re-request"), True
        with self._changed:
            self._records.append(XdsRequest(
                stream.id, stream.node, type_url, request.version_info, request.response_nonce,
                names, error, kind, time.monotonic()))
            self._changed.notify_all()
        if send:
            self._respond(stream, type_url)

    @staticmethod
    def _names(subscription: _Subscription,
               names: tuple[str, ...]) -> builtins.set[str] | None:
        if "*" in names:
            return None
        if not names and subscription.names is None:
            return None  # a wildcard subscriber's ACKs name nothing
        return set(names)

    def _client_has(self, node: str, type_url: str, version: str,
                    names: builtins.set[str] | None) -> bool:
        """Whether a reconnecting client already holds this type at the current version."""
        if not version or self._versions.get(type_url) != version:
            return False
        acked = self._acked.get((node, type_url))
        if acked is None or acked[0] != version:
            return False
        if acked[1] is None or names is None:
            return acked[1] is None and names is None
        return names <= acked[1]

    def _respond(self, stream: _Stream, type_url: str) -> None:
        if self._holding or type_url not in self._versions:
            return
        subscription = stream.subscriptions[type_url]
        held = self._resources[type_url]
        if subscription.names is None:
            chosen = list(held.values())
        else:
            chosen = [held[name] for name in sorted(subscription.names) if name in held]
            if not chosen and type_url not in _FULL_STATE:
                return  # nothing to say: absence is not a deletion for this type
        nonce = str(next(self._nonces))
        version = self._versions[type_url]
        subscription.nonce, subscription.version, subscription.answered = nonce, version, False
        stream.outbox.put_nowait(messages.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce, resources=chosen))


def _convert_all(type_url: str, items: Iterable[Resource]) -> dict[str, Any]:
    """name -> `Any` of each resource, in order; `ValueError` naming a bad one."""
    if isinstance(items, (dict, str, bytes)):
        raise ValueError("XdsServer.set: give a list of resources for each type")
    converted: dict[str, Any] = {}
    for index, item in enumerate(items):
        message = _convert(type_url, item, index)
        name = message.cluster_name if type_url == messages.ENDPOINT else message.name
        if name in converted:
            raise ValueError(f"XdsServer.set: two {_SHORT[type_url]} resources named {name!r}")
        packed = messages.AnyMessage()
        packed.Pack(message)
        converted[name] = packed
    return converted


def _convert(type_url: str, item: Resource, index: int) -> Any:
    full_name = _FULL_NAMES[type_url]
    what = f"XdsServer.set: {_SHORT[type_url]} resource #{index}"
    if isinstance(item, (ListenerSpec, RouteConfigSpec, ClusterSpec, EndpointsSpec)):
        spec_type, body = to_envoy(item)
        if spec_type != type_url:
            raise ValueError(f"{what} is a {type(item).__name__}, not a {full_name}")
        item = body
    if isinstance(item, dict):
        body = dict(item)
        declared = body.pop("@type", None)
        if declared not in (None, type_url):
            raise ValueError(f"{what} has @type {declared!r}, not {type_url!r}")
        try:
            return messages.from_dict(body, full_name)
        except Exception as exc:
            raise ValueError(f"{what} does not convert to {full_name}: {exc}") from None
    descriptor = getattr(item, "DESCRIPTOR", None)
    if descriptor is None or descriptor.full_name != full_name:
        raise ValueError(f"{what} is a {type(item).__name__}, not a resource dataclass, a dict "
                         f"or a {full_name} message")
    if descriptor.file.pool is not messages.POOL:
        return messages.message_class(full_name).FromString(item.SerializeToString())
    return item
