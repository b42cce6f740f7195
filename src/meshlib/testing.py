"""Helpers for the tests of code that uses meshlib (as stamina's ``set_testing``).

    import meshlib.testing
    meshlib.testing.set_testing(True)    # retries and Retry-After waits no longer sleep

respx mocks keyed on service URLs need no helper: they match requests made
through ``MeshClient`` as they match plain httpx.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["asleep", "is_testing", "set_testing", "sleep"]

_state = {"testing": False}


def set_testing(enabled: bool = True) -> None:
    """Turn backoff and ``Retry-After`` sleeps off (``True``) or back on, process-wide."""
    _state["testing"] = bool(enabled)


def is_testing() -> bool:
    """Whether :func:`set_testing` turned sleeps off."""
    return _state["testing"]


def sleep(seconds: float) -> None:
    """The sync transports' sleep: ``time.sleep`` unless testing."""
    if not _state["testing"]:
        time.sleep(seconds)


async def asleep(seconds: float) -> None:
    """The async transports' sleep: ``asyncio.sleep`` unless testing (then it only yields)."""
    await asyncio.sleep(0 if _state["testing"] else seconds)
