"""Testing mode's process-wide state, read by the request path (no I/O, no imports above).

The public face is `meshlib.testing` (`set_testing`); the transports
and `Mesh` read `capped()`, `sleep()` and
`asleep()` from here, so the runtime core never imports the testing
package (whose fleet needs the loopback fault server).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from types import TracebackType
from typing import TYPE_CHECKING

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._policy import Policy

__all__ = ["asleep", "capped", "is_testing", "set_testing", "sleep"]


class _State:
    __slots__ = ("attempts", "enabled")

    def __init__(self) -> None:
        self.enabled = False
        self.attempts: int | None = None


_state = _State()
# Policies capped by set_testing(attempts=N): id(policy) -> (policy, N, capped policy).
_capped: dict[int, tuple[Policy, int, Policy]] = {}


class set_testing:
    """Turn testing mode on (the default) or off, process-wide; usable as a context manager.

    In testing mode backoff and `Retry-After` sleeps are skipped (the
    attempts still happen, at once). `attempts=N` also caps every logical
    request at `N` attempts in all, hedges included (stamina's meaning):
    `attempts=1` sends each request once, so a test that mocks one failure
    sees that failure. `attempts=None` leaves the policy's limits alone.

    The call takes effect at once. Used as `with set_testing(...):` it
    restores the state that was in force before the call when the block
    ends. Raises `meshlib.ConfigError` for an `attempts` that is
    not an int >= 1, or for `attempts` with `enabled=False`.
    """

    __slots__ = ("_previous",)

    def __init__(self, enabled: bool = True, *, attempts: int | None = None) -> None:
        if attempts is not None:
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
                raise ConfigError(f"set_testing: attempts must be an int >= 1 or None, "
                                  f"got {attempts!r}")
            if not enabled:
                raise ConfigError("set_testing: attempts needs testing mode (enabled=True)")
        self._previous = (_state.enabled, _state.attempts)
        _state.enabled = bool(enabled)
        _state.attempts = attempts
        _capped.clear()

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _state.enabled, _state.attempts = self._previous
        _capped.clear()

    def __repr__(self) -> str:
        return f"<meshlib.testing.set_testing: enabled={_state.enabled} " \
               f"attempts={_state.attempts}>"


def is_testing() -> bool:
    """Whether `set_testing()` turned testing mode on."""
    return _state.enabled


def capped(policy: Policy) -> Policy:
    """`policy` limited to the `set_testing(attempts=N)` cap; `policy` itself if none.

    Retries become at most `N - 1` (hedges share that limit), hedging is off
    for `N == 1` and `Hedge.max_attempts` is at most `N`. Read by the
    request path once per request (`Mesh.policy_for`); cheap when no cap is set.
    """
    cap = _state.attempts
    if cap is None:
        return policy
    hit = _capped.get(id(policy))
    if hit is not None and hit[0] is policy and hit[1] == cap:
        return hit[2]
    hedge = policy.hedge
    if hedge is not None:
        hedge = None if cap < 2 else dataclasses.replace(
            hedge, max_attempts=min(hedge.max_attempts, cap))
    limited = dataclasses.replace(policy, retries=min(policy.retries, cap - 1), hedge=hedge)
    if len(_capped) > 256:
        _capped.clear()
    _capped[id(policy)] = (policy, cap, limited)
    return limited


def sleep(seconds: float) -> None:
    """The sync transports' sleep: `time.sleep` unless testing."""
    if not _state.enabled:
        time.sleep(seconds)


async def asleep(seconds: float) -> None:
    """The async transports' sleep: `asyncio.sleep` unless testing (then it only yields)."""
    await asyncio.sleep(0 if _state.enabled else seconds)
