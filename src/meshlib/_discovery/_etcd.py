"""`etcd://HOST:PORT/PREFIX`: etcd v3 keys under `PREFIX/`, read then watched.

Talks to etcd's v3 JSON gateway over HTTP with httpx (no extra dependency):
`/v3/kv/range` reads every key under the prefix, then a `/v3/watch` stream
from the next revision reports each change (one JSON object per line, int64
values as strings, defaults omitted: a PUT event has no `"type"`). The
discovery keeps a map of key to endpoint and yields the whole set after the
initial read and after each batch of changes.

Each value is JSON `{"host", "port", "weight"?, "zone"?, "priority"?}`; a bad
value is skipped with a warning on the `meshlib.discovery` logger. Any error
(connection refused, stream closed, etcd restarted, watch compacted) yields a
`DiscoveryFailure` and the discovery reconnects with a doubling,
capped backoff, starting again with a fresh range read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from .._endpoint import Endpoint, parse_host_port
from .._errors import ConfigError
from ._base import Discovery, DiscoveryFailure, DiscoveryOptions, Update
from ._entries import EntryError, parse_entry
from ._http import BadAnswer, fetch, json_object, json_value, lines, read_whole

__all__ = ["DEFAULT_PORT", "EtcdDiscovery", "b64", "parse_etcd_url", "prefix_range"]

logger = logging.getLogger("meshlib.discovery")

#: etcd's client port when the URL gives none
DEFAULT_PORT = 2379


class _Broken(Exception):
    """The connection to etcd cannot go on; the message says why."""


def b64(raw: bytes) -> str:
    """Base64 text, as the JSON gateway wants keys and values."""
    return base64.b64encode(raw).decode("ascii")


def prefix_range(prefix: str) -> dict[str, str]:
    """The `key`/`range_end` pair selecting every key that starts with `prefix`."""
    raw = prefix.encode()
    end = raw[:-1] + bytes([raw[-1] + 1])
    return {"key": b64(raw), "range_end": b64(end)}


def parse_etcd_url(url: str) -> tuple[str, int, str]:
    """`(host, port, prefix)` of `etcd://HOST:PORT/PREFIX`; the prefix ends with `/`."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "etcd":
        raise ConfigError(f"discovery URL {url!r} is not an etcd:// URL")
    if not parts.netloc or "@" in parts.netloc:
        raise ConfigError(f"discovery URL {url!r}: expected etcd://HOST:PORT/PREFIX")
    if parts.query or parts.fragment:
        raise ConfigError(f"discovery URL {url!r}: an etcd URL takes no query or fragment")
    host, port = parse_host_port(parts.netloc, what=f"discovery URL {url!r}",
                                 default_port=DEFAULT_PORT)
    path = unquote(parts.path).strip("/")
    if not path:
        raise ConfigError(
            f"discovery URL {url!r} names no key prefix (e.g. etcd://127.0.0.1:2379/mesh/users)"
        )
    return host, port, f"/{path}/"


def _decode(text: Any) -> bytes:
    """Base64 from the gateway (`None` or absent means empty)."""
    if not text:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise _Broken(f"etcd sent bad base64: {text!r}") from None


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    """A list of JSON objects from an answer (absent means empty); `_Broken` else."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _Broken(f"etcd sent {what!r} that is not a list of objects: {str(value)[:200]}")
    return value


def _revision(header: Any) -> int:
    """The revision in a response header (an int64 sent as a string)."""
    try:
        return int(header["revision"])
    except (KeyError, TypeError, ValueError):
        raise _Broken(f"etcd answer has no revision: {header!r}") from None


class EtcdDiscovery(Discovery):
    """etcd v3 keys under a prefix, watched: `etcd://127.0.0.1:2379/mesh/users`."""

    #: seconds to connect and per read of a range answer, which must be whole within twice
    #: this (the watch stream has no read limit)
    REQUEST_TIMEOUT = 5.0

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        super().__init__(url, options)
        self.host, self.port, self.prefix = parse_etcd_url(url)
        self.endpoints: dict[str, Endpoint] = {}

    @property
    def base_url(self) -> str:
        """The gateway's base URL, `http://HOST:PORT`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def snapshot(self) -> tuple[Endpoint, ...]:
        """The current set, in key order, one endpoint per address."""
        unique: dict[tuple[str, int], Endpoint] = {}
        for key in sorted(self.endpoints):
            endpoint = self.endpoints[key]
            unique.setdefault((endpoint.host, endpoint.port), endpoint)
        return tuple(unique.values())

    def _put(self, kv: dict[str, Any]) -> None:
        """Record a key's value; a bad value removes the key and is logged."""
        key = _decode(kv.get("key")).decode(errors="replace")
        try:
            self.endpoints[key] = parse_entry(json_value(_decode(kv.get("value")), "the value"))
        except (EntryError, BadAnswer, ValueError) as exc:
            logger.warning("discovery %s: skipping etcd key %r: bad value: %s",
                           self.url, key, exc)
            self.endpoints.pop(key, None)

    def _delete(self, kv: dict[str, Any]) -> None:
        """Forget a deleted key."""
        self.endpoints.pop(_decode(kv.get("key")).decode(errors="replace"), None)

    async def _range(self, client: httpx.AsyncClient) -> int:
        """Read every key under the prefix into `endpoints`; the revision read at."""
        response = await fetch(client, "POST", "/v3/kv/range", json=prefix_range(self.prefix),
                               total=2 * self.REQUEST_TIMEOUT)
        body = _json_response(response)
        self.endpoints = {}
        for kv in _objects(body.get("kvs"), "kvs"):
            self._put(kv)
        return _revision(body.get("header"))

    async def _watch(self, client: httpx.AsyncClient, start: int) -> AsyncGenerator[None, None]:
        """Follow changes from revision `start`; yield after each batch applied."""
        request = {"create_request": {**prefix_range(self.prefix),
                                      "start_revision": str(start)}}
        async with client.stream("POST", "/v3/watch", json=request,
                                 timeout=httpx.Timeout(self.REQUEST_TIMEOUT, read=None)
                                 ) as response:
            if response.status_code != 200:
                answer = await read_whole(response)
                raise _Broken(f"watch answered HTTP {response.status_code}: "
                              f"{answer.text[:200]}")
            async for line in lines(response):
                if line.strip() and self._apply(line):
                    yield None
        raise _Broken("etcd closed the watch stream")

    def _apply(self, line: str) -> bool:
        """Apply one watch response line; whether the set may have changed."""
        result = json_object(line, "an etcd watch line").get("result")
        if not isinstance(result, dict):
            raise _Broken(f"watch failed: {line[:200]}")
        if result.get("canceled"):
            raise _Broken(f"watch canceled by etcd: {result.get('cancel_reason') or result}")
        events = _objects(result.get("events"), "events")
        for event in events:
            kv = event.get("kv") or {}
            if not isinstance(kv, dict):
                raise _Broken(f"etcd sent an event whose 'kv' is not an object: {line[:200]}")
            if event.get("type") == "DELETE":
                self._delete(kv)
            else:
                self._put(kv)
        return bool(events)

    async def _follow(self, client: httpx.AsyncClient
                      ) -> AsyncGenerator[tuple[Endpoint, ...], None]:
        """Range, then watch: yield the set after the read and after each change."""
        revision = await self._range(client)
        logger.debug("discovery %s: read %d keys at revision %d",
                     self.url, len(self.endpoints), revision)
        yield self.snapshot()
        async with contextlib.aclosing(self._watch(client, revision + 1)) as changes:
            async for _ in changes:
                logger.debug("discovery %s: watch event, %d keys",
                             self.url, len(self.endpoints))
                yield self.snapshot()

    async def updates(self) -> AsyncIterator[Update]:
        """Yield the set after the read and each change; reconnect with backoff on errors."""
        backoff = self.reconnect()
        async with httpx.AsyncClient(base_url=self.base_url, trust_env=False,
                                     timeout=self.REQUEST_TIMEOUT) as client:
            while True:
                answers = 0
                try:
                    async with contextlib.aclosing(self._follow(client)) as stream:
                        async for endpoints in stream:
                            answers += 1
                            # the backoff resets only once the watch has proved itself (an
                            # event came, or it stayed up: see Reconnect): a gateway that
                            # answers the range but fails every watch must not be hammered
                            if answers > 1:
                                backoff.succeeded()
                            yield endpoints
                    delay = backoff.failed(time.monotonic())
                except (httpx.HTTPError, _Broken) as exc:
                    delay = backoff.failed(time.monotonic())
                    reason = f"etcd {self.base_url}: {_describe(exc)}"
                    logger.debug("discovery %s: %s; retrying in %.1f s", self.url, reason, delay)
                    yield DiscoveryFailure(reason)
                await asyncio.sleep(delay)


def _json_response(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a gateway answer; `_Broken` for an error or garbage."""
    if response.status_code != 200:
        raise _Broken(f"{response.request.url.path} answered HTTP {response.status_code}: "
                      f"{response.text[:200]}")
    return json_object(response.content, f"the answer of {response.request.url.path}")


def _describe(exc: BaseException) -> str:
    """A short reason for a connection error."""
    if isinstance(exc, _Broken):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
