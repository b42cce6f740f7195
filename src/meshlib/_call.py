"""One logical mesh request across its attempts: every decision, no I/O.

The sync and async transports drive a `Call`: they ask it for an
endpoint, for the per-attempt headers and timeouts, hand it each attempt's
outcome, and ask whether (and after how long a sleep) to try again. The
rules of docs/guide.md and docs/deadlines.md live here once:

- the deadline spans all attempts and backoff; nothing is sent past it;
- the idempotency gate (`_gate`) decides which failures may be retried;
- every extra attempt (retry or hedge) draws a token from the service's
  retry budget *before* it sleeps or is sent;
- `Retry-After` on a `retry_on` status is honoured if it fits the deadline;
- deadline-aware admission: an extra attempt whose endpoint usually takes
  longer than the time left is not sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import RetryCallState, Retrying, wait_random_exponential

from ._breaker import ADMITTED
from ._cap import RequestCap
from ._endpoint import EndpointState
from ._errors import DeadlineExceeded, MeshError
from ._explain import explain
from ._gate import (
    is_idempotent,
    is_replayable,
    parse_retry_after,
    sent_before_failure,
)
from ._headers import DEADLINE_HEADER, GRPC_TIMEOUT_HEADER, copy_headers, set_ascii_header
from ._hedging import hedge_refusal
from ._info import MeshInfo
from ._policy import Policy
from ._propagation import format_grpc_timeout
from ._scope import current_deadline, describe_deadline
from ._service import ServiceRuntime

if TYPE_CHECKING:
    from ._mesh import Target
    from ._route_health import RouteHealth

__all__ = ["Call", "Outcome", "Verdict"]

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
#: the timeouts an HTTP/2 connection applies on behalf of every stream it carries
_MULTIPLEXED_KEYS = ("read", "write")
_NO_TIMEOUTS: dict[str, float | None] = {}
#: the (unused) controller a tenacity wait strategy's RetryCallState must name
_NO_RETRYING = Retrying()
#: a request built without ``httpx.Request.__init__`` (its attributes are copied)
_new_request = object.__new__


@dataclass(slots=True)
class Outcome:
    """What one attempt (or hedged group of attempts) produced."""

    state: EndpointState | None
    response: httpx.Response | None = None
    error: BaseException | None = None
    #: whether the failure may have reached the server (always True for a response)
    sent: bool = True
    #: the call must stop here and return this outcome (an extra attempt was not admitted)
    final: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether to try again, after how long, and why (for span events)."""

    retry: bool
    reason: str
    sleep: float = 0.0
    #: the outcome could have been retried (a refusal worth recording as ``no_retry``)
    retryable: bool = True


class Call:
    """The state and decisions of one logical request to a mesh service."""

    __slots__ = (
        "_waits", "attempts", "balancer", "base_timeouts", "capped", "deadline",
        "granted_timeouts", "health", "hedged", "idempotent", "multiplexed", "operator",
        "policy", "previous", "replayable", "request", "route", "route_admission", "runtime",
        "started", "token_at", "tried",
    )

    def __init__(self, target: Target, policy: Policy, request: httpx.Request,
                 now: float, granted_timeouts: dict[str, float | None] | None = None, *,
                 multiplexed: bool = False) -> None:
        runtime = target.runtime
        self.runtime: ServiceRuntime = runtime
        #: the route's fail-fast state, and what its breaker granted this call
        self.health: RouteHealth = target.health
        self.route_admission = ADMITTED
        #: the in-flight cap of its cluster whose slot the call holds, if any
        self.capped: RequestCap | None = None
        #: the configured route's key (name or index), ``None`` without routes
        self.route = target.route
        #: the effective policy, and the operator's (route, service, client, environment:
        #: without the caller's scoped overrides), which says what the service grants
        self.policy = policy
        self.operator = target.policy
        self.request = request
        self.started = now
        self.deadline = min(now + policy.timeout, current_deadline())
        self.idempotent = is_idempotent(request, policy.idempotent)
        self.replayable = is_replayable(request)
        self.balancer = runtime.balancer(policy.balancer)
        self.attempts = 0
        self.tried: set[str] = set()
        self.hedged = False
        #: the outcome a retry is replacing: returned if the retry is not sent after all
        self.previous: Outcome | None = None
        #: when the budget token of the pending extra attempt was drawn (for a refund)
        self.token_at: float | None = None
        #: the request's httpx timeouts (read, never changed: each attempt gets its own dict)
        self.base_timeouts: dict[str, float | None] = (
            request.extensions.get("timeout") or _NO_TIMEOUTS)
        #: the client's own httpx timeouts (``None``: unknown, the request's are taken)
        self.granted_timeouts = granted_timeouts
        #: the attempt may share an HTTP/2 connection with other requests: its deadline
        #: must not bound the connection's reads and writes (see :meth:`stamp`)
        self.multiplexed = multiplexed
        self._waits: wait_random_exponential | None = None  # built on the first retry

    # -- time ---------------------------------------------------------------------

    def remaining(self, now: float) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - now

    def deadline_error(self, now: float, cause: BaseException | None = None) -> DeadlineExceeded:
        """The error for a deadline that has passed, `cause` (what ran out of time, if
        anything did) as its `__cause__`; `explain()` adds the
        request, service and attempts when the call ends."""
        error = DeadlineExceeded(
            f"deadline passed ({describe_deadline(self.deadline, self.policy.timeout)})",
            request=self.request)
        error.__cause__ = cause
        return error

    # -- attempts ---------------------------------------------------------------------

    def choose(self, now: float, *, within: float | None = None) -> tuple[EndpointState, int]:
        """Pick and admit an endpoint, preferring one not tried yet by this call.

        `within`: only endpoints expected to answer in that many seconds (raises
        `TooSlow` if none is). Returns the endpoint and its breaker admission.
        """
        state, admission = self.runtime.pick(self.balancer, self.tried, now, within)
        self.tried.add(state.address)
        return state, admission

    def fork_request(self) -> httpx.Request:
        """The attempt's own copy of the request: own headers, same body and extensions.

        Every attempt is stamped (deadline header, trace context) on its copy,
        never on the caller's request: httpx copies the caller's headers into a
        redirect, and a redirect to a host outside the mesh must carry none of
        the mesh's. Concurrent attempts (hedges) need their own headers anyway.
        """
        r = self.request
        copy = _new_request(httpx.Request)
        copy.__dict__.update(r.__dict__)  # method, url, stream, extensions, _content
        copy.headers = copy_headers(r.headers)
        return copy

    def begin(self, state: EndpointState) -> None:
        """Count a started attempt (the endpoint's in-flight count and the call's attempts)."""
        state.begin()
        self.attempts += 1
        self.token_at = None  # the token, if any, is spent

    def stamp(self, request: httpx.Request, now: float) -> tuple[dict[str, Any], bool, float]:
        """Set the deadline header and the clamped timeouts as the attempt leaves.

        Returns the attempt's extensions; whether its time limit comes from the
        caller's deadline (then a timeout is the caller's, not the endpoint's,
        fault); and the time by which the attempt must have its response headers.
        """
        left = self.remaining(now)
        set_ascii_header(request.headers, DEADLINE_HEADER, str(max(int(left * 1000.0), 0)))
        if self.policy.propagate_grpc_timeout:  # off by default: no cost on the common path
            set_ascii_header(request.headers, GRPC_TIMEOUT_HEADER, format_grpc_timeout(left))
        attempt_timeout = self.policy.attempt_timeout
        if attempt_timeout is None or left <= attempt_timeout:
            deadline_bound, limit = True, max(left, 0.0)
        else:
            deadline_bound, limit = False, attempt_timeout
        base = self.base_timeouts
        timeouts: dict[str, float | None] = {}
        for key in _TIMEOUT_KEYS:
            value = base.get(key)
            timeouts[key] = limit if value is None or value > limit else value
        if self.multiplexed:
            # On HTTP/2 the request that happens to read (or write) the shared
            # connection does so for every stream on it, with its own timeout, and a
            # timeout there fails them all. So reads and writes keep the client's own
            # timeouts (bounded by the service's policy); the attempt's deadline ends
            # its own stream only (the async transport cancels the one request).
            grant = self.operator.timeout
            for key in _MULTIPLEXED_KEYS:
                value = base.get(key)
                timeouts[key] = grant if value is None or value > grant else value
        extensions = dict(request.extensions)
        extensions["timeout"] = timeouts
        sni = self.runtime.sni
        if sni is not None:
            extensions["sni_hostname"] = sni
        return extensions, deadline_bound, now + limit

    def caller_imposed(self, phase: str, extensions: Mapping[str, Any], start: float,
                       limit_at: float | None = None) -> bool:
        """Whether a `phase` timeout of an attempt that left at `start` fired under a
        limit the caller imposed, shorter than what the service grants.

        Judged from the limits themselves: the attempt's limit for the phase (its
        httpx timeout, clamped to the deadline and `attempt_timeout`) against what
        the operator's policy (route, service, client, environment; not the scoped
        overrides or deadlines) and the client's own httpx timeout grant it. A
        shorter limit can only come from the caller: a scoped `meshlib.deadline`
        or `meshlib.policy`, a `timeout=` argument, or a deadline inherited
        from `x-mesh-timeout-ms`.
        """
        timeouts = extensions.get("timeout")
        imposed = timeouts.get(phase) if isinstance(timeouts, Mapping) else None
        if limit_at:  # the attempt's own limit (what ends an HTTP/2 stream)
            limit = limit_at - start
            imposed = limit if imposed is None or imposed > limit else imposed
        if imposed is None:
            return False
        operator = self.operator
        granted = self.started + operator.timeout - start
        if operator.attempt_timeout is not None:
            granted = min(granted, operator.attempt_timeout)
        own = self.granted_timeouts if self.granted_timeouts is not None else self.base_timeouts
        client_limit = own.get(phase)
        if client_limit is not None:
            granted = min(granted, client_limit)
        return float(imposed) < granted - 0.001

    def wants_retry(self, outcome: Outcome) -> bool:
        """Cheap first check: could this outcome be retried at all? (No budget drawn.)"""
        if outcome.final:
            return False
        if outcome.error is not None:
            return isinstance(outcome.error, httpx.TransportError) and not isinstance(
                outcome.error, (DeadlineExceeded, MeshError)
            )
        assert outcome.response is not None
        return outcome.response.status_code in self.policy.retry_on

    def verdict(self, outcome: Outcome, rounds: int, now: float) -> Verdict:
        """Decide whether to retry `outcome`, the result of the `rounds`-th attempt (or
        hedged group); draws the budget token when it says yes.

        The one owner of every stop rule: `retries`, the idempotency gate, the
        deadline (with the sleep), deadline-aware admission and the retry budget.
        The sleep is tenacity's `wait_random_exponential` backoff, or a longer
        `Retry-After` that fits the deadline.
        """
        if not self.wants_retry(outcome):
            return Verdict(False, "success" if outcome.error is None else "not retryable",
                           retryable=False)
        if self.attempts > self.policy.retries:
            return Verdict(False, "retries exhausted")
        sent = outcome.response is not None or (
            outcome.error is not None and sent_before_failure(outcome.error)
        )
        if not self.replayable:
            return Verdict(False, "request body is a stream that cannot be replayed")
        if sent and not self.idempotent:
            return Verdict(False, "not idempotent and the request may have been processed")
        sleep = self._backoff(rounds)
        left = self.remaining(now)
        if outcome.response is not None:
            retry_after = parse_retry_after(outcome.response.headers.get("retry-after"))
            if retry_after is not None:
                if retry_after >= left:
                    return Verdict(False, f"Retry-After {retry_after:g} s exceeds the deadline")
                sleep = max(sleep, retry_after)
        sleep = min(sleep, max(left, 0.0))
        if left - sleep <= 0:
            return Verdict(False, "deadline too short for another attempt")
        estimate = self.best_estimate(now)
        if estimate is not None and estimate >= left - sleep:
            return Verdict(False, f"deadline too short: {left - sleep:.3f} s left, endpoints "
                                  f"usually take {estimate:.3f} s")
        if not self.runtime.budget.try_withdraw(now):
            return Verdict(False, "retry budget exhausted")
        self.token_at = now
        self.previous = outcome
        return Verdict(True, self.retry_reason(outcome), sleep)

    def refund(self) -> None:
        """Give back the budget token of an extra attempt that is not sent after all."""
        if self.token_at is not None:
            self.runtime.budget.refund(self.token_at)
            self.token_at = None

    def abandoned_retry(self, error: BaseException) -> Outcome:
        """The outcome when a retry cannot be sent: the answer it was meant to replace.

        The budget token is given back. Without a previous outcome, `error`.
        """
        self.refund()
        previous = self.previous
        if previous is None:
            return Outcome(None, error=error, sent=False, final=True)
        return Outcome(previous.state, previous.response, previous.error, previous.sent,
                       final=True)

    def retry_reason(self, outcome: Outcome) -> str:
        """Why an outcome is being retried, for span events."""
        if outcome.response is not None:
            return f"status {outcome.response.status_code}"
        return type(outcome.error).__name__

    def _backoff(self, rounds: int) -> float:
        """tenacity's full-jitter exponential wait after `rounds` attempts (built lazily:
        a first attempt that succeeds creates no tenacity object)."""
        if self._waits is None:
            backoff = self.policy.backoff
            self._waits = wait_random_exponential(multiplier=backoff.base, max=backoff.max)
        state = RetryCallState(_NO_RETRYING, None, (), {})
        state.attempt_number = rounds
        return float(self._waits(state))

    def best_estimate(self, now: float) -> float | None:
        """The lowest latency estimate among endpoints this call has not tried (or all)."""
        best = math.inf
        for state in self.runtime.states.values():
            if state.address in self.tried and len(self.tried) < len(self.runtime.states):
                continue
            if not state.breaker.available(now):
                continue
            value = state.ok_estimate(now)
            if value is None:
                return None  # an endpoint not measured yet might well make it
            best = min(best, value)
        return None if math.isinf(best) else best

    def can_hedge(self) -> bool:
        """Whether this request may be hedged at all: a hedge policy, and no
        `meshlib._hedging.hedge_refusal()`."""
        return self.policy.hedge is not None and hedge_refusal(self) is None

    def result(self, outcome: Outcome, now: float) -> httpx.Response:
        """The response to return for the final outcome, or raise its error."""
        if outcome.response is not None:
            return outcome.response
        error = outcome.error
        assert error is not None
        if isinstance(error, httpx.TimeoutException) and not isinstance(error, DeadlineExceeded) \
                and self.remaining(now) <= 0.001:
            error = self.deadline_error(now, error)
        raise explain(self, error)

    def describe(self, state: EndpointState | None) -> MeshInfo:
        """The `response.extensions["meshlib"]` dict."""
        return {
            "service": self.runtime.name,
            "route": self.route,
            "endpoint": state.address if state is not None else None,
            "attempts": self.attempts,
            "hedged": self.hedged,
        }

