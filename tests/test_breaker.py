"""Per-endpoint breaker on pybreaker: open, half-open single trial, close, reopen."""

from __future__ import annotations

from meshlib._breaker import ADMITTED, CLOSED, HALF_OPEN, OPEN, REFUSED, TRIAL, EndpointBreaker
from meshlib._policy import Breaker


def test_consecutive_failures_open_the_breaker() -> None:
    """``failures`` consecutive failures open it; a success in between resets the count."""
    transitions: list[tuple[str, str]] = []
    breaker = EndpointBreaker(Breaker(failures=3, reset_timeout=30), "e",
                              lambda name, old, new: transitions.append((old, new)))
    breaker.record(False, 0.0)
    breaker.record(False, 0.0)
    breaker.record(True, 0.0)
    breaker.record(False, 0.0)
    breaker.record(False, 0.0)
    assert breaker.state(0.0) == CLOSED
    breaker.record(False, 0.0)
    assert breaker.state(0.0) == OPEN
    assert not breaker.available(1.0)
    assert transitions == [("closed", "open")]


def test_half_open_admits_exactly_one_trial() -> None:
    """After reset_timeout, one caller gets the trial; others are refused until it ends."""
    breaker = EndpointBreaker(Breaker(failures=1, reset_timeout=5), "e")
    breaker.record(False, 10.0)
    assert breaker.admit(14.0) == REFUSED
    assert breaker.state(15.0) == HALF_OPEN
    assert breaker.admit(15.0) == TRIAL
    assert breaker.admit(15.0) == REFUSED
    assert not breaker.available(15.0)


def test_trial_success_closes_and_failure_reopens() -> None:
    """A successful trial closes the breaker; a failed one opens it for another timeout."""
    breaker = EndpointBreaker(Breaker(failures=1, reset_timeout=5), "e")
    breaker.record(False, 0.0)
    assert breaker.admit(6.0) == TRIAL
    breaker.record(False, 6.0, TRIAL)
    assert breaker.state(6.0) == OPEN
    assert not breaker.available(10.0)
    assert breaker.admit(11.5) == TRIAL
    breaker.record(True, 11.5, TRIAL)
    assert breaker.state(11.5) == CLOSED
    assert breaker.fail_counter == 0


def test_released_trial_counts_nothing() -> None:
    """A cancelled trial frees the slot for another caller without counting a failure."""
    breaker = EndpointBreaker(Breaker(failures=1, reset_timeout=1), "e")
    breaker.record(False, 0.0)
    assert breaker.admit(2.0) == TRIAL
    breaker.release(TRIAL)
    assert breaker.admit(2.0) == TRIAL


def test_only_the_trial_decides_a_half_open_breaker() -> None:
    """An attempt admitted before the breaker opened neither frees nor decides the trial."""
    breaker = EndpointBreaker(Breaker(failures=1, reset_timeout=1), "e")
    early = breaker.admit(0.0)
    assert early == ADMITTED
    breaker.record(False, 0.0)  # another attempt fails: open
    assert breaker.admit(2.0) == TRIAL
    breaker.release(early)  # the early attempt is cancelled: the trial is still taken
    assert breaker.admit(2.0) == REFUSED
    breaker.record(True, 2.0, early)  # or it succeeds late: not the trial, not counted
    assert breaker.state(2.0) == HALF_OPEN
    breaker.record(True, 2.0, TRIAL)
    assert breaker.state(2.0) == CLOSED


def test_failed_trials_back_off_the_probation_up_to_the_limit() -> None:
    """With max_reset_timeout, each failed trial doubles the open period (capped); a
    success brings it back to reset_timeout. Without it, every period is reset_timeout."""
    breaker = EndpointBreaker(Breaker(failures=1, reset_timeout=1.0, max_reset_timeout=3.0),
                              "e")
    breaker.record(False, 0.0)
    now = 0.0
    for period in (1.0, 2.0, 3.0, 3.0):
        assert breaker.admit(now + period - 0.01) == REFUSED
        now += period
        admission = breaker.admit(now)
        assert admission == TRIAL
        breaker.record(False, now, admission)
    now += 3.0
    admission = breaker.admit(now)
    breaker.record(True, now, admission)
    breaker.record(False, now)
    assert breaker.state(now + 1.0) == HALF_OPEN
    plain = EndpointBreaker(Breaker(failures=1, reset_timeout=1.0), "p")
    plain.record(False, 0.0)
    for k in range(1, 4):
        admission = plain.admit(float(k))
        assert admission == TRIAL
        plain.record(False, float(k), admission)
