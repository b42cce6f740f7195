"""`XdsClient`: one listener's configuration from an xDS control plane, over ADS.

A thin grpcio.aio driver around the sans-I/O `AdsProtocol`:
it opens the bidirectional `StreamAggregatedResources` stream to the
bootstrap's first server, writes the requests the protocol decides, hands it
the responses, fires its timers, and reconnects with `Backoff`
when the stream fails. Consumers read `XdsClient.snapshot()` (or are
called back by `XdsClient.on_update()`) and only ever see a complete,
consistent `XdsConfig`.

Bounds:

- a response larger than `max_response_bytes` (16 MiB by default, grpcio's
  `max_receive_message_length`) is refused by grpcio before it is decoded:
  the stream fails with `RESOURCE_EXHAUSTED`, the client keeps its last good
  configuration and reconnects with backoff (a NACK is impossible: the
  response's nonce was never read). `status()["last_error"]` says so.
- a control plane that never answers: `XdsClient.wait_ready()` (and
  `XdsClient.wait_ready_async()`) raise `XdsNotReady` after their
  timeout, saying what is missing; resources never sent are reported as not
  existing after `resource_timeout`.

Needs the `xds` extra (grpcio, protobuf): this is the only module of
meshlib that imports grpcio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.aio
from google.protobuf import json_format

from .._errors import NoEndpointsError
from . import messages
from .backoff import Backoff
from .bootstrap import Bootstrap, listener_resource_name, load_bootstrap, parse_xds_url
from .protocol import RESOURCE_TIMEOUT, AdsProtocol, Request
from .resources import XdsConfig

__all__ = ["CLIENT_FEATURES", "MAX_RESPONSE_BYTES", "XdsClient", "XdsNotReady"]

logger = logging.getLogger("meshlib.xds")

#: the largest response accepted (grpcio's max_receive_message_length)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

#: what the node says this client does (as gRPC's client says it): it applies no
#: overprovisioning factor, and accepts resources wrapped in ``Resource`` in SotW
CLIENT_FEATURES = ("envoy.lb.does_not_support_overprovisioning", "xds.config.resource-in-sotw")

#: the longest NACK message sent (error_detail.message)
_MAX_ERROR_CHARS = 16_384

_END = object()


class XdsNotReady(NoEndpointsError):
    """No configuration from the control plane yet (within the time allowed).

    A `NoEndpointsError`, so that a request that waited for
    the first configuration fails the way a request to a service without
    endpoints does. The message names the listener, the control plane, the
    stream's state and what is still missing.
    """


class XdsClient:
    """Follows `listener_name` on the control plane of `bootstrap`.

    `clock` (seconds, monotonic) drives the does-not-exist timers
    (`resource_timeout`, 15 s as in gRPC) and the reconnect `backoff`.
    Run `run()` on an event loop (a task of the async client, or the
    discovery thread's loop of the sync client); every other method may be
    called from any thread.
    """

    def __init__(self, bootstrap: Bootstrap, listener_name: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 resource_timeout: float = RESOURCE_TIMEOUT,
                 backoff: Backoff | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.bootstrap = bootstrap
        self.server = bootstrap.server
        self.listener_name = listener_name
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.max_response_bytes = max_response_bytes
        self._protocol = AdsProtocol(
            listener_name, clock=clock, resource_timeout=resource_timeout,
            ignore_resource_deletion=self.server.ignore_resource_deletion)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._callbacks: list[Callable[[XdsConfig], None]] = []
        self._node = _node_message(bootstrap)
        self._stream_open = False
        self._connected = False
        self._responses = 0  # on the current stream
        self._last_error: str | None = None
        self._streams = 0

    @classmethod
    def for_url(cls, url: str, *, environ: Mapping[str, str] | None = None,
                **kwargs: Any) -> XdsClient:
        """A client for `xds:///TARGET` with the bootstrap the environment names.

        Raises `ConfigError` for a bad URL or bootstrap.
        """
        authority, target = parse_xds_url(url)
        bootstrap = load_bootstrap(environ)
        return cls(bootstrap, listener_resource_name(bootstrap, target, authority), **kwargs)

    # -- what consumers use ---------------------------------------------------------------

    def snapshot(self) -> XdsConfig | None:
        """The last complete, consistent configuration, or `None` before the first."""
        return self._protocol.config

    def on_update(self, callback: Callable[[XdsConfig], None]) -> Callable[[], None]:
        """Call `callback(config)` with each new configuration (on `run()`'s loop).

        Returns a function that removes the callback. A callback that raises is
        logged; it does not stop the client.
        """
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return remove

    def wait_ready(self, timeout: float) -> XdsConfig:
        """The configuration, waiting up to `timeout` seconds for the first one.

        Call it from another thread than the one running `run()`. Raises
        `XdsNotReady` when there is none in time.
        """
        if not self._ready.wait(timeout):
            raise XdsNotReady(self._not_ready(timeout))
        config = self.snapshot()
        assert config is not None
        return config

    async def wait_ready_async(self, timeout: float) -> XdsConfig:
        """The configuration, waiting up to `timeout` seconds for the first one.

        Works on any event loop. Raises `XdsNotReady` when there is none in time.
        """
        config = self.snapshot()
        if config is not None:
            return config
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiters.append((loop, future))
        try:
            if self.snapshot() is None:
                await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise XdsNotReady(self._not_ready(timeout)) from None
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, future))
        config = self.snapshot()
        assert config is not None
        return config

    def status(self) -> dict[str, Any]:
        """The client's state, JSON-serialisable.

        `server_uri`; `connected` (the stream is open over a ready connection);
        `stream_open`; `streams` (opened so far); `last_error` (why the
        last stream ended, `None` if none did); `ready` (a configuration is
        held); `listener`; per type (`lds`, `rds`, `cds`, `eds`):
        `version`, `nonce`, `subscribed` and `held` names;
        `does_not_exist` names per type; `last_nack` (`type`, `resource`,
        `error`, `at` on the client's clock and `ago` in seconds) or
        `None`; `waiting_for`: what the newest configuration still lacks.
        """
        with self._lock:
            state = self._protocol.status()
        if state["last_nack"] is not None:
            state["last_nack"]["ago"] = max(0.0, self.clock() - state["last_nack"]["at"])
        return {"server_uri": self.server.server_uri, "connected": self._connected,
                "stream_open": self._stream_open, "streams": self._streams,
                "last_error": self._last_error, "ready": self.snapshot() is not None, **state}

    # -- the driver -----------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the control plane until cancelled, reconnecting with backoff."""
        while True:
            try:
                await self._stream()
                reason = "the control plane ended the stream"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                reason = self._describe(exc)
            except Exception as exc:  # a bug or an unexpected grpc state: keep going
                logger.exception("xds: the stream to %s failed", self.server.server_uri)
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                with self._lock:
                    self._protocol.end_stream()
                self._stream_open = self._connected = False
            if self._last_error != reason:
                logger.warning("xds: stream to %s ended: %s; keeping the last configuration "
                               "and reconnecting", self.server.server_uri, reason)
            self._last_error = reason
            await asyncio.sleep(self.backoff.failed(self.clock()))

    def _describe(self, exc: grpc.aio.AioRpcError) -> str:
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            return (f"the control plane sent a response larger than the "
                    f"{self.max_response_bytes:,}-byte limit; it was refused "
                    f"(RESOURCE_EXHAUSTED: {details})")
        return f"{code.name}: {details}" if details else code.name

    def _channel(self) -> grpc.aio.Channel:
        from .. import __version__

        options = [
            ("grpc.max_receive_message_length", self.max_response_bytes),
            ("grpc.primary_user_agent", f"meshlib/{__version__}"),
            ("grpc.keepalive_time_ms", 300_000),
            ("grpc.enable_retries", 0),
        ]
        server = self.server
        if server.creds == "insecure":
            return grpc.aio.insecure_channel(server.server_uri, options=options)

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as file:
                return file.read()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(server.ca_certificate_file),
            private_key=read(server.private_key_file),
            certificate_chain=read(server.certificate_file))
        return grpc.aio.secure_channel(server.server_uri, credentials, options=options)

    async def _stream(self) -> None:
        channel = self._channel()
        call: Any = None
        reader: asyncio.Task[None] | None = None
        ready: asyncio.Task[None] | None = None
        try:
            method = channel.stream_stream(
                messages.ADS_METHOD, request_serializer=messages.serialize,
                response_deserializer=messages.DiscoveryResponse.FromString)
            call = method()
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
            with self._lock:
                first = self._protocol.start_stream()
            self._streams += 1
            self._responses = 0
            await self._send(call, first, with_node=True)
            self._stream_open = True
            ready = asyncio.create_task(self._mark_connected(channel))
            reader = asyncio.create_task(_read(call, queue))
            while True:
                deadline = self._protocol.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    with self._lock:
                        changed = self._protocol.poll()
                    self._published(changed)
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                with self._lock:
                    requests, changed = self._protocol.receive(item)
                self._responses += 1
                self.backoff.succeeded()
                await self._send(call, requests)
                self._published(changed)
        finally:
            for task in (reader, ready):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if call is not None:
                call.cancel()
            await channel.close()

    async def _mark_connected(self, channel: grpc.aio.Channel) -> None:
        """`connected` once the channel to the control plane is up (a resumed stream may
        get no response at all when nothing changed)."""
        await channel.channel_ready()
        self._connected = True

    async def _send(self, call: Any, requests: list[Request], *, with_node: bool = False) -> None:
        for index, request in enumerate(requests):
            message = messages.DiscoveryRequest(
                version_info=request.version_info, response_nonce=request.response_nonce,
                type_url=request.type_url, resource_names=list(request.resource_names))
            if with_node and index == 0:
                message.node.CopyFrom(self._node)
            if request.error is not None:
                message.error_detail.code = 3  # INVALID_ARGUMENT
                message.error_detail.message = request.error[:_MAX_ERROR_CHARS]
            await call.write(message)

    def _published(self, changed: bool) -> None:
        if not changed:
            return
        config = self._protocol.config
        assert config is not None
        self._ready.set()
        with self._lock:
            waiters = list(self._waiters)
            callbacks = list(self._callbacks)
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_resolve, future)
        for callback in callbacks:
            try:
                callback(config)
            except Exception:
                logger.exception("xds: an on_update callback failed")

    def _not_ready(self, timeout: float) -> str:
        status = self.status()
        if status["stream_open"] and not self._responses:
            state = ("connected" if status["connected"] else "connecting") + ", no response yet"
        elif status["connected"]:
            state = "connected"
        else:
            state = f"not connected: {status['last_error'] or 'connecting'}"
        lacking = "; ".join(status["waiting_for"]) or "a complete configuration"
        nack = status["last_nack"]
        rejected = f"; last NACK: {nack['error']}" if nack else ""
        return (f"xds listener {self.listener_name!r}: no configuration from the control "
                f"plane yet after {timeout:g} s ({self.server.server_uri}, {state}; "
                f"waiting for {lacking}{rejected})")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _read(call: Any, queue: asyncio.Queue[Any]) -> None:
    """Move responses from the stream into `queue`; then `_END` or the error."""
    try:
        async for response in call:
            await queue.put(response)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await queue.put(exc)
        return
    await queue.put(_END)


def _node_message(bootstrap: Bootstrap) -> Any:
    """The `core.v3.Node` of the bootstrap, plus meshlib's user agent and features."""
    from .. import __version__

    node = messages.message_class("envoy.config.core.v3.Node")()
    node.id = bootstrap.node.id
    node.cluster = bootstrap.node.cluster
    if bootstrap.node.metadata:
        json_format.ParseDict(dict(bootstrap.node.metadata), node.metadata,
                              descriptor_pool=messages.POOL)
    for key, value in bootstrap.node.locality.items():
        setattr(node.locality, key, value)
    node.user_agent_name = "meshlib"
    node.user_agent_version = __version__
    node.client_features.extend(CLIENT_FEATURES)
    return node
