"""`k8s://SERVICE.NAMESPACE[:PORT]`: a Kubernetes Service's EndpointSlices, listed then watched.

Talks to the Kubernetes API server over HTTP(S) with httpx (no client library):

* ``GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices
  ?labelSelector=kubernetes.io/service-name=SERVICE`` lists every slice of the
  Service (in pages of `K8sDiscovery.PAGE_SIZE`, following
  `metadata.continue`) and gives the list's `resourceVersion`;
* the same path with `watch=1&resourceVersion=RV&allowWatchBookmarks=true`
  streams one JSON event per line (`ADDED`, `MODIFIED`, `DELETED`,
  `BOOKMARK`, `ERROR`); each event moves the resource version on. The
  server ends the watch after `timeoutSeconds`; it is then resumed from the
  last resource version without a new list, as client-go's reflector does.
* `410 Gone` (the answer, or an `ERROR` event carrying it) means the
  resource version is too old: the slices are listed again. Any other error
  (connection refused or reset, HTTP error, garbage) yields a
  `DiscoveryFailure` (the last good set is kept) and the discovery
  reconnects with a doubling, capped backoff.

Every slice of the Service is merged. Endpoint semantics follow the
EndpointSlice v1 API reference: `conditions.ready` (absent means ready)
decides membership; a `terminating` endpoint takes no new requests (it
leaves the set, so the mesh lets its in-flight requests finish and then
closes its connections); `zone` is the endpoint's zone for zone-aware
routing; the first of `addresses` is used; `FQDN` slices are ignored.
Topology hints (`hints.forZones`) are obeyed when the client's zone
(`MESHLIB_ZONE`) is set, as kube-proxy does: only when every member carries
hints, and falling back to every member when none is hinted for this zone.
While hints are in effect the endpoints they assign to the client's zone are
reported in that zone (the hint is the routing decision; the real zone
is shown by `meshlib resolve`).

A slice that does not parse (garbage) keeps its last good endpoints and is
logged at WARNING; it never ends the discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .._endpoint import Endpoint, format_address
from .._errors import ConfigError
from ._base import Discovery, DiscoveryFailure, DiscoveryOptions, Update
from ._http import BadAnswer, fetch, json_object, json_value, lines, read_whole

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "K8sDiscovery",
    "SliceEndpoint",
    "parse_k8s_url",
    "parse_slice",
    "select_endpoints",
]

logger = logging.getLogger("meshlib.discovery")

#: where Kubernetes mounts a pod's service-account token, CA and namespace
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

#: an RFC 1123 label: Service and namespace names, port names
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class _Broken(Exception):
    """The list or watch cannot go on; the message says why."""


class _Garbage(_Broken):
    """The server sent something that does not parse: list again."""


class _Gone(Exception):
    """The resource version expired (HTTP 410): list again."""


class SliceError(ValueError):
    """An EndpointSlice object that does not follow the documented shape."""


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint of the Service as its EndpointSlice describes it.

    `ready`, `serving` and `terminating` are the slice's conditions (absent
    `ready`/`serving` mean true, absent `terminating` false); `for_zones` is
    `hints.forZones` (`None` when the endpoint carries no hints).
    """

    host: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    zone: str | None
    for_zones: tuple[str, ...] | None
    slice: str

    @property
    def address(self) -> str:
        """`host:port`, IPv6 in brackets."""
        return format_address(self.host, self.port)

    @property
    def member(self) -> bool:
        """Whether it takes new requests: ready and not terminating."""
        return self.ready and not self.terminating


def _default_namespace() -> str:
    """The pod's own namespace (from the service account), else `default`."""
    try:
        namespace = (Path(SERVICE_ACCOUNT_DIR) / "namespace").read_text().strip()
    except OSError:
        return "default"
    return namespace if _LABEL.match(namespace) else "default"


def parse_k8s_url(url: str) -> tuple[str, str, str | int | None]:
    """`(service, namespace, port)` of `k8s://SERVICE[.NAMESPACE][:PORT]`.

    `port` is a port name, a number, or `None` (the slices' only port). The
    namespace defaults to the pod's own, else `default`.
    """
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "k8s":
        raise ConfigError(f"discovery URL {url!r} is not a k8s:// URL")
    if not rest or any(c in rest for c in "/?#@[]"):
        raise ConfigError(f"discovery URL {url!r}: expected k8s://SERVICE.NAMESPACE[:PORT] "
                          "(e.g. k8s://users.shop:http)")
    name, colon, port_text = rest.partition(":")
    service, dot, namespace = name.partition(".")
    if not _LABEL.match(service) or (dot and not _LABEL.match(namespace)):
        raise ConfigError(f"discovery URL {url!r}: {name!r} is not SERVICE.NAMESPACE "
                          "(lowercase DNS labels, e.g. users.shop)")
    port: str | int | None = None
    if colon:
        if port_text.isdigit():
            port = int(port_text)
            if not 1 <= port <= 65535:
                raise ConfigError(f"discovery URL {url!r}: port {port_text} is out of range")
        elif _LABEL.match(port_text) and any(c.isalpha() for c in port_text):
            port = port_text
        else:
            raise ConfigError(f"discovery URL {url!r}: {port_text!r} is not a port name "
                              "or number")
    return service, namespace or _default_namespace(), port


def _port_of(obj: dict[str, Any], wanted: str | int | None) -> int | None:
    """The port of this slice that the URL names; `None` when the slice has none."""
    ports = obj.get("ports") or []
    if not isinstance(ports, list):
        raise SliceError("'ports' must be a list")
    tcp: list[tuple[str, int]] = []
    for entry in ports:
        if not isinstance(entry, dict):
            raise SliceError("a port must be an object")
        number = entry.get("port")
        if number is None:  # "all ports": nothing to connect to
            continue
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise SliceError(f"bad port number {number!r}")
        if (entry.get("protocol") or "TCP") != "TCP":
            continue
        tcp.append((str(entry.get("name") or ""), number))
    if wanted is None:
        if len(tcp) > 1:
            names = ", ".join(n or str(p) for n, p in tcp)
            raise _Broken(f"the slices carry several ports ({names}): name one in the URL "
                          "(k8s://SERVICE.NAMESPACE:PORT)")
        return tcp[0][1] if tcp else None
    for name, number in tcp:
        if name == wanted if isinstance(wanted, str) else number == wanted:
            return number
    return None


def _conditions(raw: Any) -> tuple[bool, bool, bool]:
    """`(ready, serving, terminating)`; absent ready/serving mean true, terminating false."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SliceError("'conditions' must be an object")
    values = []
    for key in ("ready", "serving", "terminating"):
        value = raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise SliceError(f"conditions.{key} must be a boolean, not {value!r}")
        values.append(value)
    ready = True if values[0] is None else values[0]
    serving = ready if values[1] is None else values[1]
    terminating = bool(values[2])
    return ready, serving, terminating


def _hints(raw: Any) -> tuple[str, ...] | None:
    """`hints.forZones` as zone names; `None` when the endpoint has no hints."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SliceError("'hints' must be an object")
    zones = raw.get("forZones")
    if zones is None:
        return None
    if not isinstance(zones, list) or not all(
            isinstance(z, dict) and isinstance(z.get("name"), str) for z in zones):
        raise SliceError("hints.forZones must be a list of {'name': ZONE}")
    return tuple(z["name"] for z in zones) or None


def parse_slice(obj: Any, port: str | int | None) -> tuple[str, list[SliceEndpoint]]:
    """The name and endpoints of one EndpointSlice object (its documented v1 shape).

    Raises `SliceError` for an object that does not follow the shape.
    """
    if not isinstance(obj, dict):
        raise SliceError(f"an EndpointSlice must be an object, not {type(obj).__name__}")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise SliceError("an EndpointSlice needs metadata.name")
    address_type = obj.get("addressType")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise SliceError(f"slice {name!r}: unknown addressType {address_type!r}")
    raw_endpoints = obj.get("endpoints") or []
    if not isinstance(raw_endpoints, list):
        raise SliceError(f"slice {name!r}: 'endpoints' must be a list")
    try:
        number = _port_of(obj, port)
    except SliceError as exc:
        raise SliceError(f"slice {name!r}: {exc}") from None
    if address_type == "FQDN" or number is None:
        return name, []
    family = 4 if address_type == "IPv4" else 6
    found: list[SliceEndpoint] = []
    for raw in raw_endpoints:
        if not isinstance(raw, dict):
            raise SliceError(f"slice {name!r}: an endpoint must be an object")
        addresses = raw.get("addresses")
        if not isinstance(addresses, list) or not addresses or not isinstance(addresses[0], str):
            raise SliceError(f"slice {name!r}: an endpoint needs 'addresses'")
        try:
            ip = ipaddress.ip_address(addresses[0])
        except ValueError:
            raise SliceError(f"slice {name!r}: {addresses[0]!r} is not an IP address") from None
        if ip.version != family:
            raise SliceError(f"slice {name!r}: {addresses[0]!r} is not {address_type}")
        zone = raw.get("zone")
        if zone is not None and not isinstance(zone, str):
            raise SliceError(f"slice {name!r}: 'zone' must be a string")
        ready, serving, terminating = _conditions(raw.get("conditions"))
        try:
            hints = _hints(raw.get("hints"))
        except SliceError as exc:
            raise SliceError(f"slice {name!r}: {exc}") from None
        found.append(SliceEndpoint(str(ip), number, ready, serving, terminating,
                                   zone or None, hints, name))
    return name, found


def select_endpoints(view: list[SliceEndpoint], zone: str | None) -> tuple[Endpoint, ...]:
    """The endpoint set: members (ready, not terminating), one per address; topology hints
    applied for the client's `zone` as kube-proxy applies them."""
    members: dict[str, SliceEndpoint] = {}
    for entry in view:
        if entry.member:
            members.setdefault(entry.address, entry)
    chosen = list(members.values())
    hinted = False
    if zone is not None and chosen and all(e.for_zones for e in chosen):
        for_us = [e for e in chosen if zone in (e.for_zones or ())]
        if for_us:
            chosen, hinted = for_us, True
    return tuple(
        Endpoint(e.host, e.port, zone=zone if hinted else e.zone)
        for e in sorted(chosen, key=lambda e: (e.host, e.port))
    )


class K8sDiscovery(Discovery):
    """A Kubernetes Service's EndpointSlices, watched: `k8s://users.shop:http`."""

    #: seconds to connect and to read a list answer
    REQUEST_TIMEOUT = 10.0
    #: the watch's ``timeoutSeconds`` (jittered up to twice this, as client-go does)
    WATCH_SECONDS = 300.0
    #: ``limit`` of one list page
    PAGE_SIZE = 500
    #: a broken watch that had run this long is resumed at once, without a failure
    RESUME_AFTER = 1.0

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        super().__init__(url, options)
        self.service, self.namespace, self.port = parse_k8s_url(url)
        api = self.options.k8s_api
        if not api:
            raise ConfigError(
                f"discovery URL {url!r}: no Kubernetes API server: set MESHLIB_K8S_API "
                "(e.g. http://127.0.0.1:8001 for kubectl proxy) or run in a pod "
                "(KUBERNETES_SERVICE_HOST)")
        self.api = api.rstrip("/")
        https = self.api.lower().startswith("https://")
        # a token is sent over plain http only when configured explicitly (kubectl proxy
        # needs none); the service account's is used over https
        self.token_file = self.options.k8s_token_file or (
            f"{SERVICE_ACCOUNT_DIR}/token" if https else None)
        self.ca_file = self.options.k8s_ca_file or (
            f"{SERVICE_ACCOUNT_DIR}/ca.crt" if https else None)
        self.ca_explicit = bool(self.options.k8s_ca_file)
        self.zone = self.options.zone
        self.resource_version = ""
        #: when the current watch stream opened (``time.monotonic()``), if it did
        self.watching: float | None = None
        #: slice name -> its endpoints (a slice that stopped parsing keeps its last good ones)
        self.slices: dict[str, list[SliceEndpoint]] = {}

    @property
    def path(self) -> str:
        """The EndpointSlice collection of the namespace."""
        return f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"

    @property
    def selector(self) -> str:
        """The label selector of the Service's slices."""
        return f"kubernetes.io/service-name={self.service}"

    def view(self) -> list[SliceEndpoint]:
        """Every endpoint of every slice with its conditions, by address (for `resolve`)."""
        return sorted((e for entries in self.slices.values() for e in entries),
                      key=lambda e: (e.host, e.port, e.slice))

    def snapshot(self) -> tuple[Endpoint, ...]:
        """The current endpoint set."""
        return select_endpoints(self.view(), self.zone)

    # -- HTTP ---------------------------------------------------------------------------

    def _verify(self) -> ssl.SSLContext | bool:
        """TLS is always verified: against the CA file when there is one, else the system's."""
        if self.ca_file and (self.ca_explicit or os.path.exists(self.ca_file)):
            try:
                return ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise _Broken(f"cannot read the CA file {self.ca_file}: {exc}") from None
        return True

    def _headers(self) -> dict[str, str]:
        """`Accept` and, when there is a token, `Authorization` (re-read: tokens rotate)."""
        headers = {"Accept": "application/json"}
        if self.token_file:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as exc:
                if self.options.k8s_token_file:
                    raise _Broken(f"cannot read the token file {self.token_file}: "
                                  f"{exc.strerror or exc}") from None
                token = ""  # the default service-account token is optional
            if token:
                headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _list(self, client: httpx.AsyncClient) -> None:
        """Read every slice of the Service into `slices`; remember the resource version."""
        slices: dict[str, list[SliceEndpoint]] = {}
        token = ""
        for _ in range(10_000):  # pages; bounded so a looping continue token cannot spin
            params = {"labelSelector": self.selector, "limit": str(self.PAGE_SIZE)}
            if token:
                params["continue"] = token
            response = await fetch(client, "GET", self.path, params=params,
                                   headers=self._headers(), total=2 * self.REQUEST_TIMEOUT)
            body = _json_body(response)
            items = body.get("items")
            metadata = body.get("metadata")
            if not isinstance(items, list) or not isinstance(metadata, dict):
                raise _Garbage("the list answer has no 'items' list or 'metadata'")
            for item in items:
                self._take(item, into=slices, previous=self.slices)
            version = metadata.get("resourceVersion")
            token = metadata.get("continue") or ""
            if not isinstance(token, str):
                raise _Garbage(f"the list answer's metadata.continue is not a string: "
                               f"{str(token)[:200]}")
            if not token:
                if not isinstance(version, str) or not version:
                    raise _Garbage("the list answer has no metadata.resourceVersion")
                self.slices, self.resource_version = slices, version
                return
        raise _Broken("the list never ended (continue tokens loop)")

    def _take(self, obj: Any, *, into: dict[str, list[SliceEndpoint]],
              previous: dict[str, list[SliceEndpoint]]) -> None:
        """Parse one slice into `into`; garbage keeps the slice's previous endpoints."""
        try:
            name, endpoints = parse_slice(obj, self.port)
        except SliceError as exc:
            bad = _name_of(obj)
            logger.warning("discovery %s: ignoring a bad EndpointSlice%s: %s", self.url,
                           f" {bad!r}" if bad else "", exc)
            if bad and bad in previous:
                into[bad] = previous[bad]
            return
        into[name] = endpoints

    async def _watch(self, client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
        """Follow changes from `resource_version`; yield after each change applied.

        Returns when the server ends the watch (`timeoutSeconds`); raises
        `_Gone` when the resource version expired.
        """
        seconds = max(1, round(self.WATCH_SECONDS * (1.0 + random.random())))
        params = {"labelSelector": self.selector, "watch": "1", "allowWatchBookmarks": "true",
                  "resourceVersion": self.resource_version, "timeoutSeconds": str(seconds)}
        timeout = httpx.Timeout(self.REQUEST_TIMEOUT, read=seconds + self.REQUEST_TIMEOUT)
        async with client.stream("GET", self.path, params=params, headers=self._headers(),
                                 timeout=timeout) as response:
            if response.status_code != 200:
                # raises _Gone or _Broken with the server's reason
                _json_body(await read_whole(response))
                raise _Broken(f"watch answered HTTP {response.status_code}")
            self.watching = time.monotonic()
            async for line in lines(response):
                if line.strip() and self._event(line):
                    yield None

    def _event(self, line: str) -> bool:
        """Apply one watch event; whether the endpoint set may have changed."""
        event = json_object(line, "a watch line")  # BadAnswer: list again
        if not isinstance(event.get("object"), dict):
            raise _Garbage(f"the watch sent something that is not an event: {line[:200]!r}")
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            code, message = obj.get("code"), obj.get("message") or obj.get("reason")
            if code == 410:
                raise _Gone(str(message))
            raise _Broken(f"the watch sent an ERROR event: {code} {message}")
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if kind == "BOOKMARK":
            if isinstance(version, str) and version:
                self.resource_version = version
            return False
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise _Garbage(f"the watch sent an event of unknown type {kind!r}")
        if kind == "DELETED":
            name = _name_of(obj)
            if name is None:
                raise _Garbage("the watch sent a DELETED event without metadata.name")
            self.slices.pop(name, None)
        else:
            self._take(obj, into=self.slices, previous=self.slices)
        if isinstance(version, str) and version:
            self.resource_version = version
        return True

    async def _follow(self, client: httpx.AsyncClient
                      ) -> AsyncGenerator[tuple[Endpoint, ...], None]:
        """List (unless a watch can resume), then watch, resumed after each normal end:
        yield the set on every change."""
        if not self.resource_version:
            await self._list(client)
            logger.debug("discovery %s: listed %d slices at resourceVersion %s",
                         self.url, len(self.slices), self.resource_version)
            yield self.snapshot()
        while True:
            started, changed = time.monotonic(), False
            async with contextlib.aclosing(self._watch(client)) as changes:
                async for _ in changes:
                    changed = True
                    yield self.snapshot()
            if not changed and time.monotonic() - started < self.RESUME_AFTER:
                # client-go's guard against a server or proxy that ends every watch at once
                raise _Broken("the watch ended at once, with no event")
            logger.debug("discovery %s: watch ended; resuming at %s",
                         self.url, self.resource_version)

    async def updates(self) -> AsyncIterator[Update]:
        """Yield the set after the list and each change; reconnect with backoff on errors."""
        backoff = self.reconnect()
        gone = 0  # expiries in a row: a server that expires every list must not spin us
        client: httpx.AsyncClient | None = None
        try:
            while True:
                answers = 0
                self.watching = None
                try:
                    if client is None:
                        client = httpx.AsyncClient(base_url=self.api, trust_env=False,
                                                   verify=self._verify(),
                                                   timeout=self.REQUEST_TIMEOUT)
                    async with contextlib.aclosing(self._follow(client)) as stream:
                        async for endpoints in stream:
                            answers += 1
                            # the backoff resets only once the watch has proved itself (an
                            # event came, or it stayed up: see Reconnect)
                            if answers > 1:
                                backoff.succeeded()
                                gone = 0
                            yield endpoints
                except _Gone as exc:
                    self.resource_version = ""
                    gone += 1
                    logger.debug("discovery %s: resourceVersion expired (%s); listing again",
                                 self.url, exc)
                    if gone < 3:
                        continue
                    yield DiscoveryFailure(f"kubernetes {self.api}: resourceVersion expired "
                                           f"{gone} times in a row: {exc}")
                except (httpx.HTTPError, _Broken, SliceError) as exc:
                    if isinstance(exc, (_Garbage, SliceError, BadAnswer)):
                        self.resource_version = ""  # do not trust what came before: list
                    elif (self.watching is not None and self.resource_version
                          and time.monotonic() - self.watching > self.RESUME_AFTER):
                        # a watch that ran a while broke (an API server restart, an idle
                        # proxy): resume it at once from the last version, as client-go does
                        logger.debug("discovery %s: watch broken (%s); resuming at %s",
                                     self.url, _describe(exc), self.resource_version)
                        continue
                    reason = f"kubernetes {self.api}: {_describe(exc)}"
                    logger.debug("discovery %s: %s; retrying", self.url, reason)
                    yield DiscoveryFailure(reason)
                await asyncio.sleep(backoff.failed(time.monotonic()))
        finally:
            if client is not None:
                await client.aclose()


def _name_of(obj: Any) -> str | None:
    """`metadata.name` of an object, if it has one."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and name else None


def _json_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of an API answer; `_Gone` for 410, `_Broken` else."""
    if response.status_code == 410:
        raise _Gone(response.text[:200])
    if response.status_code != 200:
        raise _Broken(f"{response.request.url.path} answered HTTP {response.status_code}: "
                      f"{_status_message(response)}")
    return json_object(response.content, f"the answer of {response.request.url.path}")


def _status_message(response: httpx.Response) -> str:
    """The `message` of a Kubernetes `Status` answer, else the start of the body."""
    try:
        body = json_value(response.content, "the error answer")
    except BadAnswer:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:200]
    return response.text[:200]


def _describe(exc: BaseException) -> str:
    """A short reason for a failed list or watch."""
    if isinstance(exc, (_Broken, SliceError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
