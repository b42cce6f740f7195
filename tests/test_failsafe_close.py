"""Closing a client under load, and across event loops: nothing is sent twice, nothing
stays open, nothing raises (real loopback servers)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
import pytest

import meshlib
from meshlib.testing import Fleet

POOLS = ["httpcore", "aiohttp"]
#: breakers that stay out of the way: the route's would stop the retries of 10 failures
POLICY = meshlib.Policy(breaker=meshlib.Breaker(failures=1000))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settle_fds(limit: int) -> int:
    """The open fd count, once it is down to ``limit`` (or after 5 s)."""
    deadline = time.monotonic() + 5.0
    count = _fds()
    while count > limit and time.monotonic() < deadline:
        time.sleep(0.02)
        count = _fds()
    return count


@pytest.mark.parametrize("pool", POOLS)
async def test_aclose_under_load_sends_nothing_again(pool: str) -> None:
    """aclose() with 10 GETs in flight: the servers receive 10 (none re-sent through new
    pools), every request ends with a transport error, and no connection stays open."""
    async with Fleet(2, latency=0.5) as fleet:
        before = _fds()
        client = meshlib.AsyncMeshClient(services={"svc": fleet.url}, pool=pool,
                                         policy=POLICY)
        tasks = [asyncio.create_task(client.get("http://svc/")) for _ in range(10)]
        deadline = time.monotonic() + 5.0
        while sum(len(h) for h in fleet.hits()) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await client.aclose()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await asyncio.sleep(0.6)  # past the servers' latency: a re-sent request would land
        assert sum(len(h) for h in fleet.hits()) == 10
        assert all(isinstance(r, httpx.TransportError) for r in results), results
        endpoints = client.snapshot()["services"]["svc"]["endpoints"]
        assert sum(e["inflight"] for e in endpoints) == 0
        assert all(e["breaker"] == "closed" for e in endpoints)  # closing is nobody's fault
        assert _settle_fds(before) <= before


def test_close_under_load_from_threads_sends_nothing_again() -> None:
    """close() with 10 GETs in flight on 10 threads: the same."""
    with Fleet(2, latency=0.5) as fleet:
        before = _fds()
        client = meshlib.MeshClient(services={"svc": fleet.url}, policy=POLICY)
        results: list[object] = []

        def get() -> None:
            try:
                results.append(client.get("http://svc/"))
            except httpx.HTTPError as exc:
                results.append(exc)

        threads = [threading.Thread(target=get) for _ in range(10)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5.0
        while sum(len(h) for h in fleet.hits()) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        client.close()
        for thread in threads:
            thread.join(10.0)
        time.sleep(0.6)
        assert sum(len(h) for h in fleet.hits()) == 10
        assert len(results) == 10
        assert all(isinstance(r, httpx.TransportError) for r in results), results
        assert _settle_fds(before) <= before


@pytest.mark.parametrize("pool", POOLS)
async def test_a_closed_transport_sends_nothing_and_builds_no_pool(pool: str) -> None:
    """A request through a transport closed already raises MeshError: nothing is sent."""
    async with Fleet(1) as fleet:
        transport = meshlib.AsyncMeshTransport(services={"svc": fleet.url}, pool=pool)
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get("http://svc/")).status_code == 200
            await transport.aclose()
            with pytest.raises(meshlib.MeshError, match="closed"):
                await client.get("http://svc/")
        assert len(fleet.hits()[0]) == 1


@pytest.mark.parametrize("pool", POOLS)
def test_aclose_after_following_a_new_event_loop(pool: str) -> None:
    """A client used on two event loops in turn (asyncio.run twice) closes on a third."""
    with Fleet(1) as fleet:
        client = meshlib.AsyncMeshClient(services={"svc": fleet.url}, pool=pool)

        async def use() -> int:
            return (await client.get("http://svc/")).status_code

        assert asyncio.run(use()) == 200
        assert asyncio.run(use()) == 200
        asyncio.run(client.aclose())  # raised "Event loop is closed"
        assert len(fleet.hits()[0]) == 2
