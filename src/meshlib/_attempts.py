"""The steps of an attempt that both transports share, free of I/O.

The sync and async transports differ only in how they send, wait and sleep.
Everything around that (picking and admitting an endpoint, stamping the
attempt, turning its result into an :class:`Outcome`, recording it, the
hedge race's decisions, and the final response or error) is written once
here, on top of :class:`~meshlib._call.Call`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from opentelemetry.trace import Span
from tenacity import RetryCallState, retry_base

from ._call import Call, Outcome
from ._endpoint import EndpointState
from ._errors import NoEndpointsError
from ._gate import sent_before_failure
from ._service import TooSlow
from ._telemetry import telemetry

__all__ = [
    "STOP",
    "Admitted",
    "HedgeRace",
    "Launch",
    "RetryPredicate",
    "aborted",
    "answered",
    "failed",
    "finish",
    "last_outcome",
    "launch",
    "pick",
    "stamp",
    "superseded",
    "undiscovered",
    "wait",
]

STOP: Literal["stop"] = "stop"


class RetryPredicate(retry_base):
    """tenacity's retry hook (for ``Retrying`` and ``AsyncRetrying`` alike): asks the
    call's verdict, records the decision, and leaves the sleep for :func:`wait`."""

    def __init__(self, call: Call, clock: Callable[[], float]) -> None:
        self.call, self.clock = call, clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome: Outcome = retry_state.outcome.result()  # type: ignore[union-attr]
        call = self.call
        verdict = call.verdict(outcome, retry_state, self.clock())
        if verdict.retry:  # the superseded response is closed when the retry is sent
            telemetry.decision(call, "retry", verdict.reason, sleep_s=verdict.sleep)
            call.next_sleep = verdict.sleep
        elif call.wants_retry(outcome):
            telemetry.decision(call, "no_retry", verdict.reason)
        return verdict.retry


def wait(call: Call, retry_state: RetryCallState) -> float:
    """tenacity's wait hook: the sleep the verdict chose (backoff, or ``Retry-After``)."""
    return call.next_sleep


def last_outcome(retry_state: RetryCallState) -> Outcome:
    """tenacity's ``retry_error_callback``: end with the last outcome, not ``RetryError``."""
    return retry_state.outcome.result()  # type: ignore[union-attr, no-any-return]


@dataclass(slots=True)
class Admitted:
    """An endpoint chosen for the next attempt, with what its breaker granted."""

    state: EndpointState
    admission: int


def pick(call: Call, now: float) -> Admitted | Outcome:
    """The endpoint for the next attempt, or the outcome that ends the call instead.

    A first attempt needs time left and an available endpoint. An extra attempt
    goes only to an endpoint expected to answer in the time left
    (deadline-aware admission); if it cannot be sent after all, the call ends
    with the answer it was meant to replace, and its budget token is given back.
    """
    extra = call.attempts > 0
    left = call.remaining(now)
    if left <= 0:
        error = call.deadline_error(now)
        return call.abandoned_retry(error) if extra else Outcome(None, error=error, sent=False)
    try:
        state, admission = call.choose(now, within=left if extra else None)
    except TooSlow as exc:
        telemetry.decision(call, "no_retry", f"deadline too short: {exc}")
        return call.abandoned_retry(call.deadline_error(now, str(exc)))
    except httpx.TransportError as exc:  # NoEndpointsError, CircuitOpenError: nothing sent
        exc.request = call.request
        if extra:
            telemetry.decision(call, "no_retry", f"no endpoint to retry on: {exc}")
            return call.abandoned_retry(exc)
        return Outcome(None, error=exc, sent=False)
    return Admitted(state, admission)


def superseded(call: Call) -> httpx.Response | None:
    """The response a retry replaces, once the retry is really being sent (to close)."""
    previous, call.previous = call.previous, None
    return previous.response if previous is not None else None


@dataclass(slots=True)
class Launch:
    """What a transport needs to send one attempt."""

    request: httpx.Request
    extensions: dict[str, Any]
    span: Span
    start: float
    admission: int
    #: the attempt's time limit is the caller's deadline
    deadline_bound: bool = False
    #: when the attempt must have its response headers (``time.monotonic()``)
    limit_at: float = 0.0


def launch(call: Call, chosen: Admitted, start: float, *, hedge: bool,
           concurrent: bool) -> Launch:
    """Start an attempt: count it, open its span, and (unless it is sent from another
    thread or task, which calls :func:`stamp` when it really leaves) stamp it.

    ``concurrent`` attempts (hedges, and first attempts that may be hedged) get
    their own copy of the request so their headers never race.
    """
    request = call.fork_request() if concurrent else call.request
    call.begin(chosen.state)
    span = telemetry.start_attempt(call, chosen.state, request, hedge=hedge)
    sent = Launch(request, {}, span, start, chosen.admission)
    if not concurrent:
        stamp(call, sent, start)
    return sent


def stamp(call: Call, sent: Launch, now: float) -> None:
    """Set the deadline header and clamped timeouts as the attempt really leaves."""
    sent.extensions, sent.deadline_bound, sent.limit_at = call.stamp(sent.request, now)
    sent.start = now


def failed(call: Call, state: EndpointState, sent: Launch, exc: httpx.TransportError,
           now: float) -> Outcome:
    """An attempt raised a transport error: record it (EWMA, breaker, span)."""
    exc.request = call.request
    outcome = Outcome(state, error=exc, sent=sent_before_failure(exc))
    latency = now - sent.start
    blame_caller = call.callers_fault(state, exc, latency, sent.deadline_bound, sent.limit_at,
                                      now)
    call.observe(state, outcome, latency, now, sent.admission, blame_caller)
    telemetry.end_attempt(sent.span, call, outcome, now - sent.start)
    return outcome


def answered(call: Call, state: EndpointState, sent: Launch, response: httpx.Response,
             now: float) -> Outcome:
    """An attempt got response headers: record it (EWMA, breaker, span)."""
    outcome = Outcome(state, response=response)
    call.observe(state, outcome, now - sent.start, now, sent.admission)
    telemetry.end_attempt(sent.span, call, outcome, now - sent.start)
    return outcome


def aborted(call: Call, state: EndpointState, sent: Launch, exc: BaseException) -> None:
    """An attempt was cancelled (a losing hedge, or the caller): count nothing against it."""
    state.breaker.release(sent.admission)
    telemetry.abort_attempt(sent.span, call, exc)


def undiscovered(call: Call, now: float) -> BaseException:
    """The error for a service whose discovery has not answered within the deadline.

    API.md: the request waits for the first answer within its deadline, then
    raises ``NoEndpointsError`` (not ``DeadlineExceeded``) if there is still none.
    """
    waited = max(now - call.started, 0.0)
    return telemetry.not_sent(call, NoEndpointsError(
        call.runtime.unready_message(waited), request=call.request))


def finish(call: Call, outcome: Outcome, now: float) -> httpx.Response:
    """The response for the final outcome (with ``extensions["meshlib"]``), or raise its error."""
    telemetry.finish(call, outcome)
    response = outcome.response
    if response is None:
        if call.remaining(now) <= 0.001:
            telemetry.deadline_expired(call)
        return call.result(outcome, now)
    response.extensions["meshlib"] = call.describe(outcome.state)
    return response


class HedgeRace:
    """The decisions of one hedged group of attempts; the transport only waits and sends.

    The first good answer wins. Until one comes, after each hedge delay with
    no answer, one more attempt may go to another endpoint (budget and
    deadline permitting), up to ``Hedge.max_attempts`` at once.
    """

    __slots__ = ("call", "hedging", "last", "limit", "started")

    def __init__(self, call: Call) -> None:
        hedge = call.policy.hedge
        assert hedge is not None
        self.call = call
        self.limit = hedge.max_attempts
        self.started = 1
        self.hedging = True
        self.last: Outcome | None = None

    def _may_add(self) -> bool:
        return self.hedging and self.started < self.limit

    def wait_time(self, now: float) -> float:
        """How long to wait for an answer before deciding on another hedge."""
        left = max(self.call.remaining(now), 0.0)
        return min(self.call.hedge_delay(), left) if self._may_add() else left

    def settle(self, outcome: Outcome) -> tuple[bool, httpx.Response | None]:
        """Take a finished attempt: whether it wins, and a superseded response to drain."""
        stale = self.last.response if self.last is not None else None
        if not self.call.wants_retry(outcome):
            return True, stale
        self.last = outcome
        return False, stale

    def next_hedge(self, now: float) -> Admitted | Literal["stop"] | None:
        """After a wait with no answer: an endpoint to hedge to, ``None`` to keep waiting,
        or ``STOP`` when the deadline has passed."""
        if self.call.remaining(now) <= 0:
            return STOP
        if not self._may_add():
            return None
        state, admission, reason = self.call.choose_hedge(now)
        if state is None:
            telemetry.decision(self.call, "no_hedge", reason)
            self.hedging = False
            return None
        telemetry.decision(self.call, "hedge", reason, endpoint=state.address)
        self.started += 1
        return Admitted(state, admission)

    def result(self, now: float) -> Outcome:
        """The outcome when no attempt won: the last failure, or a deadline error."""
        if self.last is not None:
            return self.last
        return Outcome(None, error=self.call.deadline_error(now, "no attempt answered"),
                       sent=True, final=True)
