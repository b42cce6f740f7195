"""When to try a registry or control plane again after a failure: one small decision object.

Every watching client in meshlib (etcd, Consul, Kubernetes and DNS discovery,
the restart of a discovery that crashed, the xDS stream) asks the same
question after a failure: how long to wait before the next attempt. The
answer is exponential backoff, capped, optionally jittered, as gRPC's
connection backoff: `failed(now)` returns the delay before the next
attempt; `succeeded()` (the connection proved itself: it delivered an
answer) starts over. A failure that comes more than `cap` seconds after the
previous retry began also starts over: that connection ran for a while
before it broke (a registry restart after hours of watching is retried
quickly), whereas a retry that keeps failing stays at the cap.

The object does no I/O and takes the time as an argument, so that it can be
tested with a fake clock; the loops only sleep what it says.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Reconnect"]


class Reconnect:
    """Capped exponential backoff between reconnection attempts, with optional jitter.

    `base` is the first delay, multiplied by `multiplier` after each further
    failure up to `cap`; each delay is spread by `+/- jitter` of itself.
    """

    __slots__ = ("_last", "_next", "_rng", "base", "cap", "jitter", "multiplier")

    def __init__(self, base: float = 1.0, cap: float = 30.0, multiplier: float = 1.6,
                 jitter: float = 0.2, rng: Callable[[], float] = random.random) -> None:
        if not (0 < base <= cap) or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < base <= cap, multiplier >= 1, 0 <= jitter < 1")
        self.base, self.cap, self.multiplier, self.jitter = base, cap, multiplier, jitter
        self._rng = rng
        self._next = base
        #: when the retry after the last failure began (failure time plus its delay)
        self._last: float | None = None

    def failed(self, now: float) -> float:
        """An attempt or a connection failed at `now`: seconds to wait before the next."""
        if self._last is not None and now - self._last > self.cap:
            self._next = self.base  # the connection ran a while before it broke
        current = self._next
        self._next = min(self.cap, current * self.multiplier)
        spread = current * self.jitter
        delay = current if not spread else current + spread * (2 * self._rng() - 1)
        delay = max(0.0, min(self.cap, delay))
        self._last = now + delay
        return delay

    def succeeded(self) -> None:
        """The connection delivered an answer: the next failure waits `base` again."""
        self._next = self.base
        self._last = None
