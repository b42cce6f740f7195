"""meshlib.testing: users' tests can turn retry sleeps off."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import meshlib
import meshlib.testing
from conftest import BackendFactory


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
