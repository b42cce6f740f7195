"""Which connection pool carries an AsyncMeshClient's endpoint connections.

`pool="httpcore"` (the default) or `pool="aiohttp"` (extra
`httpx-mesh[aiohttp]`), from the `pool=` argument or else `MESHLIB_POOL`.
aiohttp is imported only when it is chosen. The sync transport always uses
httpcore: `MESHLIB_POOL` does not concern it, and `pool="aiohttp"` is a
`ConfigError` there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ._config import POOLS
from ._errors import ConfigError
from ._pool import PoolSettings

__all__ = ["POOLS", "PoolFactory", "choose_pool"]

#: builds one endpoint's pool: ``factory(host, port, settings)``
PoolFactory = Callable[[str, int, PoolSettings], Any]


def choose_pool(httpcore_pool: PoolFactory, pool: str | None, env_pool: str,
                settings: PoolSettings) -> PoolFactory:
    """The endpoint pool class for `pool` (`None`: `env_pool`, from `MESHLIB_POOL`).

    `httpcore_pool` is the transport's own httpcore pool class (async or sync).
    Raises `ConfigError` naming the value for an unknown pool, an option the
    pool cannot honour (aiohttp is HTTP/1.1 only), aiohttp asked of the sync
    transport, or aiohttp not installed.
    """
    what = f"pool={pool!r}" if pool is not None else f"MESHLIB_POOL={env_pool!r}"
    name = env_pool if pool is None else pool
    if name not in POOLS:
        raise ConfigError(f"{what} must be one of {', '.join(POOLS)}")
    if name == "httpcore":
        return httpcore_pool
    if not inspect.iscoroutinefunction(getattr(httpcore_pool, "send", None)):
        if pool is None:  # MESHLIB_POOL is about AsyncMeshClient only
            return httpcore_pool
        raise ConfigError(f"{what} carries AsyncMeshClient's connections only; the sync "
                          "MeshClient and MeshTransport use httpcore")
    if settings.http2 or not settings.http1:
        raise ConfigError(f"{what} speaks HTTP/1.1 only: http2=True (or http1=False) needs "
                          "pool='httpcore'")
    if settings.socket_options:
        raise ConfigError(f"{what} does not take socket_options; use pool='httpcore'")
    try:
        from ._aiohttp_pool import AiohttpEndpointPool
    except ImportError as exc:
        raise ConfigError(f"{what} needs aiohttp, which is not installed ({exc}): "
                          "pip install 'httpx-mesh[aiohttp]'") from None
    return AiohttpEndpointPool
