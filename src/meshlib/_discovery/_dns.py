"""DNS discovery: `dns+srv://` (SRV records) and `dns://name:port` (A/AAAA records).

Both kinds query with dnspython's async resolver, without its cache, and do
their own TTL handling: the next query is sent when the shortest TTL of the
records used has run out, never sooner than `TTL_FLOOR` (1 s). A failed
or garbage answer (NXDOMAIN, no records, timeout, a bad record) yields a
`DiscoveryFailure` and is retried with a capped, doubling backoff.

The nameserver is the URL's `?nameserver=HOST:PORT` (repeatable, IPv6 as
`[::1]:53`), else `MESHLIB_DNS_NAMESERVER`, else the system resolver. When a
nameserver is given, `/etc/resolv.conf` is never read.

SRV rules (RFC 2782):

- the SRV priority is carried in `Endpoint.priority` (lower is preferred);
- the SRV weight is carried in `Endpoint.weight`; a weight of 0 becomes
  `ZERO_WEIGHT` (0.01), so such a target still gets a very small share
  next to weighted ones, and an equal share when all its peers are 0 too;
- a target with several addresses (A and AAAA) splits its weight evenly
  between them, so the target as a whole keeps its share;
- targets are resolved to A and AAAA through the same nameserver, using the
  answer's additional section when it has them; an IP literal target is used
  as it is; a target that does not resolve (NXDOMAIN, no address) is skipped;
- a single SRV record with target `.` means "no service here": an empty set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from .._endpoint import Endpoint, parse_host_port
from .._errors import ConfigError
from ._base import Discovery, DiscoveryFailure, DiscoveryOptions, Update

__all__ = ["ZERO_WEIGHT", "AddressDiscovery", "DnsDiscovery", "SrvDiscovery"]

logger = logging.getLogger("meshlib.discovery")

#: the weight given to an SRV record of weight 0 (RFC 2782: "a very small chance")
ZERO_WEIGHT = 0.01

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


class _Unresolved(Exception):
    """A refresh that cannot produce an endpoint set; the message says why."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """An endpoint set and how long it may be used."""

    endpoints: tuple[Endpoint, ...]
    ttl: float


def _ip_literal(text: str) -> str | None:
    """`text` normalised if it is an IPv4/IPv6 address, else `None`."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _parse_nameservers(url: str, query: str) -> tuple[tuple[str, int], ...]:
    """The `nameserver` query parameters of `url`; reject any other parameter."""
    servers: list[tuple[str, int]] = []
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(f"discovery URL {url!r}: malformed query {query!r}") from None
    for key, value in pairs:
        if key != "nameserver":
            raise ConfigError(
                f"discovery URL {url!r}: unknown parameter {key!r} (only 'nameserver')"
            )
        host, port = parse_host_port(value, what=f"discovery URL {url!r} nameserver",
                                     default_port=53)
        address = _ip_literal(host)
        if address is None:
            raise ConfigError(
                f"discovery URL {url!r}: nameserver {value!r} must be an IP address"
            )
        servers.append((address, port))
    return tuple(servers)


def _parse_name(url: str, text: str) -> dns.name.Name:
    """`text` as an absolute DNS name; `ConfigError` naming `url` if it is not one."""
    if not text or text.startswith(".") or ".." in text:
        raise ConfigError(f"discovery URL {url!r}: {text!r} is not a DNS name")
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ConfigError(f"discovery URL {url!r}: {text!r} is not a DNS name ({exc})") from None


def _split_url(url: str, scheme: str) -> tuple[str, str]:
    """The authority and query of `url`; reject a path, fragment or user part."""
    parts = urlsplit(url)
    if parts.scheme.lower() != scheme:
        raise ConfigError(f"discovery URL {url!r} is not a {scheme}:// URL")
    if parts.path not in ("", "/") or parts.fragment or "@" in parts.netloc:
        raise ConfigError(f"discovery URL {url!r}: expected {scheme}://NAME with no path")
    if not parts.netloc:
        raise ConfigError(f"discovery URL {url!r} names no host")
    return parts.netloc, parts.query


class DnsDiscovery(Discovery):
    """What both DNS kinds share: nameserver choice, TTL timing and backoff."""

    #: the shortest time between two queries, whatever the TTL says
    TTL_FLOOR = 1.0
    #: the longest time between two queries (also for IP literals, which have no TTL)
    REFRESH_MAX = 3600.0
    #: seconds one query may take, retries to all nameservers included
    QUERY_LIFETIME = 3.0

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        super().__init__(url, options)
        self.nameservers: tuple[tuple[str, int], ...] = ()
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _set_nameservers(self, query: str) -> None:
        """Take the nameservers from the URL's query, else from the options."""
        self.nameservers = _parse_nameservers(self.url, query)
        if not self.nameservers and self.options.dns_nameserver is not None:
            host, port = self.options.dns_nameserver
            address = _ip_literal(host)
            if address is None:
                raise ConfigError(
                    f"discovery URL {self.url!r}: MESHLIB_DNS_NAMESERVER host {host!r} "
                    "must be an IP address"
                )
            self.nameservers = ((address, port),)

    def resolver(self) -> dns.asyncresolver.Resolver:
        """The resolver, made on first use (the system one reads `/etc/resolv.conf`)."""
        if self._resolver is None:
            if self.nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers
                ]
            else:
                resolver = dns.asyncresolver.Resolver()
            resolver.cache = None
            resolver.lifetime = self.QUERY_LIFETIME
            resolver.timeout = self.QUERY_LIFETIME / 2
            self._resolver = resolver
        return self._resolver

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
                    ) -> dns.resolver.Answer:
        """One uncached query through the chosen nameservers, with no search list."""
        return await self.resolver().resolve(name, rdtype, search=False)

    async def addresses(self, name: dns.name.Name) -> tuple[list[str], float]:
        """`name`'s A and AAAA addresses and their shortest TTL; `[]` if it has none.

        NXDOMAIN and "no such record" are answers (no address); a timeout or a
        server failure raises `_Unresolved`.
        """
        results = await asyncio.gather(*(self._address_query(name, t) for t in _ADDRESS_TYPES))
        found: list[str] = []
        ttl = math.inf
        for rrset in results:
            if rrset is not None:
                found.extend(str(rdata) for rdata in rrset)
                ttl = min(ttl, float(rrset.ttl))
        return found, ttl

    async def _address_query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
                             ) -> dns.rrset.RRset | None:
        """One A or AAAA rrset of `name`, `None` if the name or record does not exist."""
        try:
            answer = await self.query(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:
            raise _Unresolved(f"{rdtype.name} {name}: {_describe(exc)}") from None
        return answer.rrset

    async def resolve(self) -> _Answer:
        """Query once and build the endpoint set; raise `_Unresolved` on failure."""
        raise NotImplementedError

    async def updates(self) -> AsyncIterator[Update]:
        """Yield the set after each query, re-querying when its TTL runs out."""
        backoff = self.reconnect()
        while True:
            try:
                answer = await self.resolve()
            except _Unresolved as exc:
                delay = backoff.failed(time.monotonic())
                logger.debug("discovery %s failed, retrying in %.1f s: %s", self.url, delay, exc)
                yield DiscoveryFailure(str(exc))
                await asyncio.sleep(delay)
                continue
            backoff.succeeded()
            wait = min(max(answer.ttl, self.TTL_FLOOR), self.REFRESH_MAX)
            logger.debug("discovery %s: %d endpoints, next query in %.1f s",
                         self.url, len(answer.endpoints), wait)
            yield answer.endpoints
            await asyncio.sleep(wait)


def _describe(exc: BaseException) -> str:
    """A short reason for a resolver error."""
    if isinstance(exc, dns.resolver.LifetimeTimeout | dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "no such domain (NXDOMAIN)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "no records of that type"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"no nameserver answered ({exc})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class _SrvRecord:
    """One SRV record, its target still a name."""

    priority: int
    weight: int
    port: int
    target: dns.name.Name


def _srv_records(answer: dns.resolver.Answer) -> list[_SrvRecord]:
    """The SRV records of `answer`, checked; `_Unresolved` on garbage."""
    records: list[_SrvRecord] = []
    rrset = answer.rrset
    if rrset is None:
        raise _Unresolved("no SRV records")
    for rdata in rrset:
        if rdata.rdtype != dns.rdatatype.SRV:
            raise _Unresolved(f"unexpected {dns.rdatatype.to_text(rdata.rdtype)} record")
        target: Any = rdata.target
        records.append(_SrvRecord(int(rdata.priority), int(rdata.weight),
                                  int(rdata.port), target))
    return records


_Extra = dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset]


def _additional(response: dns.message.Message | None) -> _Extra:
    """Address rrsets the server sent along in the additional section, by owner and type."""
    found: _Extra = {}
    if response is None:
        return found
    for rrset in response.additional:
        if rrset.rdclass == dns.rdataclass.IN and rrset.rdtype in _ADDRESS_TYPES:
            found[(rrset.name, rrset.rdtype)] = rrset
    return found


def _merge(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """One endpoint per address (lowest priority wins, equal ones add weights), sorted."""
    merged: dict[tuple[str, int], Endpoint] = {}
    for endpoint in endpoints:
        key = (endpoint.host, endpoint.port)
        seen = merged.get(key)
        if seen is None or endpoint.priority < seen.priority:
            merged[key] = endpoint
        elif endpoint.priority == seen.priority:
            merged[key] = Endpoint(seen.host, seen.port, seen.weight + endpoint.weight,
                                   seen.zone, seen.priority)
    return tuple(sorted(merged.values(), key=lambda e: (e.priority, e.host, e.port)))


class SrvDiscovery(DnsDiscovery):
    """DNS SRV records: `dns+srv://_http._tcp.users.example.com?nameserver=127.0.0.1:53`."""

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        super().__init__(url, options)
        netloc, query = _split_url(url, "dns+srv")
        if ":" in netloc:
            raise ConfigError(
                f"discovery URL {url!r}: an SRV name takes no port (the records give it)"
            )
        self.name = _parse_name(url, netloc)
        self._set_nameservers(query)
        #: the last addresses each target resolved to, used while a lookup of it fails
        self._known_targets: dict[dns.name.Name, list[str]] = {}

    async def resolve(self) -> _Answer:
        """Query the SRV records, then their targets' addresses."""
        try:
            answer = await self.query(self.name, dns.rdatatype.SRV)
        except dns.exception.DNSException as exc:
            raise _Unresolved(f"SRV {self.name}: {_describe(exc)}") from None
        records = _srv_records(answer)
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else math.inf
        if len(records) == 1 and records[0].target == dns.name.root:
            return _Answer((), ttl)
        extra = _additional(answer.response)
        resolved = await asyncio.gather(*(self._target(r, extra) for r in records))
        endpoints = [e for found, _ in resolved for e in found]
        ttl = min([ttl, *(t for _, t in resolved)])
        if not endpoints:
            raise _Unresolved(f"SRV {self.name}: no target resolved to an address")
        return _Answer(_merge(endpoints), ttl)

    async def _target(self, record: _SrvRecord, extra: _Extra
                      ) -> tuple[list[Endpoint], float]:
        """The endpoints of one SRV record and the TTL of the addresses used."""
        literal = _ip_literal(record.target.to_text(omit_final_dot=True))
        if literal is not None:
            return _endpoints(record, [literal]), math.inf
        hosts, ttl = self._from_additional(record.target, extra)
        if not hosts:
            try:
                hosts, ttl = await self.addresses(record.target)
            except _Unresolved as exc:
                # one target failing must not fail the set: keep what it last resolved
                # to (or leave it out) and ask again soon
                hosts, ttl = self._known_targets.get(record.target, []), 1.0
                logger.debug("discovery %s: SRV target %s: %s; %s", self.url, record.target,
                             exc, "keeping its last addresses" if hosts else "left out")
        if hosts:
            self._known_targets[record.target] = list(hosts)
        else:
            logger.debug("discovery %s: SRV target %s has no address, skipped",
                         self.url, record.target)
        return _endpoints(record, hosts), ttl

    @staticmethod
    def _from_additional(target: dns.name.Name, extra: _Extra
                         ) -> tuple[list[str], float]:
        """`target`'s addresses from the additional section, with their TTL."""
        hosts: list[str] = []
        ttl = math.inf
        for rdtype in _ADDRESS_TYPES:
            rrset = extra.get((target, rdtype))
            if rrset is not None:
                hosts.extend(str(rdata) for rdata in rrset)
                ttl = min(ttl, float(rrset.ttl))
        return hosts, ttl


def _endpoints(record: _SrvRecord, hosts: Sequence[str]) -> list[Endpoint]:
    """One endpoint per address of an SRV target, the record's weight split between them."""
    if not hosts:
        return []
    weight = (record.weight or ZERO_WEIGHT) / len(hosts)
    return [Endpoint(host, record.port, weight, None, record.priority) for host in hosts]


class AddressDiscovery(DnsDiscovery):
    """A/AAAA records and a fixed port: `dns://users.example.com:8080`."""

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        super().__init__(url, options)
        netloc, query = _split_url(url, "dns")
        host, self.port = parse_host_port(netloc, what=f"discovery URL {url!r}")
        self.literal = _ip_literal(host)
        self.name = dns.name.root if self.literal else _parse_name(url, host)
        self._set_nameservers(query)

    async def resolve(self) -> _Answer:
        """Query the A and AAAA records (an IP literal host is used as it is)."""
        if self.literal is not None:
            return _Answer((Endpoint(self.literal, self.port),), math.inf)
        hosts, ttl = await self.addresses(self.name)
        if not hosts:
            raise _Unresolved(f"{self.name}: no A or AAAA records")
        return _Answer(_merge(Endpoint(h, self.port) for h in hosts), ttl)
