"""DNS discovery (``dns+srv://`` and ``dns://``) against real dnsmasq and BIND servers."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dns.rdatatype
import pytest

from meshlib._discovery import DiscoveryFailure, DiscoveryOptions, discovery_from_url
from meshlib._discovery._dns import ZERO_WEIGHT, AddressDiscovery, SrvDiscovery
from meshlib._endpoint import Endpoint
from meshlib._errors import ConfigError
from servers import Bind, Dnsmasq, free_port, next_update, require_binary

SRV = "_http._tcp.svc.mesh.test"

pytestmark = pytest.mark.server


def is_set(update: Any) -> bool:
    """Whether ``update`` is an endpoint set (not a failure)."""
    return isinstance(update, tuple)


def addresses(update: Any) -> list[str]:
    """The endpoint addresses of a set, sorted."""
    return sorted(e.address for e in update)


@pytest.fixture
async def run() -> AsyncIterator[Any]:
    """Start ``updates()`` of a discovery; every generator is closed after the test."""
    started: list[Any] = []

    def start(discovery: Any) -> Any:
        updates = discovery.updates()
        started.append(updates)
        return updates

    yield start
    for updates in started:
        await updates.aclose()


@pytest.fixture
def static_srv() -> Iterator[Dnsmasq]:
    """dnsmasq with SRV records of two priorities, weights 60/20/0 and dual-stack targets."""
    with Dnsmasq([
        f"srv-host={SRV},node1.mesh.test,18081,10,60",
        f"srv-host={SRV},node2.mesh.test,18082,10,20",
        f"srv-host={SRV},node3.mesh.test,18083,10,0",
        f"srv-host={SRV},node4.mesh.test,18084,20,5",
        "host-record=node1.mesh.test,127.0.0.1,::1",
        "host-record=node2.mesh.test,127.0.0.2",
        "host-record=node3.mesh.test,127.0.0.3",
        "host-record=node4.mesh.test,127.0.0.4",
        "host-record=users.mesh.test,127.0.0.1,::1",
        "host-record=users.mesh.test,127.0.0.2",
    ], ttl=5) as server:
        yield server


# -- URL validation ---------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "dns+srv://",
    "dns+srv://_http._tcp.svc.mesh.test:53",
    "dns+srv://_http._tcp.svc.mesh.test/path",
    "dns+srv://bad..name",
    "dns+srv://svc.mesh.test?nameserver=ns.example.com:53",
    "dns+srv://svc.mesh.test?nameserver=127.0.0.1:0",
    "dns+srv://svc.mesh.test?timeout=3",
    "dns://users.mesh.test",
    "dns://users.mesh.test:http",
    "dns://users.mesh.test:70000",
    "dns://:8080",
    "dns://users.mesh.test:8080?nameserver=[::1",
])
def test_bad_urls_raise_config_error_naming_the_url(url: str) -> None:
    """A malformed DNS discovery URL raises ConfigError that names the URL."""
    with pytest.raises(ConfigError) as info:
        discovery_from_url(url)
    assert repr(url) in str(info.value)


def test_nameservers_come_from_url_then_options() -> None:
    """?nameserver= (repeatable, IPv6 in brackets, port 53 by default) beats the options."""
    options = DiscoveryOptions(dns_nameserver=("127.0.0.9", 5353))
    srv = SrvDiscovery(
        "dns+srv://_x._tcp.a.test?nameserver=[::1]:5300&nameserver=127.0.0.1", options)
    assert srv.nameservers == (("::1", 5300), ("127.0.0.1", 53))
    address = AddressDiscovery("dns://a.test:80", options)
    assert address.nameservers == (("127.0.0.9", 5353),)
    assert AddressDiscovery("dns://a.test:80").nameservers == ()


def test_configured_resolver_never_reads_resolv_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a nameserver given, the resolver is built with configure=False."""
    import dns.asyncresolver

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("read /etc/resolv.conf")

    monkeypatch.setattr(dns.asyncresolver.Resolver, "read_resolv_conf", refuse)
    resolver = SrvDiscovery("dns+srv://_x._tcp.a.test?nameserver=127.0.0.1:5300").resolver()
    assert [(n.address, n.port) for n in resolver.nameservers] == [("127.0.0.1", 5300)]
    assert resolver.cache is None


# -- dnsmasq: static sets ---------------------------------------------------------------

async def test_srv_priorities_weights_and_targets(static_srv: Dnsmasq, run: Any) -> None:
    """SRV priority and weight reach the endpoints; a weight-0 record gets ZERO_WEIGHT."""
    discovery = discovery_from_url(f"dns+srv://{SRV}?nameserver={static_srv.nameserver}")
    update = await next_update(run(discovery))
    assert update == (
        Endpoint("127.0.0.1", 18081, 30.0, None, 10),
        Endpoint("127.0.0.2", 18082, 20.0, None, 10),
        Endpoint("127.0.0.3", 18083, ZERO_WEIGHT, None, 10),
        Endpoint("::1", 18081, 30.0, None, 10),
        Endpoint("127.0.0.4", 18084, 5.0, None, 20),
    )


async def test_srv_targets_come_from_the_additional_section(static_srv: Dnsmasq,
                                                            run: Any) -> None:
    """When the SRV answer carries the targets' addresses, no further query is sent."""
    discovery = SrvDiscovery(f"dns+srv://{SRV}?nameserver={static_srv.nameserver}")
    sent: list[str] = []
    query = discovery.query

    async def counting(name: Any, rdtype: Any) -> Any:
        sent.append(dns.rdatatype.to_text(rdtype))
        return await query(name, rdtype)

    discovery.query = counting  # type: ignore[method-assign]
    assert is_set(await next_update(run(discovery)))
    assert sent == ["SRV"]


async def test_srv_targets_without_additional_records_are_queried(run: Any) -> None:
    """Targets missing from the additional section are resolved through the same server."""
    with Dnsmasq([f"srv-host={SRV},node1.mesh.test,18081,1,1",
                  "address=/node1.mesh.test/127.0.0.7"], ttl=5) as server:
        discovery = SrvDiscovery(f"dns+srv://{SRV}?nameserver={server.nameserver}")
        update = await next_update(run(discovery))
    assert addresses(update) == ["127.0.0.7:18081"]


async def test_srv_ip_literal_target_is_used_as_is(run: Any) -> None:
    """An SRV target that is an IP literal becomes an endpoint without a lookup."""
    with Dnsmasq([f"srv-host={SRV},127.0.0.5,18085,1,1"], ttl=5) as server:
        discovery = SrvDiscovery(f"dns+srv://{SRV}?nameserver={server.nameserver}")
        update = await next_update(run(discovery))
    assert update == (Endpoint("127.0.0.5", 18085, 1.0, None, 1),)


async def test_address_records_with_fixed_port(static_srv: Dnsmasq, run: Any) -> None:
    """dns://NAME:PORT yields every A and AAAA address with the URL's port."""
    options = DiscoveryOptions(dns_nameserver=("127.0.0.1", static_srv.port))
    discovery = discovery_from_url("dns://users.mesh.test:8080", options)
    update = await next_update(run(discovery))
    assert addresses(update) == ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080"]


async def test_address_ip_literal_needs_no_server(run: Any) -> None:
    """dns://IP:PORT yields that address as it is."""
    discovery = discovery_from_url("dns://[::1]:8080?nameserver=127.0.0.1:9")
    assert await next_update(run(discovery)) == (Endpoint("::1", 8080),)


async def test_ttl_is_honoured_and_changes_are_followed(run: Any) -> None:
    """A changed record set is picked up once the answer's TTL has run out."""
    records = [f"srv-host={SRV},node1.mesh.test,18081,1,1",
               "host-record=node1.mesh.test,127.0.0.1"]
    with Dnsmasq(records, ttl=2) as server:
        updates = run(SrvDiscovery(f"dns+srv://{SRV}?nameserver={server.nameserver}"))
        first = await next_update(updates)
        assert addresses(first) == ["127.0.0.1:18081"]
        server.start([*records, f"srv-host={SRV},node1.mesh.test,18082,1,1"], ttl=2)
        changed_at = time.monotonic()
        second = await next_update(updates, lambda u: is_set(u) and len(u) == 2, timeout=5)
        elapsed = time.monotonic() - changed_at
    assert addresses(second) == ["127.0.0.1:18081", "127.0.0.1:18082"]
    assert elapsed < 3.0


async def test_ttl_below_one_second_is_treated_as_one(run: Any) -> None:
    """With TTL 0 the discovery re-queries about once a second, not in a tight loop."""
    with Dnsmasq([f"srv-host={SRV},node1.mesh.test,18081,1,1",
                  "host-record=node1.mesh.test,127.0.0.1"], ttl=0) as server:
        updates = run(SrvDiscovery(f"dns+srv://{SRV}?nameserver={server.nameserver}"))
        stamps = []
        for _ in range(3):
            assert is_set(await next_update(updates, lambda _: True))
            stamps.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.9 <= gap < 2.5 for gap in gaps), gaps


async def test_nxdomain_is_a_failure_then_recovers(run: Any) -> None:
    """NXDOMAIN yields DiscoveryFailure, and the set arrives once the name exists."""
    with Dnsmasq(["host-record=other.mesh.test,127.0.0.1"], ttl=1) as server:
        discovery = SrvDiscovery(f"dns+srv://{SRV}?nameserver={server.nameserver}")
        discovery.BACKOFF_INITIAL = 0.05
        updates = run(discovery)
        failure = await next_update(updates, lambda _: True)
        assert isinstance(failure, DiscoveryFailure)
        assert "NXDOMAIN" in failure.reason
        server.start([f"srv-host={SRV},127.0.0.1,18081,1,1"], ttl=1)
        assert addresses(await next_update(updates, is_set)) == ["127.0.0.1:18081"]


async def test_unresolvable_targets_are_a_failure(run: Any) -> None:
    """An SRV set whose targets have no address is a failure, not an empty set."""
    with Dnsmasq([f"srv-host={SRV},ghost.mesh.test,18081,1,1"], ttl=1) as server:
        discovery = SrvDiscovery(f"dns+srv://{SRV}?nameserver={server.nameserver}")
        update = await next_update(run(discovery), lambda _: True)
    assert isinstance(update, DiscoveryFailure)
    assert "no target" in update.reason


async def test_silent_server_fails_and_backs_off(run: Any) -> None:
    """An unreachable nameserver yields failures, spaced by a doubling backoff."""
    discovery = AddressDiscovery(f"dns://users.mesh.test:80?nameserver=127.0.0.1:{free_port()}")
    discovery.QUERY_LIFETIME = 0.2
    discovery.BACKOFF_INITIAL = 0.1
    discovery.BACKOFF_MAX = 0.4
    updates = run(discovery)
    stamps = []
    for _ in range(5):
        update = await next_update(updates, lambda _: True)
        assert isinstance(update, DiscoveryFailure)
        stamps.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # each gap is the query time plus the backoff: 0.1, 0.2, 0.4, 0.4 (capped)
    assert gaps[1] > gaps[0] + 0.05
    assert gaps[3] < gaps[2] + 0.15


# -- BIND: records changed at run time ----------------------------------------------------

@pytest.fixture
def bind() -> Iterator[Bind]:
    """BIND serving mesh.test with one SRV record (TTL 1) and two hosts."""
    with Bind([
        "node1 IN A 127.0.0.1",
        "node2 IN A 127.0.0.2",
        "node2 IN AAAA ::1",
        "_http._tcp.svc 1 IN SRV 10 60 18081 node1.mesh.test.",
    ], ttl=1) as server:
        yield server


async def test_bind_dynamic_add_and_remove_are_followed(bind: Bind, run: Any) -> None:
    """Records added and removed with dynamic updates show up within the TTL."""
    updates = run(discovery_from_url(f"dns+srv://{SRV}?nameserver={bind.nameserver}"))
    assert addresses(await next_update(updates, is_set)) == ["127.0.0.1:18081"]

    bind.update(add=[("_http._tcp.svc", 1, "SRV", "20 100 18082 node2.mesh.test.")])
    update = await next_update(updates, lambda u: is_set(u) and len(u) == 3, timeout=4)
    assert update == (
        Endpoint("127.0.0.1", 18081, 60.0, None, 10),
        Endpoint("127.0.0.2", 18082, 50.0, None, 20),
        Endpoint("::1", 18082, 50.0, None, 20),
    )

    bind.update(delete=[("_http._tcp.svc", "SRV", "10 60 18081 node1.mesh.test.")])
    update = await next_update(updates, lambda u: is_set(u) and len(u) == 2, timeout=4)
    assert addresses(update) == ["127.0.0.2:18082", "[::1]:18082"]


async def test_bind_removed_set_is_a_failure(bind: Bind, run: Any) -> None:
    """When the whole SRV set is deleted (NXDOMAIN), the discovery reports a failure."""
    discovery = SrvDiscovery(f"dns+srv://{SRV}?nameserver={bind.nameserver}")
    discovery.BACKOFF_INITIAL = 0.05
    updates = run(discovery)
    assert is_set(await next_update(updates, is_set))
    bind.update(delete=[("_http._tcp.svc", "SRV", None)])
    failure = await next_update(updates, lambda u: isinstance(u, DiscoveryFailure), timeout=4)
    assert "NXDOMAIN" in failure.reason


async def test_bind_address_records_follow_updates(bind: Bind, run: Any) -> None:
    """dns://NAME:PORT follows A/AAAA records changed at run time."""
    bind.update(add=[("users", 1, "A", "127.0.0.11")])
    updates = run(AddressDiscovery(f"dns://users.mesh.test:9000?nameserver={bind.nameserver}"))
    assert addresses(await next_update(updates, is_set)) == ["127.0.0.11:9000"]
    bind.update(add=[("users", 1, "AAAA", "::1")], delete=[("users", "A", None)])
    update = await next_update(updates, lambda u: is_set(u) and u[0].host == "::1", timeout=4)
    assert addresses(update) == ["[::1]:9000"]


def test_registry_maps_dns_schemes() -> None:
    """The dns+srv and dns schemes build the DNS kinds."""
    assert isinstance(discovery_from_url("dns+srv://_a._tcp.b.test"), SrvDiscovery)
    assert isinstance(discovery_from_url("dns://b.test:1"), AddressDiscovery)


def test_missing_binary_skips_or_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing server binary skips the test, or fails it when CI=true."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_binary("meshlib-no-such-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_binary("meshlib-no-such-server")


async def test_one_failing_srv_target_does_not_fail_the_set(run: Any) -> None:
    """A target whose lookup is refused is left out; the others are still used."""
    with Dnsmasq([
        f"srv-host={SRV},node1.mesh.test,18081,10,10",
        f"srv-host={SRV},gone.other.test,18082,10,10",
        "host-record=node1.mesh.test,127.0.0.1",
    ]) as dns_server:
        discovery = discovery_from_url(f"dns+srv://{SRV}?nameserver={dns_server.nameserver}")
        update = await next_update(run(discovery))
    assert addresses(update) == ["127.0.0.1:18081"]
