"""The steps of an attempt that both transports share, free of I/O.

The sync and async transports differ only in how they send, wait and sleep.
Everything around that (picking and admitting an endpoint, stamping the
attempt, turning its result into an `Outcome`, recording it, the
hedge race's decisions, and the final response or error) is written once
here, on top of `Call`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import httpx
from opentelemetry.trace import Span

from ._breaker import ADMITTED, REFUSED
from ._call import Call, Outcome
from ._endpoint import EndpointState
from ._errors import CircuitOpenError, MeshError, NoEndpointsError, TooSlow, redact_url
from ._explain import explain
from ._feedback import classify, record
from ._gate import sent_before_failure
from ._hedging import choose_hedge, hedge_delay, hedge_refusal
from ._telemetry import telemetry

__all__ = [
    "STOP",
    "Admitted",
    "HedgeRace",
    "Launch",
    "Retries",
    "aborted",
    "admit_route",
    "answered",
    "closed_error",
    "closed_outcome",
    "failed",
    "finish",
    "launch",
    "pick",
    "stamp",
    "superseded",
    "undiscovered",
    "unsent",
]

STOP: Literal["stop"] = "stop"


@dataclass(slots=True)
class Admitted:
    """An endpoint chosen for the next attempt, with what its breaker granted."""

    state: EndpointState
    admission: int


def admit_route(call: Call, now: float) -> None:
    """Claim the call's right to use its route: raise `CircuitOpenError` (nothing
    sent) while the route's breaker is open, so a route failing on every endpoint
    fails fast; the one trial request after `reset_timeout` is let through. A
    cluster with an in-flight cap that is full raises `MeshError` (nothing sent)."""
    health = call.health
    if not health.breaker.closed:
        admission = health.admit(now)
        if admission == REFUSED:
            call.runtime.window.record(now, False, None, shed=True)
            health.window.record(now, False, None, shed=True)
            raise telemetry.not_sent(call, explain(call, CircuitOpenError(
                route_open_message(call, now), request=call.request)))
        call.route_admission = admission
    cap = call.runtime.cap
    if cap is not None:
        if not cap.acquire():
            release_route(call)
            route = f", route {call.route!r}" if call.route is not None else ""
            raise telemetry.not_sent(call, MeshError(
                f"service {call.runtime.name!r}{route}: {cap.limit} requests already in "
                f"flight, its limit (max_requests); nothing was sent", request=call.request))
        call.capped = cap


def route_open_message(call: Call, now: float) -> str:
    """Why a request failed fast on its route, and when the next trial is due."""
    health = call.health
    route = call.route if call.route is not None else health.key
    return (f"route {route!r} of service {call.runtime.name!r} failed on every endpoint "
            f"({health.needed}+ consecutive failures): its circuit breaker is open; "
            f"next trial in {health.next_trial(now):.1f} s; nothing was sent")


def release_route(call: Call) -> None:
    """The call ends: give back a route trial it held and never judged, and its slot of
    the cluster's in-flight cap."""
    cap = call.capped
    if cap is not None:
        call.capped = None
        cap.release()
    if call.route_admission != ADMITTED:
        call.health.release(call.route_admission)
        call.route_admission = ADMITTED


def pick(call: Call, now: float) -> Admitted | Outcome:
    """The endpoint for the next attempt, or the outcome that ends the call instead.

    A first attempt needs time left and an available endpoint. An extra attempt
    goes only to an endpoint expected to answer in the time left
    (deadline-aware admission); if it cannot be sent after all, the call ends
    with the answer it was meant to replace, and its budget token is given back.
    """
    extra = call.attempts > 0
    if call.runtime.closed:  # the client was closed meanwhile: nothing more is sent
        return closed_outcome(call)
    left = call.remaining(now)
    if left <= 0:
        error = call.deadline_error(now)
        return call.abandoned_retry(error) if extra else Outcome(None, error=error, sent=False)
    if extra and not call.health.breaker.closed:  # the route opened meanwhile: fail fast
        telemetry.decision(call, "no_retry", "route circuit breaker open")
        return call.abandoned_retry(CircuitOpenError(route_open_message(call, now),
                                                     request=call.request))
    try:
        state, admission = call.choose(now, within=left if extra else None)
    except TooSlow as exc:
        telemetry.decision(call, "no_retry", f"deadline too short: {exc}")
        return call.abandoned_retry(call.deadline_error(now, exc))
    except httpx.TransportError as exc:  # NoEndpointsError, CircuitOpenError: nothing sent
        exc.request = call.request
        if extra:
            telemetry.decision(call, "no_retry", f"no endpoint to retry on: {exc}")
            return call.abandoned_retry(exc)
        return Outcome(None, error=exc, sent=False)
    return Admitted(state, admission)


def closed_error(call: Call) -> MeshError:
    """The error of a request the client was closed under, before it could be sent."""
    sent = f"sent again after {call.attempts} attempt(s)" if call.attempts else "sent"
    return MeshError(f"the client was closed: {call.request.method} "
                     f"{redact_url(call.request.url)} to service {call.runtime.name!r} was not "
                     f"{sent}", request=call.request)


def closed_outcome(call: Call) -> Outcome:
    """How a call ends when the client is closed under it: with the failure of its last
    attempt (a connection closed under it), or, if none was sent, the closing itself."""
    error = closed_error(call)
    if call.attempts > 0:
        return call.abandoned_retry(error)
    return Outcome(None, error=error, sent=False, final=True)


def unsent(call: Call, state: EndpointState, attempt: Launch) -> Outcome:
    """An attempt that finds the client closed as it leaves: nothing is sent, nothing
    counts against the endpoint, and the call ends."""
    error = closed_error(call)
    state.breaker.release(attempt.admission)
    telemetry.abort_attempt(attempt.span, call, error)
    return Outcome(state, error=error, sent=False, final=True)


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
    thread or task, which calls `stamp()` when it really leaves) stamp it.

    Every attempt gets its own copy of the request (`Call.fork_request()`):
    the mesh's headers are never written into the caller's request, and
    concurrent attempts' headers never race.
    """
    request = call.fork_request()
    call.begin(chosen.state)
    span = telemetry.start_attempt(call, chosen.state, request, hedge=hedge)
    attempt = Launch(request, {}, span, start, chosen.admission)
    if call.attempts == 1 and not hedge and call.policy.hedge is not None:
        refusal = hedge_refusal(call)
        if refusal is not None:
            telemetry.decision(call, "no_hedge", refusal)
    if not concurrent:
        stamp(call, attempt, start)
    return attempt


def stamp(call: Call, attempt: Launch, now: float) -> None:
    """Set the deadline header and clamped timeouts as the attempt really leaves."""
    attempt.extensions, attempt.deadline_bound, attempt.limit_at = call.stamp(attempt.request,
                                                                              now)
    attempt.start = now


def failed(call: Call, state: EndpointState, attempt: Launch, exc: httpx.TransportError,
           now: float) -> Outcome:
    """An attempt raised a transport error: record it (EWMA, breaker, span)."""
    exc.request = call.request
    outcome = Outcome(state, error=exc, sent=sent_before_failure(exc))
    latency = now - attempt.start
    record(call, state, attempt, classify(call, attempt, None, exc), latency, now)
    telemetry.end_attempt(attempt.span, call, outcome, latency,
                          verdict_pending=call.wants_retry(outcome))
    return outcome


def answered(call: Call, state: EndpointState, attempt: Launch, response: httpx.Response,
             now: float) -> Outcome:
    """An attempt got response headers: record it (EWMA, breaker, span)."""
    outcome = Outcome(state, response=response)
    latency = now - attempt.start
    record(call, state, attempt, classify(call, attempt, response, None), latency, now)
    telemetry.end_attempt(attempt.span, call, outcome, latency,
                          verdict_pending=call.wants_retry(outcome))
    return outcome


def aborted(call: Call, state: EndpointState, attempt: Launch, exc: BaseException) -> None:
    """An attempt was cancelled (a losing hedge, or the caller): count nothing against it."""
    state.breaker.release(attempt.admission)
    release_route(call)
    telemetry.abort_attempt(attempt.span, call, exc)


def undiscovered(call: Call, now: float) -> BaseException:
    """The error for a service whose discovery has not answered within the deadline.

    The request waits for the first answer within its deadline, then raises
    `NoEndpointsError` (not `DeadlineExceeded`) if there is still none
    (docs/discovery.md).
    """
    waited = max(now - call.started, 0.0)
    return telemetry.not_sent(call, explain(call, NoEndpointsError(
        call.runtime.unready_message(waited), request=call.request)))


def finish(call: Call, outcome: Outcome, now: float) -> httpx.Response:
    """The response for the final outcome (with `extensions["meshlib"]`), or raise its error."""
    release_route(call)
    telemetry.finish(call, outcome)
    response = outcome.response
    ok = response is not None and response.status_code < 500
    latency = None if response is None else now - call.started
    call.runtime.window.record_with(call.health.window, now, ok, latency)
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
    deadline permitting), up to `Hedge.max_attempts` at once.
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
        return min(hedge_delay(self.call), left) if self._may_add() else left

    def settle(self, outcome: Outcome) -> tuple[bool, httpx.Response | None]:
        """Take a finished attempt: whether it wins, and a superseded response to drain."""
        stale = self.last.response if self.last is not None else None
        if not self.call.wants_retry(outcome):
            return True, stale
        self.last = outcome
        return False, stale

    def next_hedge(self, now: float) -> Admitted | Literal["stop"] | None:
        """After a wait with no answer: an endpoint to hedge to, `None` to keep waiting,
        or `STOP` when the deadline has passed."""
        if self.call.remaining(now) <= 0:
            return STOP
        if not self._may_add():
            return None
        state, admission, reason = choose_hedge(self.call, now)
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
        return Outcome(None, error=self.call.deadline_error(now), sent=True, final=True)


class Retries:
    """The decisions between the attempts of one call; the transport only sleeps and sends.

    After each attempt (or hedged group) that failed in a retryable way,
    `after()` asks the call's verdict: the seconds to sleep before the next
    attempt, or `None` when the call ends with that outcome. The verdict owns
    every stop rule (`retries`, the deadline, the retry budget, the
    idempotency gate); tenacity's `wait_random_exponential` picks the backoff
    (see `Call.verdict()`).
    """

    __slots__ = ("call", "rounds")

    def __init__(self, call: Call) -> None:
        self.call = call
        #: attempts (or hedged groups) judged so far, for the backoff
        self.rounds = 0

    def after(self, outcome: Outcome, now: float) -> float | None:
        """Judge a finished attempt: seconds to sleep before retrying, or `None` to stop."""
        call = self.call
        self.rounds += 1
        verdict = call.verdict(outcome, self.rounds, now)
        if verdict.retry:  # the superseded response is closed when the retry is sent
            telemetry.decision(call, "retry", verdict.reason, sleep_s=verdict.sleep)
            return verdict.sleep
        if verdict.retryable:
            telemetry.decision(call, "no_retry", verdict.reason)
        return None
