"""OpenTelemetry traces and metrics, through opentelemetry-api only.

Without an SDK every call here is a no-op of the API and costs close to
nothing; attribute work is guarded by ``span.is_recording()``. Instruments
are created once per process (the API's proxies bind them to whatever
provider is installed later).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from ._call import Call, Outcome
    from ._endpoint import EndpointState

__all__ = ["Telemetry", "telemetry"]

logger = logging.getLogger("meshlib")

#: the HTTP semantic conventions' advisory buckets for http.client.request.duration
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)


class Telemetry:
    """Spans and metrics for mesh attempts and decisions."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("meshlib")
        meter = metrics.get_meter("meshlib")
        self.duration = meter.create_histogram(
            "http.client.request.duration", unit="s",
            description="Duration of HTTP client requests (one per attempt).",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.retries = meter.create_counter(
            "meshlib.retries", unit="{retry}", description="Retries sent.")
        self.hedges = meter.create_counter(
            "meshlib.hedges", unit="{hedge}", description="Hedged attempts sent.")
        self.budget_refusals = meter.create_counter(
            "meshlib.retry_budget.refusals", unit="{refusal}",
            description="Extra attempts refused because the retry budget was empty.")
        self.deadline_expiries = meter.create_counter(
            "meshlib.deadline.expiries", unit="{request}",
            description="Logical requests that ended because their deadline passed.")
        self.breaker_transitions = meter.create_counter(
            "meshlib.breaker.transitions", unit="{transition}",
            description="Circuit breaker state changes.")

    def start_attempt(self, call: Call, state: EndpointState, request: httpx.Request, *,
                      hedge: bool = False) -> trace.Span:
        """Open the CLIENT span of one attempt and inject trace context into its headers."""
        span = self.tracer.start_span(request.method, kind=SpanKind.CLIENT)
        if span.is_recording():
            endpoint = state.endpoint
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("url.full", _redacted(request.url))
            span.set_attribute("server.address", call.runtime.name)
            span.set_attribute("server.port", request.url.port or (
                443 if request.url.scheme == "https" else 80))
            span.set_attribute("network.peer.address", endpoint.host)
            span.set_attribute("network.peer.port", endpoint.port)
            span.set_attribute("meshlib.service", call.runtime.name)
            span.set_attribute("meshlib.endpoint", state.address)
            span.set_attribute("meshlib.balancer", call.policy.balancer)
            if call.attempts > 1:
                span.set_attribute("http.request.resend_count", call.attempts - 1)
            if hedge:
                span.set_attribute("meshlib.hedge", True)
        ctx = trace.set_span_in_context(span) if span.is_recording() else otel_context.get_current()
        propagate.inject(request.headers, context=ctx)
        return span

    def end_attempt(self, span: trace.Span, call: Call, outcome: Outcome, latency: float) -> None:
        """Close an attempt's span and record its duration."""
        request = call.request
        status = outcome.response.status_code if outcome.response is not None else None
        error_type = None
        if outcome.error is not None:
            error_type = type(outcome.error).__name__
        elif status is not None and status >= 500:
            error_type = str(status)
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "server.address": call.runtime.name,
            "meshlib.service": call.runtime.name,
        }
        if status is not None:
            attributes["http.response.status_code"] = status
        if error_type is not None:
            attributes["error.type"] = error_type
        self.duration.record(latency, attributes)
        if span.is_recording():
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()

    def decision(self, call: Call, name: str, reason: str, **attributes: Any) -> None:
        """Record why an attempt was (or was not) retried or hedged, as a span event."""
        span = trace.get_current_span()
        call.events.append((name, {"reason": reason, **attributes}))
        if span.is_recording():
            span.add_event(f"meshlib.{name}", {"meshlib.reason": reason,
                                                "meshlib.service": call.runtime.name,
                                                **attributes})
        labels = {"meshlib.service": call.runtime.name}
        if name == "retry":
            self.retries.add(1, labels)
        elif name == "hedge":
            self.hedges.add(1, labels)
        elif "budget" in reason:
            self.budget_refusals.add(1, labels)

    def deadline_expired(self, call: Call) -> None:
        """Count a logical request that ended on its deadline."""
        self.deadline_expiries.add(1, {"meshlib.service": call.runtime.name})

    def breaker_transition(self, service: str, endpoint: str, old: str, new: str) -> None:
        """Log and count a breaker state change."""
        logger.info("circuit breaker of %s endpoint %s: %s -> %s", service, endpoint, old, new)
        self.breaker_transitions.add(1, {"meshlib.service": service, "meshlib.from": old,
                                         "meshlib.to": new})


def _redacted(url: httpx.URL) -> str:
    if url.userinfo:
        return str(url.copy_with(username="REDACTED", password="REDACTED"))
    return str(url)


telemetry = Telemetry()
