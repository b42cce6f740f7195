"""A cluster's cap on requests in flight (xDS `circuit_breakers.max_requests`).

A request over the cap fails fast with nothing sent, as Envoy's circuit
breaker overflow does: a cluster that is already as busy as its owner allows
is not made busier by queueing. The count covers a logical request from its
admission until its outcome is known (its retries and hedges included).
"""

from __future__ import annotations

import threading

__all__ = ["RequestCap"]


class RequestCap:
    """At most `limit` logical requests in flight at once; no I/O, safe across threads."""

    __slots__ = ("_lock", "active", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a slot; `False` when every slot is taken (nothing is changed then)."""
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self.active = max(0, self.active - 1)
