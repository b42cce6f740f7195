"""``etcd://`` discovery and ``meshlib.etcd.EtcdRegistration`` against a real etcd."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from meshlib._discovery import DiscoveryFailure, discovery_from_url
from meshlib._discovery._etcd import EtcdDiscovery, parse_etcd_url
from meshlib._endpoint import Endpoint
from meshlib._errors import ConfigError
from meshlib.etcd import EtcdRegistration
from servers import Etcd, free_port, next_update

PREFIX = "/mesh/users"

pytestmark = pytest.mark.server


def is_set(update: Any) -> bool:
    """Whether ``update`` is an endpoint set (not a failure)."""
    return isinstance(update, tuple)


def ports(update: Any) -> list[int]:
    """The endpoint ports of a set, sorted."""
    return sorted(e.port for e in update)


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    """A fresh single-member etcd on free loopback ports."""
    with Etcd() as server:
        yield server


@pytest.fixture
async def watch(etcd: Etcd) -> AsyncIterator[Any]:
    """``updates()`` of an EtcdDiscovery on PREFIX with a short backoff, closed afterwards."""
    discovery = EtcdDiscovery(f"etcd://{etcd.address}{PREFIX}")
    discovery.BACKOFF_INITIAL = 0.05
    discovery.BACKOFF_MAX = 0.2
    updates = discovery.updates()
    yield updates
    await updates.aclose()


def entry(port: int, **extra: Any) -> dict[str, Any]:
    """A registration value for 127.0.0.1:``port``."""
    return {"host": "127.0.0.1", "port": port, **extra}


@pytest.mark.parametrize("url", [
    "etcd://127.0.0.1:2379",
    "etcd://127.0.0.1:2379/",
    "etcd:///mesh/users",
    "etcd://127.0.0.1:99999/mesh",
    "etcd://127.0.0.1:2379/mesh?x=1",
    "etcd://::1:2379/mesh",
])
def test_bad_urls_raise_config_error_naming_the_url(url: str) -> None:
    """A malformed etcd URL raises ConfigError that names the URL."""
    with pytest.raises(ConfigError) as info:
        discovery_from_url(url)
    assert repr(url) in str(info.value)


def test_url_parts() -> None:
    """The prefix always ends with '/', the port defaults to 2379, IPv6 is bracketed."""
    assert parse_etcd_url("etcd://127.0.0.1/mesh/users/") == ("127.0.0.1", 2379, "/mesh/users/")
    assert parse_etcd_url("etcd://[::1]:12379/a") == ("::1", 12379, "/a/")
    assert EtcdDiscovery("etcd://[::1]:12379/a").base_url == "http://[::1]:12379"


async def test_initial_range_skips_bad_values(etcd: Etcd, watch: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Keys under the prefix are read at start; a bad value is skipped with a warning."""
    etcd.put(f"{PREFIX}/a", entry(8001, weight=2, zone="z1"))
    etcd.put(f"{PREFIX}/b", entry(8002))
    etcd.put(f"{PREFIX}/bad", "not json")
    etcd.put(f"{PREFIX}2/c", entry(8003))
    etcd.put("/mesh/user", entry(8004))
    with caplog.at_level(logging.WARNING, logger="meshlib.discovery"):
        update = await next_update(watch)
    assert update == (Endpoint("127.0.0.1", 8001, 2.0, "z1"), Endpoint("127.0.0.1", 8002))
    assert any("/mesh/users/bad" in r.getMessage() for r in caplog.records)


async def test_watch_follows_puts_and_deletes(etcd: Etcd, watch: Any) -> None:
    """Keys put, changed and deleted after start are followed through the watch."""
    assert await next_update(watch, lambda _: True) == ()
    etcd.put(f"{PREFIX}/a", entry(8001))
    assert ports(await next_update(watch)) == [8001]
    etcd.put(f"{PREFIX}/b", entry(8002))
    assert ports(await next_update(watch)) == [8001, 8002]
    etcd.put(f"{PREFIX}/a", entry(8001, weight=5))
    update = await next_update(watch)
    assert update[0] == Endpoint("127.0.0.1", 8001, 5.0)
    etcd.delete(f"{PREFIX}/b")
    assert ports(await next_update(watch)) == [8001]
    etcd.put(f"{PREFIX}/a", '{"host": "127.0.0.1"}')
    assert await next_update(watch, lambda _: True) == ()


async def test_expired_lease_removes_the_endpoint(etcd: Etcd, watch: Any) -> None:
    """A key on a lease that is not kept alive disappears when the lease expires."""
    lease = etcd.grant(2)
    etcd.put(f"{PREFIX}/a", entry(8001), lease=lease)
    etcd.put(f"{PREFIX}/b", entry(8002))
    assert ports(await next_update(watch)) == [8001, 8002]
    update = await next_update(watch, lambda u: is_set(u) and len(u) == 1, timeout=8)
    assert ports(update) == [8002]


async def test_etcd_restart_fails_then_recovers(etcd: Etcd, watch: Any) -> None:
    """Killing etcd yields a failure; after a restart the set is read and watched again."""
    etcd.put(f"{PREFIX}/a", entry(8001))
    assert ports(await next_update(watch)) == [8001]
    etcd.kill_process()
    failure = await next_update(watch, lambda u: isinstance(u, DiscoveryFailure))
    assert "etcd" in failure.reason
    await asyncio.to_thread(etcd.start)
    assert ports(await next_update(watch, is_set, timeout=10)) == [8001]
    etcd.put(f"{PREFIX}/b", entry(8002))
    assert ports(await next_update(watch)) == [8001, 8002]


async def test_unreachable_etcd_is_a_failure(watch: Any, etcd: Etcd) -> None:
    """An etcd that is not running yields DiscoveryFailure, not an exception."""
    etcd.kill_process()
    update = await next_update(watch, lambda _: True)
    assert isinstance(update, DiscoveryFailure)


def test_registration_sync_keeps_the_lease_alive(etcd: Etcd) -> None:
    """A sync registration outlives its TTL while alive and is removed on exit."""
    url = f"etcd://{etcd.address}{PREFIX}"
    with EtcdRegistration(url, "127.0.0.1", 8001, weight=3, zone="z1", ttl=2) as reg:
        assert etcd.keys(PREFIX + "/") == [f"{PREFIX}/127.0.0.1:8001"]
        assert reg.lease is not None

        time.sleep(3)
        assert etcd.keys(PREFIX + "/") == [f"{PREFIX}/127.0.0.1:8001"]
    assert etcd.keys(PREFIX + "/") == []


async def test_registration_async_is_discovered(etcd: Etcd, watch: Any) -> None:
    """An async registration is seen by discovery and removed on exit."""
    assert await next_update(watch, lambda _: True) == ()
    url = f"etcd://{etcd.address}{PREFIX}"
    async with EtcdRegistration(url, "::1", 8002, zone="z2", ttl=2):
        assert await next_update(watch) == (Endpoint("::1", 8002, 1.0, "z2"),)
        await asyncio.sleep(2.5)
        assert etcd.keys(PREFIX + "/") == [f"{PREFIX}/[::1]:8002"]
    assert await next_update(watch, lambda _: True) == ()


def test_registration_recovers_a_lost_lease(etcd: Etcd) -> None:
    """When the lease is revoked behind its back, the registration puts the key again."""
    registration = EtcdRegistration(f"etcd://{etcd.address}{PREFIX}", "127.0.0.1", 8001, ttl=3)
    registration.register()
    try:
        etcd.call("/v3/lease/revoke", {"ID": registration.lease})
        assert etcd.keys(PREFIX + "/") == []

        deadline = time.monotonic() + 5
        while not etcd.keys(PREFIX + "/") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert etcd.keys(PREFIX + "/") == [f"{PREFIX}/127.0.0.1:8001"]
    finally:
        registration.deregister()
    assert etcd.keys(PREFIX + "/") == []


def test_registration_puts_a_deleted_key_again(etcd: Etcd) -> None:
    """A key deleted while its lease lives (or a put that failed) is put again."""
    registration = EtcdRegistration(f"etcd://{etcd.address}{PREFIX}", "127.0.0.1", 8001, ttl=3)
    registration.register()
    try:
        etcd.delete(f"{PREFIX}/127.0.0.1:8001")
        assert etcd.keys(PREFIX + "/") == []
        deadline = time.monotonic() + 5
        while not etcd.keys(PREFIX + "/") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert etcd.keys(PREFIX + "/") == [f"{PREFIX}/127.0.0.1:8001"]
    finally:
        registration.deregister()
    assert etcd.keys(PREFIX + "/") == []


def test_registration_validates_its_arguments() -> None:
    """Bad registration values raise ConfigError before anything is sent."""
    with pytest.raises(ConfigError):
        EtcdRegistration("etcd://127.0.0.1:2379/mesh", "127.0.0.1", 0)
    with pytest.raises(ConfigError):
        EtcdRegistration("etcd://127.0.0.1:2379/mesh", "127.0.0.1", 80, ttl=1)
    with pytest.raises(ConfigError):
        EtcdRegistration("etcd://127.0.0.1:2379/", "127.0.0.1", 80)


async def test_registration_needs_a_reachable_etcd() -> None:
    """register() and aregister() raise httpx errors when etcd is not there."""
    registration = EtcdRegistration(f"etcd://127.0.0.1:{free_port()}/mesh", "127.0.0.1", 80)
    with pytest.raises(httpx.ConnectError):
        registration.register()
    with pytest.raises(httpx.ConnectError):
        await registration.aregister()
    registration.deregister()
    await registration.aderegister()


async def test_a_gateway_that_fails_every_watch_is_not_hammered() -> None:
    """Range works, every watch fails: reconnections back off instead of looping fast."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            hits.append(self.path)
            body, status = (b'{"header":{"revision":"5"}}', 200) if "range" in self.path \
                else (b"not here", 404)
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    discovery = EtcdDiscovery(f"etcd://127.0.0.1:{server.server_address[1]}/mesh/svc")
    updates = discovery.updates()
    try:
        async def consume() -> None:
            async for _ in updates:
                pass

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consume(), 3.2)
    finally:
        await updates.aclose()
        server.shutdown()
        server.server_close()
    watches = sum("watch" in path for path in hits)
    assert 2 <= watches <= 4, hits  # 0.5 s, 1 s, 2 s apart; a fixed 0.5 s would give 6
