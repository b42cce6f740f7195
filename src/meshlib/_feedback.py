"""The one place an attempt's outcome is judged and handed out (no I/O).

Every finished attempt comes here once, as a response or an error. It is
classified (`classify()`) and the result feeds, in one pass: the
endpoint's latency score (EWMA and failure penalty), the endpoint's breaker
(relative to its peers, and within the ejection cap), the route's health,
the service's latency window (for `Hedge(delay="p95")`) and the golden
signal windows. Telemetry reads the same classification.

The rules (docs/reliability.md):

- **Relative ejection.** A failed *answer* (5xx, a timeout or a connection
  dropped after the request was sent) counts against an endpoint only when a
  peer last answered the same route well: when every endpoint fails alike on
  a route, no endpoint is ejected for it (the route's own breaker takes over).
  At most `Breaker.max_ejection_percent` of a service's endpoints are out at
  once for failed answers. A refused connection (or a connect timeout) is the
  endpoint's own failure and always counts: a service whose every instance
  refuses fails fast through its endpoint breakers. It says nothing about the
  route, whose breaker counts failed answers only.
- **The caller's limits never count.** A timeout fired under a limit the
  caller imposed (a scoped deadline or policy, a `timeout=` argument, an
  inherited `x-mesh-timeout-ms`) that is shorter than what the service's own
  policy (and the client's own timeout) grants, or a pool timeout of the
  client's own pool, holds nothing against the endpoint or the route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from ._balancer import FAILURE_PENALTY
from ._breaker import ADMITTED, TRIAL
from ._gate import sent_before_failure, stream_refused_locally
from ._route_health import streak_needed
from ._window import Window

if TYPE_CHECKING:
    from ._attempts import Launch
    from ._call import Call
    from ._endpoint import EndpointState
    from ._service import ServiceRuntime

__all__ = [
    "ANSWER_FAILURE", "CALLERS_FAULT", "CONNECT_FAILURE", "KIND_NAMES", "SUCCESS", "classify",
    "record",
]

#: how an attempt ended, as far as health is concerned
SUCCESS, ANSWER_FAILURE, CONNECT_FAILURE, CALLERS_FAULT = 0, 1, 2, 3
KIND_NAMES = ("success", "answer_failure", "connect_failure", "callers_fault")

_PHASES: tuple[tuple[type[httpx.TimeoutException], str], ...] = (
    (httpx.ConnectTimeout, "connect"), (httpx.WriteTimeout, "write"),
    (httpx.ReadTimeout, "read"))


def classify(call: Call, attempt: Launch, response: httpx.Response | None,
             error: BaseException | None) -> int:
    """`SUCCESS`, `ANSWER_FAILURE`, `CONNECT_FAILURE` or `CALLERS_FAULT`.

    A response that arrived is an answer, whatever went wrong with it: an error
    raised once response bytes had arrived (a head too large or malformed to
    parse, which both pools raise as `httpx.RemoteProtocolError`) is an
    `ANSWER_FAILURE`, never counted as a refused connection. Only errors that
    prove nothing was sent (`_gate.sent_before_failure`) are connection failures.
    """
    if response is not None:
        return ANSWER_FAILURE if response.status_code >= 500 else SUCCESS
    if call.runtime.closed:
        return CALLERS_FAULT  # the caller closed the client under its own requests
    if isinstance(error, httpx.PoolTimeout) or (
            error is not None and stream_refused_locally(error)):
        return CALLERS_FAULT  # the client's own pool was full: never the endpoint's fault
    if isinstance(error, httpx.TimeoutException):
        phase = next((p for kind, p in _PHASES if isinstance(error, kind)), "read")
        if call.caller_imposed(phase, attempt.extensions, attempt.start, attempt.limit_at):
            return CALLERS_FAULT
        return CONNECT_FAILURE if phase == "connect" else ANSWER_FAILURE
    if error is not None and not sent_before_failure(error):
        return CONNECT_FAILURE
    return ANSWER_FAILURE  # dropped, reset or garbled after the request was sent


def record(call: Call, state: EndpointState, attempt: Launch, kind: int, latency: float,
           now: float) -> None:
    """Hand one attempt's outcome to everything that learns from it."""
    admission = attempt.admission
    breaker = state.breaker
    health = call.health
    route_admission = call.route_admission
    if route_admission != ADMITTED:
        call.route_admission = ADMITTED  # the route's trial is decided by this attempt
    runtime = call.runtime
    if kind == CALLERS_FAULT:
        breaker.release(admission)
        health.release(route_admission)
        return
    window = state.window
    if window is None:
        window = state.window = Window(now)
    window.record(now, kind == SUCCESS, latency if kind == SUCCESS else None)
    if kind == SUCCESS:
        state.streak = 0
        state.observe(latency, now, failed=False, penalty=FAILURE_PENALTY)
        breaker.record(True, now, admission)
        health.succeeded(state.address, now, route_admission)
        runtime.latencies.add(latency)
        return
    state.observe(latency, now, failed=True, penalty=FAILURE_PENALTY)
    if kind == CONNECT_FAILURE:
        # the endpoint's own failure, uncapped; it says nothing about the route
        breaker.record(False, now, admission)
        health.release(route_admission)
        return
    state.streak += 1
    if not health.peers_succeed(state.address):
        # every endpoint fails alike on this route: not this endpoint's fault. A trial
        # of an ejected endpoint that fails like its peers proves it no worse than them.
        if admission == TRIAL:
            breaker.record(True, now, admission)
        else:
            breaker.release(admission)
    elif admission != TRIAL and breaker.would_open():
        if state.streak < streak_needed(breaker.config.failures,
                                        _peer_failure_rate(runtime, state, now)):
            # its peers fail this often too: a run this long is a coincidence
            breaker.release(admission)
        else:
            ejections = runtime.ejections
            if ejections.reserve(state, runtime.states):  # within max_ejection_percent
                breaker.record(False, now, admission)
                ejections.settle(state)
    else:
        breaker.record(False, now, admission)
    states = runtime.states
    health.failed(state.address, now, runtime.ejections.available(states, now),
                  lambda address: runtime.ejections.usable(states, address, now),
                  route_admission)


#: peers whose windows are read to judge an endpoint's run of failures
_PEERS_READ = 64


def _peer_failure_rate(runtime: ServiceRuntime, state: EndpointState, now: float) -> float | None:
    """How often the other endpoints' sent attempts failed over the last 60 s (`None`
    with fewer than 20): read only when a failure would eject `state`."""
    sent = ok = 0
    for n, other in enumerate(runtime.states.values()):
        if n >= _PEERS_READ:
            break
        window = other.window
        if other is not state and window is not None:
            s, k = window.sent_ok(now)
            sent += s
            ok += k
    return max(sent - ok, 0) / sent if sent >= 20 else None
