"""When to reconnect to the control plane after its stream failed: a small decision object.

Exponential backoff with jitter, capped, as gRPC's connection backoff
(base 1 s, multiplier 1.6, jitter +/-20%; capped at 30 s here rather than
gRPC's 120 s, so that a client sees a recovered control plane sooner).
``failed(now)`` returns the delay before the next attempt; ``succeeded()``
(called once a stream has delivered a response) starts over. A failure long
after the previous one (more than ``cap``) also starts over: a stream that
broke after running for a while is retried quickly.

The object does no I/O and takes the time as an argument, so that it can be
tested with a fake clock and swapped for a shared reconnect policy.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Jittered, capped exponential backoff between reconnection attempts."""

    def __init__(self, base: float = 1.0, cap: float = 30.0, multiplier: float = 1.6,
                 jitter: float = 0.2, rng: Callable[[], float] = random.random) -> None:
        if not (0 < base <= cap) or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < base <= cap, multiplier >= 1, 0 <= jitter < 1")
        self.base, self.cap, self.multiplier, self.jitter = base, cap, multiplier, jitter
        self._rng = rng
        self._next = base
        self._last_failure: float | None = None

    def failed(self, now: float) -> float:
        """A connection attempt or stream failed at ``now``: seconds to wait before the next."""
        if self._last_failure is not None and now - self._last_failure > self.cap:
            self._next = self.base
        self._last_failure = now
        current = self._next
        self._next = min(self.cap, current * self.multiplier)
        spread = current * self.jitter
        return max(0.0, min(self.cap, current + spread * (2 * self._rng() - 1)))

    def succeeded(self) -> None:
        """The stream delivered a response: the next failure waits ``base`` again."""
        self._next = self.base
        self._last_failure = None
