"""Shared pytest fixtures: loopback test backends and a clean meshlib environment.

Fixture API (see ``meshlib.testing._backend`` for the full ``Backend`` API):

* ``backends(n=1, **kwargs) -> Backend``: start ``n`` loopback HTTP servers
  (keyword arguments as ``Backend``: ``delay_ms``, ``status``, ``fail_pct``,
  ``fail_status``, ``retry_after``, ``mode``, ``host``, ``record_limit``,
  ``seed``; each takes one value or a list with one value per server).
  Every backend it started is stopped at teardown.
* ``backend``: one started single-server ``Backend``.
* autouse ``_meshlib_clean_state``: removes every ``MESHLIB_*`` environment
  variable for the test's duration.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

import meshlib.testing
from meshlib.testing._backend import Backend


class BackendFactory(Protocol):
    """Signature of the ``backends`` fixture."""

    def __call__(self, n: int = 1, **kwargs: Any) -> Backend: ...


@pytest.fixture
def backends() -> Iterator[BackendFactory]:
    """Factory: ``backends(3, delay_ms=[0, 0, 50])`` returns a started ``Backend``."""
    started: list[Backend] = []

    def factory(n: int = 1, **kwargs: Any) -> Backend:
        backend = Backend(n, **kwargs).start()
        started.append(backend)
        return backend

    yield factory
    for backend in reversed(started):
        backend.stop()


@pytest.fixture
def backend(backends: BackendFactory) -> Backend:
    """One started single-server ``Backend``."""
    return backends(1)


@pytest.fixture(autouse=True)
def _meshlib_clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every test without ``MESHLIB_*`` variables and with fresh global state."""
    for name in list(os.environ):
        if name.startswith("MESHLIB_"):
            monkeypatch.delenv(name, raising=False)
    # meshlib's only process-wide switch a test may flip is meshlib.testing's;
    # telemetry instruments are created once by design and bind to any provider.
    meshlib.testing.set_testing(False)
    yield
    meshlib.testing.set_testing(False)
