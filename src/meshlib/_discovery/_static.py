"""`static://host:port,host:port`: a fixed list of endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .._config import parse_host_port
from .._endpoint import Endpoint
from .._errors import ConfigError
from ._base import Discovery, DiscoveryOptions, Update

__all__ = ["StaticDiscovery"]


class StaticDiscovery(Discovery):
    """A fixed list: `static://127.0.0.1:8001,[::1]:8002`."""

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        super().__init__(url, options)
        body = url.partition("://")[2].strip().rstrip("/")
        if not body:
            raise ConfigError(f"discovery URL {url!r} lists no endpoints")
        endpoints: list[Endpoint] = []
        for item in body.split(","):
            host, port = parse_host_port(item, what=f"discovery URL {url!r}")
            endpoints.append(Endpoint(host, port))
        self.endpoints = tuple(dict.fromkeys(endpoints))

    def initial(self) -> tuple[Endpoint, ...]:
        """The list, known at once."""
        return self.endpoints

    async def updates(self) -> AsyncIterator[Update]:
        """Yield the list once, then wait to be cancelled."""
        yield self.endpoints
        await asyncio.Event().wait()
