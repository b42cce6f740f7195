"""Retry budget: deposits per request, withdrawals per extra attempt, expiry, floor."""

from __future__ import annotations

import pytest

from meshlib._budget import BudgetLedger
from meshlib._policy import RetryBudget


def test_floor_allows_min_per_second_times_ttl_with_no_traffic() -> None:
    """With no deposits, the reserve of min_per_second * ttl tokens can be withdrawn."""
    ledger = BudgetLedger(RetryBudget(ratio=0.2, min_per_second=1, ttl=10))
    taken = sum(ledger.try_withdraw(0.0) for _ in range(50))
    assert taken == 10


def test_deposits_add_ratio_of_a_token_each() -> None:
    """100 requests at ratio 0.2 allow 20 retries on top of the floor."""
    ledger = BudgetLedger(RetryBudget(ratio=0.2, min_per_second=0, ttl=10))
    for _ in range(100):
        ledger.deposit(1.0)
    assert ledger.balance(1.0) == pytest.approx(20.0)
    assert sum(ledger.try_withdraw(1.0) for _ in range(100)) == 20
    assert not ledger.try_withdraw(1.0)


def test_deposits_and_withdrawals_expire_after_ttl() -> None:
    """After ttl seconds old deposits and withdrawals no longer count."""
    ledger = BudgetLedger(RetryBudget(ratio=0.5, min_per_second=0, ttl=10))
    for _ in range(10):
        ledger.deposit(0.0)
    assert ledger.try_withdraw(0.5)
    assert ledger.balance(0.5) == pytest.approx(4.0)
    assert ledger.balance(11.0) == pytest.approx(0.0)
    assert not ledger.try_withdraw(11.0)


def test_refund_returns_an_unused_token() -> None:
    """A token drawn for an attempt that was then not sent is given back."""
    ledger = BudgetLedger(RetryBudget(ratio=1.0, min_per_second=0, ttl=10))
    ledger.deposit(0.0)
    assert ledger.try_withdraw(0.0)
    assert not ledger.try_withdraw(0.0)
    ledger.refund(0.0)
    assert ledger.try_withdraw(0.0)


def test_sustained_outage_caps_extra_attempts_at_ratio_plus_floor() -> None:
    """Over 60 s of 100 req/s all failing, retries stay near 20% plus the floor."""
    config = RetryBudget(ratio=0.2, min_per_second=10, ttl=10)
    ledger = BudgetLedger(config)
    retries = 0
    requests = 0
    for tick in range(6000):
        now = tick * 0.01
        ledger.deposit(now)
        requests += 1
        for _ in range(2):  # policy allows two retries per request
            if ledger.try_withdraw(now):
                retries += 1
    limit = requests * config.ratio + config.min_per_second * (60 + config.ttl)
    assert retries <= limit
    assert retries >= requests * config.ratio  # the budget is actually usable


def test_refund_goes_back_to_the_slot_the_token_came_from() -> None:
    """A token drawn in one slot and refunded later (after a sleep) is really given back."""
    ledger = BudgetLedger(RetryBudget(ratio=1.0, min_per_second=0, ttl=10))
    ledger.deposit(0.0)
    assert ledger.try_withdraw(0.5)
    assert ledger.balance(2.5) == pytest.approx(0.0)
    ledger.refund(0.5)  # refunded two slots later
    assert ledger.balance(2.5) == pytest.approx(1.0)
    ledger.refund(0.5)  # nothing more to give back
    assert ledger.balance(2.5) == pytest.approx(1.0)
