"""`MeshClient` and `AsyncMeshClient`: httpx clients whose transport is the mesh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ._async.transport import AsyncMeshTransport
from ._mesh import ServicesArg
from ._policy import Policy
from ._registry import register_client
from ._routes import RoutesArg
from ._sync.transport import MeshTransport

__all__ = ["AsyncMeshClient", "MeshClient"]

#: httpx.Client arguments that configure its default transport
_TRANSPORT_ARGS = ("verify", "cert", "trust_env", "http1", "http2", "limits")


def _transport_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in _TRANSPORT_ARGS if k in kwargs}


def _granted_timeouts(timeout: httpx.Timeout) -> dict[str, float | None]:
    """The client's own httpx timeouts: what an attempt is granted unless the caller
    passes a shorter `timeout=` (a caller's limit never counts against an endpoint)."""
    return timeout.as_dict()


def _with_service_mounts(kwargs: dict[str, Any], names: Any, transport: Any) -> dict[str, Any]:
    """`mounts` that send each service host to the mesh transport.

    Everything else is left to httpx exactly as a plain client would do it (its
    default transport, proxies from the environment, the caller's own
    `transport=` and `mounts=`); a mount names one host, so it is matched
    before any proxy pattern and a proxy never captures a service.
    """
    mounts = dict(kwargs.pop("mounts", None) or {})
    mounts.update({f"all://{name}": transport for name in names})
    return mounts


class MeshClient(httpx.Client):
    """An `httpx.Client` that sends requests for mesh services through the mesh.

    `services` maps service names to discovery URLs or `meshlib.Service`
    (`None` reads `MESHLIB_SERVICES`); `policy` is the client's default
    `meshlib.Policy` (each field it does not give comes from `MESHLIB_*`,
    then the defaults); `routes` maps host names to lists of
    `meshlib.Route` (`None` reads the `MESHLIB_ROUTES` file, if set). Every other keyword
    is passed to `httpx.Client`: hosts that are not services are handled by
    httpx exactly as a plain client handles them (its transport, your
    `transport=` and `mounts=`, proxies from the environment). Raises `ConfigError` on bad
    configuration.

    Added in version 0.1.
    """

    def __init__(self, *, services: ServicesArg = None, policy: Policy | None = None,
                 routes: RoutesArg = None, environ: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        self.mesh_transport = MeshTransport(services=services, policy=policy, routes=routes,
                                            environ=environ, **_transport_kwargs(kwargs))
        mounts = _with_service_mounts(kwargs, self.mesh_transport.mesh.hosts,
                                      self.mesh_transport)
        try:
            super().__init__(mounts=mounts, **kwargs)
        except BaseException:
            self.mesh_transport.close()
            raise
        self.mesh_transport.mesh.client_timeouts = _granted_timeouts(self.timeout)
        register_client(self)  # seen by snapshot endpoints given no clients

    def _transport_for_url(self, url: httpx.URL) -> httpx.BaseTransport:
        transport = super()._transport_for_url(url)  # mounts (and respx's patch) first
        # hosts a routes file adds after the client was built have no mount
        if transport is self._transport and self.mesh_transport.mesh.handles(url.host):
            return self.mesh_transport
        return transport

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service: endpoints, EWMA, breakers, budget.

        Shape: ``{"services": {NAME: {"discovery", "ready", "balancer",
        "endpoints": [{"endpoint", "ewma_ms", "latency_ms", "inflight",
        "breaker", "requests", "failures", "weight", "zone", "priority"}],
        "retry_budget": {"balance"}}}}``.

        `ewma_ms` is the balancer's score, not a measured latency: a failure
        counts as a sample of at least 1000 ms, so an endpoint that fails fast
        reads about 1000 ms (a penalty that steers traffic away from it), then
        decays over about 10 s. `latency_ms` is the estimate from successful
        answers only (`None` before the first one).
        """
        return self.mesh_transport.snapshot()


class AsyncMeshClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` that sends requests for mesh services through the mesh.

    Same arguments as `MeshClient`, plus `pool`: what carries the endpoints'
    connections, `"httpcore"` (default) or `"aiohttp"` (faster; HTTP/1.1 only;
    `pip install "httpx-mesh[aiohttp]"`); `None` reads `MESHLIB_POOL`.

    Added in version 0.1.
    """

    def __init__(self, *, services: ServicesArg = None, policy: Policy | None = None,
                 routes: RoutesArg = None, environ: Mapping[str, str] | None = None,
                 pool: str | None = None, **kwargs: Any) -> None:
        self.mesh_transport = AsyncMeshTransport(services=services, policy=policy,
                                                 routes=routes, environ=environ, pool=pool,
                                                 **_transport_kwargs(kwargs))
        mounts = _with_service_mounts(kwargs, self.mesh_transport.mesh.hosts,
                                      self.mesh_transport)
        super().__init__(mounts=mounts, **kwargs)
        self.mesh_transport.mesh.client_timeouts = _granted_timeouts(self.timeout)
        register_client(self)  # seen by snapshot endpoints given no clients

    def _transport_for_url(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        transport = super()._transport_for_url(url)  # mounts (and respx's patch) first
        # hosts a routes file adds after the client was built have no mount
        if transport is self._transport and self.mesh_transport.mesh.handles(url.host):
            return self.mesh_transport
        return transport

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service: endpoints, EWMA, breakers, budget.

        Shape: ``{"services": {NAME: {"discovery", "ready", "balancer",
        "endpoints": [{"endpoint", "ewma_ms", "latency_ms", "inflight",
        "breaker", "requests", "failures", "weight", "zone", "priority"}],
        "retry_budget": {"balance"}}}}``.

        `ewma_ms` is the balancer's score, not a measured latency: a failure
        counts as a sample of at least 1000 ms, so an endpoint that fails fast
        reads about 1000 ms (a penalty that steers traffic away from it), then
        decays over about 10 s. `latency_ms` is the estimate from successful
        answers only (`None` before the first one).
        """
        return self.mesh_transport.snapshot()
