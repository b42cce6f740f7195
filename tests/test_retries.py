"""Retries against real loopback servers, counting the attempts that reached them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Breaker, Policy, RetryBudget

FAST = Policy(backoff=Backoff(base=0.001, max=0.005))


def test_get_on_503_is_retried_on_another_endpoint(backends: BackendFactory) -> None:
    """A 503 from one endpoint is retried on the other; the caller sees the 200."""
    b = backends(2, status=[503, 200])
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        for _ in range(10):
            response = client.get("http://svc/")
            assert response.status_code == 200
            assert response.extensions["meshlib"]["endpoint"] == b.addresses[1]
    assert b[0].count <= 10
    assert b[0].count + 10 == b.count  # one extra attempt per request that hit b0


def test_retries_are_capped_by_policy_retries(backends: BackendFactory) -> None:
    """With all endpoints answering 503, a GET is sent 1 + retries times, then 503 returned."""
    b = backends(3, status=503)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(retries=2)) as client:
        response = client.get("http://svc/")
    assert response.status_code == 503
    assert response.extensions["meshlib"]["attempts"] == 3
    assert b.count == 3


def test_retries_zero_means_one_attempt_and_no_failover(backends: BackendFactory) -> None:
    """retries=0: one attempt, even for a connection error."""
    b = backends(2)
    b[0].refuse()
    refused = 0
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(retries=0, balancer="round-robin")) as client:
        for _ in range(6):
            try:
                client.get("http://svc/")
            except httpx.ConnectError:
                refused += 1
    assert refused == 3
    assert b[1].count == 3


def test_post_is_never_sent_twice_on_503(backends: BackendFactory) -> None:
    """POST without Idempotency-Key: 503 comes back after exactly one attempt."""
    b = backends(2, status=503)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        for _ in range(5):
            assert client.post("http://svc/", content=b"x").status_code == 503
    assert b.count == 5


@pytest.mark.parametrize("mode", ["close", "reset"])
def test_post_is_never_sent_twice_when_the_connection_drops(backends: BackendFactory,
                                                            mode: str) -> None:
    """A dropped connection after sending a POST raises; the POST reached one server once."""
    b = backends(2, mode=mode)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        with pytest.raises(httpx.TransportError):
            client.post("http://svc/", content=b"payload")
    assert b.count == 1


def test_get_is_retried_when_the_connection_drops(backends: BackendFactory) -> None:
    """A GET whose connection dropped is retried on the other endpoint."""
    b = backends(2, mode=["close", "normal"])
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        for _ in range(5):
            assert client.get("http://svc/").status_code == 200
    assert b[1].count == 5


def test_post_is_retried_on_connection_refused(backends: BackendFactory) -> None:
    """Connection refused proves nothing was sent: a POST fails over to another endpoint."""
    b = backends(2)
    b[0].refuse()
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        for _ in range(6):
            response = client.post("http://svc/", content=b"x")
            assert response.status_code == 200
    assert b[1].count == 6


def test_idempotency_key_allows_retrying_a_post(backends: BackendFactory) -> None:
    """A POST with an Idempotency-Key header is retried on 503."""
    b = backends(2, status=[503, 200])
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        for _ in range(6):
            response = client.post("http://svc/", content=b"x",
                                   headers={"Idempotency-Key": "k1"})
            assert response.status_code == 200


def test_policy_idempotent_true_allows_retrying_a_post(backends: BackendFactory) -> None:
    """meshlib.policy(idempotent=True) makes a POST retryable in its scope only."""
    b = backends(2, status=503)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        with meshlib.policy(idempotent=True):
            client.post("http://svc/", content=b"x")
        assert b.count == 3
        client.post("http://svc/", content=b"x")
        assert b.count == 4


def test_policy_idempotent_false_stops_retrying_a_get(backends: BackendFactory) -> None:
    """idempotent=False forbids retrying a GET after it may have been processed."""
    b = backends(2, status=503)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(idempotent=False)) as client:
        client.get("http://svc/")
    assert b.count == 1


def test_streaming_body_is_never_retried(backends: BackendFactory) -> None:
    """A request whose body is a one-shot iterator is sent once, even as a PUT."""
    b = backends(2, status=503)

    def body() -> Iterator[bytes]:
        yield b"chunk1"
        yield b"chunk2"

    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        response = client.put("http://svc/", content=body())
    assert response.status_code == 503
    assert b.count == 1


def test_status_outside_retry_on_is_returned_at_once(backends: BackendFactory) -> None:
    """A 500 (not in retry_on by default) and a 404 are not retried."""
    b = backends(2, status=[500, 500])
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        assert client.get("http://svc/").status_code == 500
        assert client.get("http://svc/?status=404").status_code == 404
    assert b.count == 2


def test_retry_after_is_honoured_when_it_fits(backends: BackendFactory) -> None:
    """A 503 with Retry-After: 1 is retried after about a second, within the deadline."""
    b = backends(1, status=503, retry_after=1)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(retries=1, timeout=5)) as client:
        start = time.monotonic()
        response = client.get("http://svc/")
        elapsed = time.monotonic() - start
    assert response.status_code == 503
    assert b.count == 2
    assert elapsed >= 0.95  # the retry waited for Retry-After, not the 1 ms backoff


def test_retry_after_longer_than_the_deadline_returns_the_response(
        backends: BackendFactory) -> None:
    """Retry-After beyond the deadline ends the retries and returns that response."""
    b = backends(2, status=503, retry_after=30)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(timeout=2)) as client:
        response = client.get("http://svc/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert b.count == 1


def test_429_retried_only_when_listed(backends: BackendFactory) -> None:
    """429 is retried (honouring Retry-After) only when retry_on includes it."""
    b = backends(2, status=429, retry_after=0)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        client.get("http://svc/")
        assert b.count == 1
        with meshlib.policy(retry_on=(429, 503)):
            client.get("http://svc/")
        assert b.count == 4


def test_budget_caps_retries_in_a_total_outage(backends: BackendFactory) -> None:
    """All endpoints failing: server-side attempts per request stay within ratio + floor."""
    b = backends(3, status=503)
    budget = RetryBudget(ratio=0.2, min_per_second=10, ttl=10)
    requests = 2000
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(retry_budget=budget, retries=3,
                                                breaker=Breaker(failures=10**6))) as client:
        start = time.monotonic()
        for _ in range(requests):
            client.get("http://svc/")
        elapsed = time.monotonic() - start
        balance = client.snapshot()["services"]["svc"]["retry_budget"]["balance"]
    extra = b.count - requests
    floor = budget.min_per_second * (budget.ttl + elapsed)
    assert extra <= requests * budget.ratio + floor
    assert extra >= requests * budget.ratio * 0.9  # the budget was spent, not ignored
    assert balance < 1.0
    # without a budget the same outage would have sent 4x the requests:
    assert b.count < requests * 1.5


def test_connection_refused_everywhere_raises_connect_error(backends: BackendFactory) -> None:
    """When every endpoint refuses, the last ConnectError is raised after the retries."""
    b = backends(2)
    for server in b:
        server.refuse()
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        with pytest.raises(httpx.ConnectError):
            client.get("http://svc/")


def test_retry_with_no_endpoint_fitting_the_deadline_returns_the_answer(
        backends: BackendFactory) -> None:
    """A retry that no endpoint can serve in time is not sent: the 503 comes back at once."""
    b = backends(2, delay_ms=[0, 600])
    policy = FAST.replace(breaker=Breaker(failures=10**6))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        with meshlib.policy(balancer="round-robin"):
            for _ in range(4):  # learn that b1 takes 0.6 s (p2c-ewma then prefers b0)
                client.get("http://svc/")
        b[0].status = 503
        b.reset_counts()
        before = client.snapshot()["services"]["svc"]["retry_budget"]["balance"]
        with meshlib.deadline(0.3):
            start = time.monotonic()
            response = client.get("http://svc/?x")
            elapsed = time.monotonic() - start
        after = client.snapshot()["services"]["svc"]["retry_budget"]["balance"]
    assert response.status_code == 503
    assert response.extensions["meshlib"]["attempts"] == 1
    assert b.count == 1 and elapsed < 0.25
    assert after >= before  # the token drawn for the retry was given back


def test_breakers_opening_during_retries_return_the_last_answer(
        backends: BackendFactory) -> None:
    """Breakers opened by this request's own attempts: the 503 is returned, not
    CircuitOpenError (which means nothing was sent)."""
    b = backends(2, status=503)
    policy = FAST.replace(retries=2, breaker=Breaker(failures=1, reset_timeout=30,
                                                     max_ejection_percent=100))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        response = client.get("http://svc/")
        assert response.status_code == 503
        assert response.extensions["meshlib"]["attempts"] == 2
        with pytest.raises(meshlib.CircuitOpenError):
            client.get("http://svc/")  # now nothing can be sent
    assert b.count == 2
