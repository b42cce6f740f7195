"""``MeshClient`` and ``AsyncMeshClient``: httpx clients whose transport is the mesh."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from typing import Any

import httpx

from ._async_transport import AsyncMeshTransport
from ._mesh import ServicesArg
from ._policy import Policy
from ._transport import MeshTransport

__all__ = ["AsyncMeshClient", "MeshClient"]

#: httpx.Client arguments that configure its default transport
_TRANSPORT_ARGS = ("verify", "cert", "trust_env", "http1", "http2", "limits")


def _transport_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in _TRANSPORT_ARGS if k in kwargs}


def _service_mounts(names: Any, transport: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Mounts that keep service hosts away from proxies (a proxy must never capture them).

    Only needed when a proxy or other mounts are in play: httpx matches every
    mount pattern on every request, so none are added otherwise.
    """
    mounts = dict(kwargs.pop("mounts", None) or {})
    proxied = kwargs.get("proxy") is not None or (
        kwargs.get("trust_env", True) and urllib.request.getproxies()
    )
    if mounts or proxied:
        mounts.update({f"all://{name}": transport for name in names})
    return mounts


class MeshClient(httpx.Client):
    """An ``httpx.Client`` that sends requests for mesh services through the mesh.

    ``services`` maps service names to discovery URLs or :class:`meshlib.Service`
    (``None`` reads ``MESHLIB_SERVICES``); ``policy`` is the client's default
    :class:`meshlib.Policy` (``None`` reads ``MESHLIB_*``). Every other keyword
    is passed to ``httpx.Client``; a ``transport=`` of your own carries the
    requests to hosts that are not services. Raises ``ConfigError`` on bad
    configuration.

    .. versionadded:: 0.1
    """

    def __init__(self, *, services: ServicesArg = None, policy: Policy | None = None,
                 environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        user_transport = kwargs.pop("transport", None)
        self.mesh_transport = MeshTransport(services=services, policy=policy, environ=environ,
                                            passthrough=user_transport,
                                            **_transport_kwargs(kwargs))
        mounts = _service_mounts(self.mesh_transport.mesh.runtimes, self.mesh_transport, kwargs)
        try:
            super().__init__(transport=self.mesh_transport, mounts=mounts, **kwargs)
        except BaseException:
            self.mesh_transport.close()
            raise

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service: endpoints, EWMA, breakers, budget."""
        return self.mesh_transport.snapshot()


class AsyncMeshClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that sends requests for mesh services through the mesh.

    Same arguments as :class:`MeshClient`.

    .. versionadded:: 0.1
    """

    def __init__(self, *, services: ServicesArg = None, policy: Policy | None = None,
                 environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        user_transport = kwargs.pop("transport", None)
        self.mesh_transport = AsyncMeshTransport(services=services, policy=policy,
                                                 environ=environ, passthrough=user_transport,
                                                 **_transport_kwargs(kwargs))
        mounts = _service_mounts(self.mesh_transport.mesh.runtimes, self.mesh_transport, kwargs)
        super().__init__(transport=self.mesh_transport, mounts=mounts, **kwargs)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service: endpoints, EWMA, breakers, budget."""
        return self.mesh_transport.snapshot()


for _cls in (MeshClient, AsyncMeshClient):
    _cls.__module__ = "meshlib"
