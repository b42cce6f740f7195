"""The demo's httpx + tenacity baseline behaves as such clients do, against loopback backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from meshlib._tools.demo_baseline import TenacityBaseline

BackendFactory = Callable[..., Any]


def test_a_failing_instance_is_retried_on_the_next_one(backends: BackendFactory) -> None:
    """Round robin over [ok, 503]: every request succeeds, a 503 costing one more attempt."""
    backend = backends(2, status=[200, 503])
    baseline = TenacityBaseline(backend.urls, sleep=lambda s: None)
    try:
        outcomes = [baseline.get(f"/x/{i}") for i in range(10)]
    finally:
        baseline.close()
    assert all(o.ok for o in outcomes)
    failing = backend.servers[1].count
    assert failing > 0 and sum(o.attempts == 2 for o in outcomes) == failing
    assert all(o.attempts in (1, 2) for o in outcomes)
    assert sum(o.attempts for o in outcomes) == backend.count


def test_gives_up_after_three_attempts_with_the_last_answer(backends: BackendFactory) -> None:
    """Every instance answering 503: three attempts, then the last 503 is returned."""
    backend = backends(3, status=503)
    baseline = TenacityBaseline(backend.urls, sleep=lambda s: None)
    try:
        outcome = baseline.get("/x")
    finally:
        baseline.close()
    assert outcome.attempts == 3 and not outcome.ok
    assert outcome.response is not None and outcome.response.status_code == 503
    assert outcome.error == "503"
    assert backend.count == 3


def test_refused_connections_end_in_the_error(backends: BackendFactory) -> None:
    """Every instance refusing: three attempts, then the transport error's name."""
    backend = backends(2)
    for server in backend.servers:
        server.refuse()
    baseline = TenacityBaseline(backend.urls, sleep=lambda s: None)
    try:
        outcome = baseline.get("/x")
    finally:
        baseline.close()
    assert outcome.attempts == 3 and outcome.response is None
    assert outcome.error == "ConnectError"


def test_needs_a_url() -> None:
    with pytest.raises(ValueError, match="at least one URL"):
        TenacityBaseline([])
