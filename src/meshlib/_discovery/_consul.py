"""`consul://HOST:PORT/SERVICE`: Consul's health API, passing instances, blocking queries.

Each refresh is `GET /v1/health/service/SERVICE?passing=true&index=N&wait=30s`
(a blocking query, as Consul documents it): the answer comes back when the
service's instances change, or after about `wait`. `N` is the last
`X-Consul-Index`; it is reset to 0 when it goes backwards (a Consul restart
or a snapshot restore) or is not above 0, and after any error, and requests
are spaced by at least `ConsulDiscovery.MIN_INTERVAL` so a misbehaving
server cannot cause a busy loop.

Each instance is read from Consul's documented JSON shape
``[{"Node": {"Address", ...}, "Service": {"Address", "Port", "Weights":
{"Passing", ...}, "Meta": {...}}, "Checks": [...]}]``: the address is
`Service.Address`, or `Node.Address` when that is empty; the weight is
`Service.Weights.Passing` (default 1); the zone is `Service.Meta.zone`. A
malformed instance is skipped with a warning; an answer that is not a JSON
list, or an HTTP error, yields a `DiscoveryFailure` and is retried
with a doubling, capped backoff.

The URL may add `?dc=DATACENTER` and `?tag=TAG`, passed on to Consul.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx

from .._endpoint import Endpoint, parse_host_port
from .._errors import ConfigError
from ._base import Discovery, DiscoveryFailure, DiscoveryOptions, Update
from ._entries import EntryError, parse_entry
from ._http import fetch, json_value

__all__ = ["DEFAULT_PORT", "ConsulDiscovery", "parse_instances"]

logger = logging.getLogger("meshlib.discovery")

#: Consul's HTTP port when the URL gives none
DEFAULT_PORT = 8500

_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PASSED_ON = ("dc", "tag")


class _Broken(Exception):
    """A refresh that cannot produce an endpoint set; the message says why."""


def _parse_url(url: str) -> tuple[str, int, str, list[tuple[str, str]]]:
    """`(host, port, service, extra query)` of `consul://HOST:PORT/SERVICE`."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "consul":
        raise ConfigError(f"discovery URL {url!r} is not a consul:// URL")
    if not parts.netloc or "@" in parts.netloc or parts.fragment:
        raise ConfigError(f"discovery URL {url!r}: expected consul://HOST:PORT/SERVICE")
    host, port = parse_host_port(parts.netloc, what=f"discovery URL {url!r}",
                                 default_port=DEFAULT_PORT)
    service = unquote(parts.path).strip("/")
    if not _SERVICE_NAME.match(service):
        raise ConfigError(
            f"discovery URL {url!r} names no valid service (e.g. consul://127.0.0.1:8500/users)"
        )
    extra = parse_qsl(parts.query, keep_blank_values=True)
    for key, value in extra:
        if key not in _PASSED_ON:  # its value is not shown: it may be a token
            raise ConfigError(f"discovery URL {url!r}: unsupported parameter {key!r} "
                              f"(only {', '.join(_PASSED_ON)})")
        if not value:
            raise ConfigError(f"discovery URL {url!r}: parameter {key!r} is empty")
    return host, port, service, extra


def _instance(entry: Any) -> Endpoint | None:
    """One passing instance's endpoint, `None` if a check is not passing."""
    if not isinstance(entry, dict):
        raise EntryError(f"an instance must be a JSON object, not {type(entry).__name__}")
    node, service = entry.get("Node") or {}, entry.get("Service")
    if not isinstance(service, dict) or not isinstance(node, dict):
        raise EntryError("an instance needs 'Node' and 'Service' objects")
    checks = entry.get("Checks") or []
    if any(isinstance(c, dict) and c.get("Status", "passing") != "passing" for c in checks):
        return None
    weights = service.get("Weights") or {}
    meta = service.get("Meta") or {}
    fields: dict[str, Any] = {
        "host": service.get("Address") or node.get("Address"),
        "port": service.get("Port"),
        "weight": weights.get("Passing", 1) if isinstance(weights, dict) else weights,
    }
    zone = meta.get("zone") if isinstance(meta, dict) else None
    if zone:
        fields["zone"] = zone
    return parse_entry(fields)


def parse_instances(data: Any, *, url: str = "consul") -> tuple[Endpoint, ...]:
    """The endpoints of a health-API answer; a bad instance is skipped with a warning."""
    if not isinstance(data, list):
        raise _Broken(f"expected a JSON list of instances, not {type(data).__name__}")
    endpoints: dict[tuple[str, int], Endpoint] = {}
    problems: set[str] = set()
    for position, entry in enumerate(data):
        try:
            endpoint = _instance(entry)
        except (EntryError, TypeError, AttributeError, ValueError) as exc:
            problems.add(f"skipping instance {position}: {exc}")
            continue
        if endpoint is not None:
            endpoints.setdefault((endpoint.host, endpoint.port), endpoint)
    # every blocking query that times out repeats the answer: warn about a bad
    # instance when it appears, not on every repetition
    for problem in sorted(problems - _warned.get(url, set())):
        logger.warning("discovery %s: %s", url, problem)
    if problems or url in _warned:
        _warned[url] = problems
    return tuple(sorted(endpoints.values(), key=lambda e: (e.host, e.port)))


#: the problems last warned about, per discovery URL
_warned: dict[str, set[str]] = {}


def _index(response: httpx.Response) -> int:
    """The `X-Consul-Index` of an answer."""
    try:
        return int(response.headers["X-Consul-Index"])
    except (KeyError, ValueError):
        raise _Broken("answer has no valid X-Consul-Index header") from None


class ConsulDiscovery(Discovery):
    """Consul health API, passing instances only: `consul://127.0.0.1:8500/users`."""

    #: the blocking query's ``wait``, in seconds
    WAIT = 30.0
    #: the shortest time between two requests (Consul's advice against busy loops)
    MIN_INTERVAL = 0.1
    #: seconds to connect; reads may take ``WAIT`` plus Consul's jitter plus this
    REQUEST_TIMEOUT = 5.0

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        super().__init__(url, options)
        self.host, self.port, self.service, self.extra = _parse_url(url)
        self.index = 0

    @property
    def base_url(self) -> str:
        """Consul's HTTP API base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _params(self) -> list[tuple[str, str | int | float | bool | None]]:
        """The query string of the next request."""
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("passing", "true"), *self.extra]
        if self.index > 0:
            params += [("index", str(self.index)), ("wait", f"{self.WAIT:g}s")]
        return params

    async def _fetch(self, client: httpx.AsyncClient) -> tuple[int, tuple[Endpoint, ...]]:
        """One (blocking) query: the new index and the endpoints."""
        read_limit = self.WAIT + self.WAIT / 16 + self.REQUEST_TIMEOUT
        response = await fetch(
            client, "GET", f"/v1/health/service/{quote(self.service, safe='')}",
            params=self._params(), timeout=httpx.Timeout(self.REQUEST_TIMEOUT, read=read_limit),
            total=read_limit + self.REQUEST_TIMEOUT,
        )
        if response.status_code != 200:
            raise _Broken(f"HTTP {response.status_code}: {response.text[:200]}")
        index = _index(response)
        return index, parse_instances(json_value(response.content, "the health answer"),
                                      url=self.url)

    def _advance(self, index: int) -> bool:
        """Take the answer's index; whether the answer is new (not a timed-out wait)."""
        previous = self.index
        if index <= 0:
            # Consul's docs: an index <= 0 is a Consul bug that would make every query
            # return at once; index 1 is always safe to block on. The answer itself
            # may still be new (the tracker drops a repeated set).
            self.index = 1
            return True
        if index < previous:  # Consul's docs: an index that goes backwards resets to 0
            logger.debug("discovery %s: X-Consul-Index went from %d to %d; resetting",
                         self.url, previous, index)
            self.index = 0
            return True
        self.index = index
        return index != previous

    async def updates(self) -> AsyncIterator[Update]:
        """Yield the passing instances at once and after each change Consul reports."""
        backoff = self.reconnect()
        last_request = -math.inf
        async with httpx.AsyncClient(base_url=self.base_url, trust_env=False) as client:
            while True:
                await asyncio.sleep(max(0.0, last_request + self.MIN_INTERVAL - time.monotonic()))
                last_request = time.monotonic()
                try:
                    index, endpoints = await self._fetch(client)
                except (httpx.HTTPError, _Broken) as exc:
                    delay = backoff.failed(time.monotonic())
                    reason = f"consul {self.base_url}: {_describe(exc)}"
                    logger.debug("discovery %s: %s; retrying in %.1f s", self.url, reason, delay)
                    self.index = 0
                    yield DiscoveryFailure(reason)
                    await asyncio.sleep(delay)
                    continue
                backoff.succeeded()
                if self._advance(index):
                    logger.debug("discovery %s: index %d, %d passing instances",
                                 self.url, index, len(endpoints))
                    yield endpoints


def _describe(exc: BaseException) -> str:
    """A short reason for a failed query."""
    if isinstance(exc, _Broken):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
