"""Per-endpoint circuit breaker: pybreaker's state machine, wrapped thinly.

Why a wrapper and not `breaker.call(fn)` around the request:

- pybreaker has no asyncio support (`call_async` is Tornado-only), and
  `breaker.call(async_fn)` records success before the coroutine runs;
- its sync `call` holds the breaker's lock for the whole call, serialising
  every request to the endpoint;
- it counts cancellation as a failure, and in half-open it lets every
  caller through, where meshlib wants exactly one trial request.

So the request runs outside pybreaker, and its outcome is fed in afterwards
through pybreaker's public `call` with a trivial function that returns
(success) or raises (failure). pybreaker still owns the counting and the
closed/open/half-open transitions; this wrapper adds admission (skip an
open endpoint, admit one trial after `reset_timeout`) on a monotonic clock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pybreaker

from ._policy import Breaker

__all__ = ["ADMITTED", "BREAKER_OFF", "CLOSED", "HALF_OPEN", "OPEN", "REFUSED", "TRIAL",
           "EndpointBreaker", "breaker_config"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
#: what :meth:`EndpointBreaker.admit` grants an attempt
REFUSED, ADMITTED, TRIAL = 0, 1, 2

Transition = Callable[[str, str, str], None]  # (endpoint name, old state, new state)


class _AttemptFailed(Exception):
    """Raised inside pybreaker to record a failed attempt."""


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _AttemptFailed


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: EndpointBreaker) -> None:
        self.owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.owner._on_state_change(
            getattr(old_state, "name", str(old_state)), getattr(new_state, "name", str(new_state))
        )


#: the configuration of a breaker that never opens (``Policy(breaker=None)``)
BREAKER_OFF = Breaker(failures=1_000_000, max_ejection_percent=0.0)


def breaker_config(config: Breaker | None) -> Breaker:
    """The configuration breakers are built from: `None` is `BREAKER_OFF`."""
    return BREAKER_OFF if config is None else config


class EndpointBreaker:
    """The breaker of one endpoint. Time is `time.monotonic()` seconds, passed in.

    Built from `BREAKER_OFF`, it never opens: it counts nothing.
    """

    __slots__ = (
        "_cb", "_lock", "_now", "_off", "_on_transition", "_opened_at", "_probation", "_state",
        "_trial", "config", "name",
    )

    def __init__(self, config: Breaker, name: str, on_transition: Transition | None = None,
                 now: float = 0.0) -> None:
        self.config = config
        self.name = name
        self._off = config is BREAKER_OFF
        self._on_transition = on_transition
        self._state = CLOSED
        self._opened_at = now
        #: how long the current open period lasts: ``reset_timeout``, doubled after each
        #: failed trial up to ``max_reset_timeout`` (Linkerd's backed-off probation)
        self._probation = config.reset_timeout
        self._trial = False
        self._lock = threading.Lock()
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.failures, reset_timeout=config.reset_timeout, name=name,
            listeners=[_Listener(self)], throw_new_error_on_trip=False,
        )
        self._now = now


    def _on_state_change(self, old: str, new: str) -> None:
        new = HALF_OPEN if new == "half-open" else new
        if new == OPEN:
            if old in (HALF_OPEN, "half-open"):  # a failed trial: back off
                limit = self.config.max_reset_timeout
                if limit is not None:
                    self._probation = min(self._probation * 2.0, limit)
            self._opened_at = self._now
        elif new == CLOSED:
            self._probation = self.config.reset_timeout
        self._state = new
        if self._on_transition is not None and old != new:
            self._on_transition(self.name, old, new)

    def state(self, now: float) -> str:
        """`closed`, `open` or `half-open` (open past its probation, `reset_timeout`
        or longer after failed trials, reads half-open)."""
        if self._state == OPEN and now - self._opened_at >= self._probation:
            return HALF_OPEN
        return self._state

    def next_trial(self, now: float) -> float:
        """Seconds until this breaker lets its next trial request through (0 when due,
        or when it is closed)."""
        if self._state != OPEN:
            return 0.0
        return max(self._opened_at + self._probation - now, 0.0)

    def available(self, now: float) -> bool:
        """Whether a request may be sent now (closed, or a trial is due and none is running)."""
        if self._state == CLOSED:
            return True
        return not self._trial and self.state(now) == HALF_OPEN

    def admit(self, now: float) -> int:
        """Claim the right to send one request: `REFUSED`, `ADMITTED`, or `TRIAL`
        (the single half-open trial). The attempt keeps what it got and hands it back
        to `record()` or `release()`."""
        if self._state == CLOSED:
            return ADMITTED
        with self._lock:  # two callers must not both take the trial
            if self._trial or self.state(now) != HALF_OPEN:
                return REFUSED
            self._trial = True
            return TRIAL

    def record(self, success: bool, now: float, admission: int = ADMITTED) -> None:
        """Feed an attempt's outcome into pybreaker's state machine.

        Only the trial decides a half-open breaker; outcomes of attempts admitted
        before the breaker opened are not counted again.
        """
        if self._off:
            return
        self._now = now
        if admission == TRIAL:
            self._trial = False
            if self._state == OPEN:
                self._cb.half_open()
        elif self._state != CLOSED:
            return
        elif success and self._cb.fail_counter == 0:
            return  # nothing would change: skip pybreaker's lock on the common path
        with contextlib.suppress(_AttemptFailed, pybreaker.CircuitBreakerError):
            self._cb.call(_succeed if success else _fail)

    def release(self, admission: int) -> None:
        """Give up an admitted attempt with no outcome (cancelled): nothing is counted;
        a trial's slot is freed for another caller."""
        if admission == TRIAL:
            self._trial = False

    def would_open(self) -> bool:
        """Whether one more counted failure would open this (closed) breaker."""
        return (not self._off and self._state == CLOSED
                and self._cb.fail_counter + 1 >= self.config.failures)

    @property
    def closed(self) -> bool:
        """Whether the breaker is closed (not open, not half-open)."""
        return self._state == CLOSED

    @property
    def fail_counter(self) -> int:
        """Consecutive failures pybreaker has counted."""
        return int(self._cb.fail_counter)
