"""meshlib.testing.set_testing: retry sleeps off, and a cap on attempts (hedges included)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import meshlib
import meshlib.testing
from conftest import BackendFactory
from meshlib.testing import Fleet


@pytest.fixture
def testing_mode() -> Iterator[None]:
    meshlib.testing.set_testing(True)
    yield
    meshlib.testing.set_testing(False)


def test_set_testing_skips_retry_after_waits(testing_mode: None,
                                             backends: BackendFactory) -> None:
    """With testing on, a Retry-After: 2 retry happens at once; the attempts still count."""
    b = backends(1, status=503, retry_after=2)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=meshlib.Policy(retries=1)) as client:
        start = time.monotonic()
        assert client.get("http://svc/").status_code == 503
        assert time.monotonic() - start < 1.5
    assert b.count == 2
    assert meshlib.testing.is_testing()


async def test_set_testing_applies_to_async(testing_mode: None,
                                            backends: BackendFactory) -> None:
    """The async client's retries do not sleep either."""
    b = backends(1, status=503, retry_after=2)
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url},
                                       policy=meshlib.Policy(retries=1)) as client:
        start = time.monotonic()
        assert (await client.get("http://svc/")).status_code == 503
        assert time.monotonic() - start < 1.5
    assert b.count == 2


def _policy(**changes: Any) -> meshlib.Policy:
    return meshlib.Policy(retries=3, backoff=meshlib.Backoff(base=0.001, max=0.002)).replace(
        **changes)


def _failing_get(fleet: Fleet, policy: meshlib.Policy | None = None) -> int:
    """How many attempts one GET to an always-503 fleet made (the hits are forgotten)."""
    with meshlib.MeshClient(services={"svc": fleet.url}, policy=policy or _policy()) as client:
        status = client.get("http://svc/").status_code
    hits = sum(len(h) for h in fleet.hits())
    fleet.reset_hits()
    assert status == 503
    return hits


def test_attempts_as_a_call() -> None:
    with Fleet(1, error_rate=1.0) as fleet:
        assert _failing_get(fleet) == 4  # retries=3: 4 attempts
        meshlib.testing.set_testing(True, attempts=1)
        assert meshlib.testing.is_testing()
        assert _failing_get(fleet) == 1
        meshlib.testing.set_testing(True, attempts=2)
        assert _failing_get(fleet) == 2
        meshlib.testing.set_testing(True, attempts=10)  # a cap above the policy changes nothing
        assert _failing_get(fleet) == 4
        meshlib.testing.set_testing(False)
        assert not meshlib.testing.is_testing()
        assert _failing_get(fleet) == 4


def test_attempts_as_a_context_manager_restores_the_previous_state() -> None:
    with Fleet(1, error_rate=1.0) as fleet:
        with meshlib.testing.set_testing(attempts=1):
            assert meshlib.testing.is_testing()
            assert _failing_get(fleet) == 1
            with meshlib.testing.set_testing(attempts=2):
                assert _failing_get(fleet) == 2
            assert _failing_get(fleet) == 1  # the outer cap is back
        assert not meshlib.testing.is_testing()
        assert _failing_get(fleet) == 4
        meshlib.testing.set_testing(True)
        with meshlib.testing.set_testing(False):
            assert not meshlib.testing.is_testing()
        assert meshlib.testing.is_testing()  # restored to on, without a cap
        assert _failing_get(fleet) == 4


def test_attempts_also_caps_scoped_policies() -> None:
    with Fleet(1, error_rate=1.0) as fleet, meshlib.testing.set_testing(attempts=2):
        with meshlib.MeshClient(services={"svc": fleet.url}, policy=_policy()) as client:
            with meshlib.policy(retries=5, idempotent=True):
                assert client.post("http://svc/").status_code == 503
        assert len(fleet.hits()[0]) == 2


def test_hedges_count_toward_the_cap() -> None:
    hedging = _policy(retries=2, hedge=meshlib.Hedge(delay=0.02, max_attempts=3))
    with Fleet(3, latency=0.3) as fleet:
        with meshlib.MeshClient(services={"svc": fleet.url}, policy=hedging) as client:
            r = client.get("http://svc/")
            assert r.status_code == 200 and r.extensions["meshlib"]["hedged"]
            uncapped = sum(len(h) for h in fleet.hits())
            assert uncapped == 3  # two hedges: three attempts in flight
            for cap in (1, 2):
                fleet.reset_hits()
                with meshlib.testing.set_testing(attempts=cap):
                    r = client.get("http://svc/")
                assert r.status_code == 200
                assert r.extensions["meshlib"]["attempts"] == cap
                assert r.extensions["meshlib"]["hedged"] is (cap > 1)
                assert sum(len(h) for h in fleet.hits()) == cap


async def test_attempts_caps_the_async_client() -> None:
    async with Fleet(1, error_rate=1.0) as fleet:
        with meshlib.testing.set_testing(attempts=1):
            async with meshlib.AsyncMeshClient(services={"svc": fleet.url},
                                               policy=_policy()) as client:
                assert (await client.get("http://svc/")).status_code == 503
        assert len(fleet.hits()[0]) == 1


@pytest.mark.parametrize("attempts", [0, -1, True, 1.5, "2"])
def test_bad_attempts(attempts: object) -> None:
    with pytest.raises(meshlib.ConfigError, match="attempts"):
        meshlib.testing.set_testing(True, attempts=attempts)  # type: ignore[arg-type]
    assert not meshlib.testing.is_testing()  # unchanged


def test_attempts_need_testing_mode() -> None:
    with pytest.raises(meshlib.ConfigError, match="attempts"):
        meshlib.testing.set_testing(False, attempts=1)
