"""Hedged requests and cancellation safety, sync and async."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Breaker, Hedge, Policy

FAST = Policy(backoff=Backoff(base=0.001, max=0.005), breaker=Breaker(failures=10**6))
HEDGED = FAST.replace(hedge=Hedge(delay=0.05), balancer="round-robin")


def _inflight(client: meshlib.MeshClient | meshlib.AsyncMeshClient) -> int:
    snap = client.snapshot()["services"]["svc"]
    return sum(e["inflight"] for e in snap["endpoints"])


def test_slow_first_attempt_is_hedged_and_the_fast_answer_wins(
        backends: BackendFactory) -> None:
    """A 1 s endpoint is hedged after 50 ms; the answer comes from the fast one."""
    b = backends(2, delay_ms=[1000, 0])
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=HEDGED) as client:
        hedged = []
        for _ in range(4):
            start = time.monotonic()
            response = client.get("http://svc/")
            assert time.monotonic() - start < 0.5
            assert response.extensions["meshlib"]["endpoint"] == b.addresses[1]
            hedged.append(response.extensions["meshlib"]["hedged"])
        assert any(hedged)
        assert b[0].count >= 1
        time.sleep(1.2)  # losers finish in their worker threads and are closed there
        assert _inflight(client) == 0


def test_hedged_response_reports_two_attempts(backends: BackendFactory) -> None:
    """extensions: hedged=True and attempts counts the hedge."""
    b = backends(2, delay_ms=[400, 0])
    policy = HEDGED
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        seen = []
        for _ in range(2):
            seen.append(client.get("http://svc/").extensions["meshlib"])
    first_slow = [s for s in seen if s["hedged"]]
    assert first_slow, seen
    assert all(s["attempts"] == 2 for s in first_slow)


def test_post_is_never_hedged(backends: BackendFactory) -> None:
    """A POST waits for its single attempt even when it is slow."""
    b = backends(2, delay_ms=200)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=HEDGED) as client:
        response = client.post("http://svc/", content=b"x")
    assert response.extensions["meshlib"]["hedged"] is False
    assert b.count == 1


def test_fast_answers_are_not_hedged(backends: BackendFactory) -> None:
    """Answers quicker than the hedge delay send exactly one attempt each."""
    b = backends(2)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(hedge=Hedge(delay=0.5))) as client:
        for _ in range(20):
            assert client.get("http://svc/").extensions["meshlib"]["hedged"] is False
    assert b.count == 20


def test_hedges_draw_from_the_retry_budget(backends: BackendFactory) -> None:
    """With an empty budget, no hedge is sent."""
    b = backends(2, delay_ms=[150, 150])
    budget = meshlib.RetryBudget(ratio=0.0, min_per_second=0, ttl=10)
    policy = HEDGED.replace(retry_budget=budget)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(3):
            assert client.get("http://svc/").extensions["meshlib"]["hedged"] is False
    assert b.count == 3


async def test_async_hedge_cancels_the_loser_cleanly(backends: BackendFactory) -> None:
    """The losing attempt is cancelled: in-flight returns to zero at once, no error."""
    b = backends(2, delay_ms=[2000, 0])
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, policy=HEDGED) as client:
        for _ in range(4):
            start = time.monotonic()
            response = await client.get("http://svc/")
            assert time.monotonic() - start < 0.5
            assert response.extensions["meshlib"]["endpoint"] == b.addresses[1]
            assert _inflight(client) == 0


async def test_async_p95_hedge_uses_observed_latency(backends: BackendFactory) -> None:
    """Hedge(delay="p95") hedges requests slower than the recent 95th percentile."""
    b = backends(2, delay_ms=[0, 0])
    policy = FAST.replace(hedge=Hedge(delay="p95", fallback=0.05), balancer="round-robin")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(40):
            await client.get("http://svc/")
        b[0].delay_ms = 500
        hedged = [(await client.get("http://svc/")).extensions["meshlib"]["hedged"]
                  for _ in range(4)]
    assert any(hedged)


async def test_cancelled_async_caller_leaves_no_trace(backends: BackendFactory) -> None:
    """Cancelling a caller mid-request leaves no in-flight count and no breaker failure."""
    b = backends(1, delay_ms=2000)
    policy = FAST.replace(breaker=Breaker(failures=1))
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(3):
            task = asyncio.create_task(client.get("http://svc/"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        snap = client.snapshot()["services"]["svc"]["endpoints"][0]
        assert snap["inflight"] == 0
        assert snap["failures"] == 0
        assert snap["breaker"] == "closed"
        b[0].delay_ms = 0
        assert (await client.get("http://svc/")).status_code == 200


async def test_async_retries_and_idempotency_gate(backends: BackendFactory) -> None:
    """The async client retries a GET on 503 and never a POST."""
    b = backends(2, status=[503, 200])
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        for _ in range(4):
            assert (await client.get("http://svc/")).status_code == 200
        b.reset_counts()
        b[1].status = 503
        assert (await client.post("http://svc/", content=b"x")).status_code == 503
    assert b.count == 1


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_hedges_and_retries_share_one_limit(backends: BackendFactory, retries: int) -> None:
    """retries=N allows N extra attempts in all, hedges included (retries=0: one attempt)."""
    b = backends(4, status=503, delay_ms=30)
    policy = FAST.replace(hedge=Hedge(delay=0.01), retries=retries)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        response = client.get("http://svc/")
        time.sleep(0.1)  # let losing hedges finish in their threads
    assert response.extensions["meshlib"]["attempts"] == retries + 1
    assert b.count == retries + 1


def test_many_threads_with_hedging_do_not_queue_behind_each_other(
        backends: BackendFactory) -> None:
    """96 threads at once with a hedge policy: every request succeeds within its deadline."""
    import threading

    b = backends(2, delay_ms=200)
    policy = FAST.replace(hedge=Hedge(delay=5.0), timeout=1.5)
    results: list[str] = []
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy,
                            limits=httpx.Limits(max_connections=200)) as client:
        def call() -> None:
            try:
                results.append(str(client.get("http://svc/").status_code))
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)

        threads = [threading.Thread(target=call) for _ in range(96)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert results.count("200") == 96, Counter(results)


async def test_cancelled_during_backoff_releases_the_superseded_answer(
        backends: BackendFactory) -> None:
    """A caller cancelled while a retry waits in backoff leaves no connection or count behind.

    ``Retry-After: 1`` makes every retry wait at least 1 s, so the cancel (at 0.3 s)
    always lands in the wait (full jitter alone lets both retries out in time now and then).
    """
    b = backends(1, status=503, retry_after="1")
    policy = FAST.replace(backoff=meshlib.Backoff(base=2.0, max=2.0))
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, policy=policy) as client:
        before = client.snapshot()["services"]["svc"]["retry_budget"]["balance"]
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.get("http://svc/"), 0.3)
        snap = client.snapshot()["services"]["svc"]
    assert snap["endpoints"][0]["inflight"] == 0
    # full jitter may let a retry go out before the cancel: only those spend a token;
    # the token of the retry that was waiting when the caller gave up is given back
    sent_retries = b.count - 3
    expected = before + 3 * policy.retry_budget.ratio - sent_retries
    assert snap["retry_budget"]["balance"] == pytest.approx(expected, abs=0.01)


async def test_cancelled_during_a_hedge_race_releases_every_attempt(
        backends: BackendFactory) -> None:
    """A caller cancelled mid-race: the settled 503 and the pending hedge are both released."""
    b = backends(2, status=[503, 200], delay_ms=[50, 3000])
    policy = FAST.replace(hedge=Hedge(delay=0.02), balancer="round-robin",
                          backoff=meshlib.Backoff(base=2.0, max=2.0))
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(2):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.get("http://svc/"), 0.5)
        assert _inflight(client) == 0
