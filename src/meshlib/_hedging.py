"""Whether and where a request is hedged (no I/O): the delay, the refusal, the pick."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._breaker import REFUSED
from ._errors import MeshError, TooSlow
from ._gate import is_bytes_body

if TYPE_CHECKING:
    from ._call import Call
    from ._endpoint import EndpointState

__all__ = ["choose_hedge", "hedge_delay", "hedge_refusal"]


def hedge_delay(call: Call) -> float:
    """Seconds to wait for the first attempt before hedging (fixed, or the service's p95)."""
    hedge = call.policy.hedge
    assert hedge is not None
    if hedge.delay == "p95":
        p95 = call.runtime.latencies.percentile(0.95)
        return hedge.fallback if p95 is None else p95
    return float(hedge.delay)


def hedge_refusal(call: Call) -> str | None:
    """Why a request under a hedge policy may not be hedged at all (`None`: it may).

    It needs `retries` allowing an extra attempt (hedges and retries share
    one limit), an idempotent request with a replayable body, and another
    endpoint.
    """
    if call.policy.retries < 1:
        return "no extra attempt allowed (retries=0)"
    if not call.idempotent:
        return "not idempotent"
    if not call.replayable:
        return "request body is a stream that cannot be replayed"
    if not is_bytes_body(call.request):
        return "request body is a multipart upload, read by one attempt at a time"
    if len(call.runtime.states) <= 1:
        return "only one endpoint"
    return None


def choose_hedge(call: Call, now: float) -> tuple[EndpointState | None, int, str]:
    """Pick an endpoint for a hedge and draw its budget token, or say why not."""
    left = call.remaining(now)
    if left <= 0:
        return None, REFUSED, "deadline passed"
    if call.runtime.closed:
        return None, REFUSED, "the client was closed"
    if call.attempts > call.policy.retries:
        return None, REFUSED, "no extra attempt left (retries)"
    try:
        state, admission = call.runtime.pick(call.balancer, call.tried, now, left)
    except TooSlow:
        return None, REFUSED, "deadline too short for a hedge"
    except MeshError:
        return None, REFUSED, "no available endpoint"
    if state.address in call.tried:
        state.breaker.release(admission)
        return None, REFUSED, "no other endpoint to hedge to"
    if not call.runtime.budget.try_withdraw(now):
        state.breaker.release(admission)
        return None, REFUSED, "retry budget exhausted"
    call.tried.add(state.address)
    call.hedged = True
    return state, admission, "first attempt slower than the hedge delay"
