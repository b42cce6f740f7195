"""The JSON-ready state of one service, for `snapshot()` and `meshlib status`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._window import Window

if TYPE_CHECKING:
    from ._service import ServiceRuntime

__all__ = ["service_snapshot"]

#: the window of an endpoint that has had no judged attempt yet
_EMPTY = Window(0.0)


def service_snapshot(runtime: ServiceRuntime, now: float) -> dict[str, Any]:
    """Endpoints with their score, in-flight, breaker, counters and window; the budget's
    balance; the routes' breakers and windows; the service's window.

    `ewma_ms` is the balancer's score, in which a failure counts as a sample
    of at least `FAILURE_PENALTY` (1 s): a fast-failing endpoint reads about
    1000 ms. `latency_ms` is the decayed peak EWMA of successful answers
    only, `None` before the first one.
    """
    endpoints = []
    for state in list(runtime.states.values()):
        ewma = state.ewma(now)
        ok = state.ok_estimate(now)
        endpoints.append({
            "endpoint": state.address,
            "ewma_ms": None if ewma is None else round(ewma * 1000.0, 3),
            "latency_ms": None if ok is None else round(ok * 1000.0, 3),
            "inflight": state.inflight,
            "breaker": state.breaker.state(now),
            "requests": state.requests,
            "failures": state.failures,
            "weight": state.endpoint.weight,
            "zone": state.endpoint.zone,
            "priority": state.endpoint.priority,
            "window": (state.window or _EMPTY).snapshot(now),
        })
    return {
        "discovery": runtime.discovery.url,
        "ready": runtime.ready.is_set(),
        "balancer": runtime.policy.balancer,
        "endpoints": endpoints,
        "retry_budget": {"balance": round(runtime.budget.balance(now), 3)},
        "routes": runtime.routes.snapshot(now),
        "window": runtime.window.snapshot(now),
    }
