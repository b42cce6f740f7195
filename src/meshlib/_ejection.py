"""Which endpoints of a service are out, and the cap on ejecting more (no I/O).

An endpoint is *out* while its breaker is not closed, whatever opened it. At
most `Breaker.max_ejection_percent` of a service's endpoints may be out at
once for failed answers (Envoy's `max_ejection_percent`); refused
connections are not capped. Only live endpoints hold a slot: one that leaves
discovery gives its slot back (`EjectionLedger.forget()`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from ._endpoint import EndpointState

__all__ = ["EjectionLedger"]


class EjectionLedger:
    """The endpoints of one service that are out, and the ejection cap."""

    __slots__ = ("_lock", "out", "percent")

    def __init__(self, percent: float, lock: threading.Lock) -> None:
        #: addresses of endpoints whose breaker is not closed (the set object never changes:
        #: the pick reads it; while empty, every endpoint is available)
        self.out: set[str] = set()
        self.percent = percent
        self._lock = lock  # the service's lock, never held across I/O

    def reserve(self, state: EndpointState, states: Mapping[str, EndpointState]) -> bool:
        """Whether `state`'s breaker may open for a failed *answer*. A granted slot is
        held until the breaker closes, or given back by `settle()` if it did not
        open."""
        with self._lock:
            if states.get(state.address) is not state:
                return False  # retired: only live endpoints hold ejection slots
            out = self.out
            if state.address in out or self.percent >= 100.0:
                out.add(state.address)
                return True
            if (len(out) + 1) * 100.0 > len(states) * self.percent:
                return False
            out.add(state.address)
            return True

    def settle(self, state: EndpointState) -> None:
        """Give back the slot of `reserve()` if the breaker stayed closed."""
        if state.breaker.closed:
            with self._lock:
                if state.breaker.closed:
                    self.out.discard(state.address)

    def opened(self, address: str) -> None:
        """The breaker of `address` left the closed state."""
        self.out.add(address)

    def forget(self, address: str) -> None:
        """`address` closed its breaker again, or left discovery: its slot is free."""
        self.out.discard(address)

    @staticmethod
    def usable(states: Mapping[str, EndpointState], address: str, now: float) -> bool:
        """Whether `address` is a live endpoint that may be tried now (breaker closed,
        or its trial due)."""
        state = states.get(address)
        return state is not None and state.breaker.available(now)

    def available(self, states: Mapping[str, EndpointState], now: float) -> int:
        """Endpoints a failing route can still be tried on: breaker closed, or its trial
        due (an ejected endpoint that may be tried again has not failed the route yet)."""
        out = list(self.out)  # small: read on a failure only
        count = len(states) - len(out)
        for address in out:
            state = states.get(address)
            if state is not None and state.breaker.available(now):
                count += 1
        return max(count, 0)
