"""Retry budget: how many extra attempts (retries and hedges) a service may add.

As Finagle's `RetryBudget`: each logical request deposits `ratio` of a
token, each extra attempt withdraws one, deposits and withdrawals expire
after `ttl` seconds, and a reserve of `min_per_second * ttl` tokens lets a
trickle of retries through when traffic is low. Plain data and arithmetic
with an injected clock: no I/O, one short lock.
"""

from __future__ import annotations

import math
import threading

from ._policy import RetryBudget

__all__ = ["BudgetLedger"]

_SLOTS = 10


class BudgetLedger:
    """The running balance of one service's retry budget.

    Counts are kept in `_SLOTS` time slots covering `ttl`; a slot older
    than `ttl` is forgotten, so deposits and withdrawals expire together.
    """

    def __init__(self, config: RetryBudget) -> None:
        self.config = config
        self._slot_seconds = config.ttl / _SLOTS
        self._deposits = [0] * _SLOTS
        self._withdrawals = [0] * _SLOTS
        self._epoch = [-1] * _SLOTS  # which slot number each cell holds
        self._lock = threading.Lock()

    def _cell(self, now: float) -> int:
        number = math.floor(now / self._slot_seconds)
        cell = number % _SLOTS
        if self._epoch[cell] != number:
            self._epoch[cell] = number
            self._deposits[cell] = 0
            self._withdrawals[cell] = 0
        return cell

    def _live_sums(self, now: float) -> tuple[int, int]:
        number = math.floor(now / self._slot_seconds)
        deposits = withdrawals = 0
        for cell in range(_SLOTS):
            if number - self._epoch[cell] < _SLOTS:
                deposits += self._deposits[cell]
                withdrawals += self._withdrawals[cell]
        return deposits, withdrawals

    def _balance(self, now: float) -> float:
        deposits, withdrawals = self._live_sums(now)
        reserve = self.config.min_per_second * self.config.ttl
        return reserve + deposits * self.config.ratio - withdrawals

    def deposit(self, now: float) -> None:
        """A logical request started: add `ratio` of a token."""
        with self._lock:
            self._deposits[self._cell(now)] += 1

    def try_withdraw(self, now: float) -> bool:
        """Take one token for an extra attempt; `False` (nothing taken) if the budget is empty."""
        with self._lock:
            if self._balance(now) < 1.0:
                return False
            self._withdrawals[self._cell(now)] += 1
            return True

    def refund(self, drawn_at: float) -> None:
        """Give back a token drawn at `drawn_at` for an attempt that was then not sent.

        The withdrawal is taken back from the slot it was counted in; if that slot
        has expired meanwhile, there is nothing left to give back.
        """
        with self._lock:
            number = math.floor(drawn_at / self._slot_seconds)
            cell = number % _SLOTS
            if self._epoch[cell] == number and self._withdrawals[cell] > 0:
                self._withdrawals[cell] -= 1

    def balance(self, now: float) -> float:
        """Tokens available now (may be fractional)."""
        with self._lock:
            return self._balance(now)
