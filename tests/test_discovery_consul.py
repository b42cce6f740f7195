"""``consul://`` discovery against a fake Consul serving the documented health-API JSON.

Consul itself cannot be installed here, so :class:`servers.FakeConsul` serves
``GET /v1/health/service/NAME`` in Consul's documented shape, with
``X-Consul-Index`` and blocking queries (``index`` and ``wait``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from meshlib._discovery import DiscoveryFailure, discovery_from_url
from meshlib._discovery._consul import ConsulDiscovery, parse_instances
from meshlib._endpoint import Endpoint
from meshlib._errors import ConfigError
from servers import FakeConsul, next_update

entry = FakeConsul.entry


def is_set(update: Any) -> bool:
    """Whether ``update`` is an endpoint set (not a failure)."""
    return isinstance(update, tuple)


@pytest.fixture
def consul() -> Iterator[FakeConsul]:
    """A fake Consul on a free loopback port, with no instances yet."""
    with FakeConsul() as server:
        yield server


@pytest.fixture
async def watch(consul: FakeConsul) -> AsyncIterator[Any]:
    """``updates()`` of a ConsulDiscovery for ``users`` with short waits, closed afterwards."""
    discovery = ConsulDiscovery(f"consul://{consul.address}/users")
    discovery.WAIT = 1.0
    discovery.BACKOFF_INITIAL = 0.05
    discovery.BACKOFF_MAX = 0.2
    discovery.MIN_INTERVAL = 0.01
    updates = discovery.updates()
    yield updates
    await updates.aclose()


@pytest.mark.parametrize("url", [
    "consul://127.0.0.1:8500",
    "consul://127.0.0.1:8500/",
    "consul:///users",
    "consul://127.0.0.1:0/users",
    "consul://127.0.0.1:8500/users?near=_agent",
    "consul://127.0.0.1:8500/us%20ers",
])
def test_bad_urls_raise_config_error_naming_the_url(url: str) -> None:
    """A malformed Consul URL raises ConfigError that names the URL."""
    with pytest.raises(ConfigError) as info:
        discovery_from_url(url)
    assert repr(url) in str(info.value)


def test_url_defaults_and_passed_on_parameters() -> None:
    """The port defaults to 8500; dc and tag are passed on to Consul."""
    discovery = ConsulDiscovery("consul://consul.local/users?dc=dc2&tag=v1")
    assert (discovery.host, discovery.port, discovery.service) == ("consul.local", 8500, "users")
    assert ("dc", "dc2") in discovery._params() and ("tag", "v1") in discovery._params()


def test_documented_shape_is_read(caplog: pytest.LogCaptureFixture) -> None:
    """Service.Address (else Node.Address), Port, Weights.Passing and Meta.zone are used."""
    data = [
        entry("10.0.0.1", 8001, weight=3, zone="eu-1"),
        entry("10.0.0.2", 8002, service_address="127.0.0.2"),
        entry("10.0.0.3", 8003, passing=False),
        {"Node": {"Address": "10.0.0.4"}, "Service": {"Port": "x"}, "Checks": []},
    ]
    with caplog.at_level(logging.WARNING, logger="meshlib.discovery"):
        endpoints = parse_instances(data)
    assert endpoints == (Endpoint("10.0.0.1", 8001, 3.0, "eu-1"),
                         Endpoint("127.0.0.2", 8002))
    assert any("instance 3" in r.getMessage() for r in caplog.records)


async def test_initial_answer_and_blocking_updates(consul: FakeConsul, watch: Any) -> None:
    """The first answer comes at once; later changes arrive through blocking queries."""
    consul.set_instances("users", [entry("127.0.0.1", 8001)])
    assert await next_update(watch) == (Endpoint("127.0.0.1", 8001),)
    pending = asyncio.create_task(next_update(watch, timeout=2))
    await asyncio.sleep(0.2)
    assert consul.requests[-1] == {"passing": "true", "index": str(consul.index), "wait": "1s"}
    started = time.monotonic()
    consul.set_instances("users", [entry("127.0.0.1", 8001), entry("127.0.0.1", 8002,
                                                                   node="node2")])
    update = await pending
    assert [e.port for e in update] == [8001, 8002]
    assert time.monotonic() - started < 0.5


async def test_failing_checks_are_left_out(consul: FakeConsul, watch: Any) -> None:
    """An instance whose check turns critical leaves the set (passing=true)."""
    consul.set_instances("users", [entry("127.0.0.1", 8001),
                                   entry("127.0.0.1", 8002, node="n2")])
    assert len(await next_update(watch)) == 2
    consul.set_instances("users", [entry("127.0.0.1", 8001),
                                   entry("127.0.0.1", 8002, node="n2", passing=False)])
    assert await next_update(watch, timeout=2) == (Endpoint("127.0.0.1", 8001),)


async def test_timed_out_wait_yields_nothing_new(consul: FakeConsul, watch: Any) -> None:
    """A blocking query that times out with the same index is not reported again."""
    consul.set_instances("users", [entry("127.0.0.1", 8001)])
    assert await next_update(watch)
    with pytest.raises(asyncio.TimeoutError):
        await next_update(watch, lambda _: True, timeout=1.6)
    assert len(consul.requests) >= 3


async def test_index_going_backwards_is_reset(consul: FakeConsul, watch: Any) -> None:
    """When X-Consul-Index goes backwards the index is reset and the new set is taken."""
    consul.set_instances("users", [entry("127.0.0.1", 8001)], force_index=100)
    assert await next_update(watch)
    consul.set_instances("users", [entry("127.0.0.1", 8003)], force_index=5)
    assert await next_update(watch, timeout=2) == (Endpoint("127.0.0.1", 8003),)
    assert consul.requests[-1]["index"] == "100"
    assert await next_update(watch, timeout=2) == (Endpoint("127.0.0.1", 8003),)
    assert "index" not in consul.requests[-1]


async def test_server_errors_fail_then_recover(consul: FakeConsul, watch: Any) -> None:
    """HTTP 500 answers yield DiscoveryFailure, then the set comes back."""
    consul.set_instances("users", [entry("127.0.0.1", 8001)])
    consul.fail_next = 2
    failure = await next_update(watch, lambda _: True)
    assert isinstance(failure, DiscoveryFailure) and "500" in failure.reason
    assert await next_update(watch, is_set, timeout=2) == (Endpoint("127.0.0.1", 8001),)


async def test_unknown_service_is_an_empty_set(consul: FakeConsul) -> None:
    """A service Consul does not know answers an empty list: an empty set."""
    updates = ConsulDiscovery(f"consul://{consul.address}/nobody").updates()
    try:
        assert await next_update(updates, lambda _: True) == ()
    finally:
        await updates.aclose()


async def test_unreachable_consul_is_a_failure() -> None:
    """A Consul that is not there yields DiscoveryFailure, not an exception."""
    with FakeConsul() as server:
        address = server.address
    discovery = ConsulDiscovery(f"consul://{address}/users")
    updates = discovery.updates()
    try:
        assert isinstance(await next_update(updates, lambda _: True), DiscoveryFailure)
    finally:
        await updates.aclose()


def test_index_rules_follow_consuls_blocking_query_guidance() -> None:
    """An index <= 0 becomes 1 (so the next query blocks); one going backwards resets to 0."""
    discovery = ConsulDiscovery("consul://127.0.0.1:8500/users")
    assert discovery._advance(0) and discovery.index == 1
    assert discovery._advance(-3) and discovery.index == 1
    assert discovery._advance(7) and discovery.index == 7
    assert not discovery._advance(7)  # a timed-out wait: nothing new
    assert discovery._advance(3) and discovery.index == 0


def test_a_bad_instance_is_skipped_and_warned_about_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """Garbage in one instance skips it; repeating the same answer does not warn again."""
    good = {"Node": {"Address": "127.0.0.1"}, "Service": {"Address": "", "Port": 8001},
            "Checks": []}
    bad = {"Node": {"Address": "127.0.0.1"}, "Service": {"Address": "", "Port": 8002},
           "Checks": 5}
    url = "consul://127.0.0.1:1/garbage"
    for _ in range(3):
        assert [e.port for e in parse_instances([good, bad], url=url)] == [8001]
    warnings = [r for r in caplog.records if "skipping instance 1" in r.getMessage()]
    assert len(warnings) == 1
