"""The steps of an attempt that both transports share, free of I/O.

The sync and async transports differ only in how they send, wait and sleep.
Everything around that (picking and admitting an endpoint, stamping the
attempt, turning its result into an :class:`Outcome`, recording it, the
hedge race's decisions, and the final response or error) is written once
here, on top of :class:`~meshlib._call.Call`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import httpx
from opentelemetry.trace import Span

from ._call import Call, Outcome
from ._endpoint import EndpointState
from ._errors import NoEndpointsError
from ._gate import sent_before_failure
from ._telemetry import telemetry

__all__ = [
    "STOP",
    "HedgeRace",
    "Launch",
    "aborted",
    "answered",
    "failed",
    "finish",
    "launch",
    "pick",
    "undiscovered",
]

STOP: Literal["stop"] = "stop"


def pick(call: Call, now: float) -> EndpointState | Outcome:
    """The endpoint for the next attempt, or the outcome that ends the call instead.

    A first attempt needs time left and an available endpoint. An extra
    attempt also passes deadline-aware admission (its endpoint's latency
    estimate must fit the time left); a refused one gives its budget token back.
    """
    extra = call.attempts > 0
    if call.remaining(now) <= 0:
        if extra:
            call.runtime.budget.refund(now)
        return Outcome(None, error=call.deadline_error(now), sent=False)
    try:
        state = call.choose(now)
    except httpx.TransportError as exc:  # NoEndpointsError, CircuitOpenError: nothing sent
        exc.request = call.request
        return Outcome(None, error=exc, sent=False)
    if extra and not call.admits(state, now):
        state.breaker.release()
        call.runtime.budget.refund(now)
        telemetry.decision(call, "no_retry", "deadline too short for the chosen endpoint")
        return Outcome(None, error=call.deadline_error(now, "not enough time left"),
                       sent=False, final=True)
    return state


@dataclass(slots=True)
class Launch:
    """What a transport needs to send one attempt."""

    request: httpx.Request
    extensions: dict[str, Any]
    span: Span
    start: float


def launch(call: Call, state: EndpointState, start: float, *, hedge: bool,
           concurrent: bool) -> Launch:
    """Start an attempt: count it, stamp headers and timeouts, open its span.

    ``concurrent`` attempts (hedges, and first attempts that may be hedged) get
    their own copy of the request so their headers never race.
    """
    request = call.fork_request() if concurrent else call.request
    extensions = call.begin(state, start, request)
    span = telemetry.start_attempt(call, state, request, hedge=hedge)
    return Launch(request, extensions, span, start)


def failed(call: Call, state: EndpointState, sent: Launch, exc: httpx.TransportError,
           now: float) -> Outcome:
    """An attempt raised a transport error: record it (EWMA, breaker, span)."""
    exc.request = call.request
    outcome = Outcome(state, error=exc, sent=sent_before_failure(exc))
    call.observe(state, outcome, now - sent.start, now)
    telemetry.end_attempt(sent.span, call, outcome, now - sent.start)
    return outcome


def answered(call: Call, state: EndpointState, sent: Launch, response: httpx.Response,
             now: float) -> Outcome:
    """An attempt got response headers: record it (EWMA, breaker, span)."""
    outcome = Outcome(state, response=response)
    call.observe(state, outcome, now - sent.start, now)
    telemetry.end_attempt(sent.span, call, outcome, now - sent.start)
    return outcome


def aborted(call: Call, state: EndpointState, sent: Launch, exc: BaseException) -> None:
    """An attempt was cancelled (a losing hedge, or the caller): count nothing against it."""
    state.breaker.release()
    telemetry.abort_attempt(sent.span, call, exc)


def undiscovered(call: Call, now: float) -> BaseException:
    """The error for a service whose discovery has not answered within the deadline.

    API.md: the request waits for the first answer within its deadline, then
    raises ``NoEndpointsError`` (not ``DeadlineExceeded``) if there is still none.
    """
    waited = max(now - call.started, 0.0)
    return telemetry.not_sent(call, NoEndpointsError(
        f"discovery for service {call.runtime.name!r} ({call.runtime.discovery.url}) "
        f"has not answered after {waited:.2f} s", request=call.request))


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

    def next_hedge(self, now: float) -> EndpointState | Literal["stop"] | None:
        """After a wait with no answer: an endpoint to hedge to, ``None`` to keep waiting,
        or ``STOP`` when the deadline has passed."""
        if self.call.remaining(now) <= 0:
            return STOP
        if not self._may_add():
            return None
        state, reason = self.call.choose_hedge(now)
        if state is None:
            telemetry.decision(self.call, "no_hedge", reason)
            self.hedging = False
            return None
        telemetry.decision(self.call, "hedge", reason, endpoint=state.address)
        self.started += 1
        return state

    def result(self, now: float) -> Outcome:
        """The outcome when no attempt won: the last failure, or a deadline error."""
        if self.last is not None:
            return self.last
        return Outcome(None, error=self.call.deadline_error(now, "no attempt answered"),
                       sent=True, final=True)
