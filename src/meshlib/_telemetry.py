"""OpenTelemetry traces, metrics and logs for mesh requests, through opentelemetry-api only.

Without an SDK every call here is a no-op of the API and costs close to
nothing (about a microsecond per attempt, see `docs/telemetry.md`):
attribute work is guarded by `span.is_recording()` and instruments are
created once per process (the API's proxies bind them to whatever provider
is installed later).

Traces
    One CLIENT span per attempt (retries and hedges each get their own),
    named after the method and carrying the HTTP client semantic conventions
    plus `meshlib.*` attributes: `meshlib.service`, `meshlib.route` (the
    configured route's name, or the method and first path segment, as the
    route breaker keys it) and, for a configured route, `http.route`. Spans
    are children of the caller's current span, and W3C trace context is
    injected into each attempt's headers via the global propagator.

    Decisions become span events on the attempt they are about: the verdict
    on an attempt's outcome (`meshlib.retry` / `meshlib.no_retry`) goes
    on that attempt's span, a hedge (`meshlib.hedge` / `meshlib.no_hedge`)
    on the span of the attempt still in flight, and a request that sent
    nothing (`meshlib.circuit_open` / `meshlib.no_endpoints`) on the last
    attempt's span, or on the caller's span when there was no attempt. To
    make that possible, the span of an attempt whose outcome may be retried
    is *parked* when the attempt ends (its end time is fixed then) and ended
    once the verdict is in: when the next attempt starts or the logical
    request finishes.

Metrics
    `http.client.request.duration` (seconds, per attempt; with
    `meshlib.service`, `meshlib.route` and, for configured routes,
    `http.route`: at most 1,024 implicit routes per service), the counters
    `meshlib.retries`, `meshlib.hedges`, `meshlib.retry_budget.refusals`,
    `meshlib.deadline.expiries`, `meshlib.breaker.transitions` and
    `meshlib.requests.not_sent`, and the observable gauge `meshlib.endpoints`
    (endpoints per service and breaker state, across the live clients that
    `register_mesh()` registered).

Logs
    Under the `meshlib` logger: breaker transitions at INFO (discovery
    changes are logged at INFO by `meshlib.discovery`); per-request
    decisions only at DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.environment_variables import (
    OTEL_PYTHON_METER_PROVIDER,
    OTEL_PYTHON_TRACER_PROVIDER,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from ._breaker import CLOSED, HALF_OPEN, OPEN
from ._errors import CircuitOpenError, DeadlineExceeded, NoEndpointsError

if TYPE_CHECKING:
    from ._call import Call, Outcome
    from ._endpoint import EndpointState
    from ._service import ServiceRuntime

__all__ = ["DURATION_BUCKETS", "Telemetry", "register_mesh", "telemetry"]

logger = logging.getLogger("meshlib")

#: the HTTP semantic conventions' advisory buckets for ``http.client.request.duration``
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)

_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"})
#: query parameters the semantic conventions say to redact in ``url.full``
_SECRET_QUERY_KEYS = frozenset({"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"})
_BREAKER_STATES = (CLOSED, HALF_OPEN, OPEN)


class _Trace:
    """The attempt spans of one logical request, kept only while tracing records.

    `open`: spans of attempts in flight, oldest first. `parked`: spans of
    finished attempts awaiting a verdict, with their end time (ns).
    """

    __slots__ = ("__weakref__", "open", "parked")

    def __init__(self) -> None:
        self.open: list[Span] = []
        self.parked: list[tuple[Span, int]] = []

    def take_parked(self) -> list[tuple[Span, int]]:
        parked, self.parked = self.parked, []
        return parked

    def __del__(self) -> None:
        # a request abandoned between attempts (e.g. cancelled during backoff)
        with contextlib.suppress(Exception):
            _end_all(self.take_parked())


class Telemetry:
    """Spans, metrics and logs for mesh attempts and decisions (one per process)."""

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
            description="Retries and hedges refused because the retry budget was empty.")
        self.deadline_expiries = meter.create_counter(
            "meshlib.deadline.expiries", unit="{request}",
            description="Logical requests that ended because their deadline passed.")
        self.breaker_transitions = meter.create_counter(
            "meshlib.breaker.transitions", unit="{transition}",
            description="Circuit breaker state changes.")
        self.not_sent_requests = meter.create_counter(
            "meshlib.requests.not_sent", unit="{request}",
            description="Logical requests that failed fast with nothing sent "
                        "(every breaker open, no endpoints).")
        self.endpoints = meter.create_observable_gauge(
            "meshlib.endpoints", callbacks=[_observe_endpoints], unit="{endpoint}",
            description="Endpoints known per service, by circuit breaker state.")
        self._traces: weakref.WeakKeyDictionary[httpx.Request, _Trace] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()
        self._tracing = False

    # -- attempts ---------------------------------------------------------------------

    def start_attempt(self, call: Call, state: EndpointState, request: httpx.Request, *,
                      hedge: bool = False) -> Span:
        """Open the CLIENT span of one attempt and inject trace context into its headers.

        Call after `call.begin()` (so `call.attempts` counts this attempt).
        """
        if not self._tracing:
            # a provider may be installed at any time; looking is one global read
            self._tracing = _tracing_installed()
            if not self._tracing:
                # no SDK: no span of our own, but the caller's context (a trace received
                # from upstream, baggage) still travels to the next hop
                current = otel_context.get_current()
                if current:
                    propagate.inject(request.headers, context=current)
                return INVALID_SPAN
        name, attributes = _attempt_attributes(call, state, request, hedge)
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        if span.get_span_context().is_valid:
            propagate.inject(request.headers, context=trace.set_span_in_context(span))
        else:  # no span to propagate: only what the caller's context holds (baggage), if any
            current = otel_context.get_current()
            if current:
                propagate.inject(request.headers, context=current)
        if span.is_recording():
            self._tracing = True
            with self._lock:
                record = self._traces.get(call.request)
                if record is None:
                    record = self._traces[call.request] = _Trace()
                parked = record.take_parked()  # the verdicts on earlier attempts are in
                record.open.append(span)
            _end_all(parked)
        return span

    def end_attempt(self, span: Span, call: Call, outcome: Outcome, latency: float, *,
                    verdict_pending: bool) -> None:
        """Close an attempt: record its duration, status and error on the span.

        `verdict_pending`: the core will still judge this outcome (it may be
        retried); the span is then parked (end time fixed now) so that the
        verdict can be added to it as an event.
        """
        request = call.request
        response = outcome.response
        status = response.status_code if response is not None else None
        if outcome.error is not None:
            error_type: str | None = _error_type(outcome.error)
        elif status is not None and status >= 400:
            error_type = str(status)
        else:
            error_type = None
        if _metrics_installed():  # the attributes are not built for the API's no-op meter
            url = request.url
            attributes: dict[str, Any] = {
                "http.request.method": request.method,
                "server.address": call.runtime.name,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
                "url.scheme": url.scheme,
                "meshlib.service": call.runtime.name,
                "meshlib.route": str(call.health.key),
            }
            if call.route is not None:
                attributes["http.route"] = str(call.route)
            if status is not None:
                attributes["http.response.status_code"] = status
            if error_type is not None:
                attributes["error.type"] = error_type
            self.duration.record(latency, attributes)
        if not span.is_recording():
            span.end()
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if response is not None and response.http_version:
                span.set_attribute("network.protocol.version",
                                   response.http_version.removeprefix("HTTP/"))
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            if outcome.error is not None:
                span.record_exception(outcome.error)
                span.set_status(Status(StatusCode.ERROR, str(outcome.error)))
            else:
                span.set_status(Status(StatusCode.ERROR))
        with self._lock:
            record = self._traces.get(call.request)
            if record is not None:
                _discard(record.open, span)
                if verdict_pending:
                    record.parked.append((span, time.time_ns()))
                    return
        span.end()

    def abort_attempt(self, span: Span, call: Call, error: BaseException) -> None:
        """Close the span of an attempt that ended without an outcome (cancelled, interrupted)."""
        if span.is_recording():
            with self._lock:
                record = self._traces.get(call.request)
                if record is not None:
                    _discard(record.open, span)
            if isinstance(error, Exception):
                span.set_attribute("error.type", _error_type(error))
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            else:  # CancelledError: a losing hedge, or the caller gave up
                span.add_event("meshlib.cancelled", {"meshlib.reason": type(error).__name__})
        span.end()

    def finish(self, call: Call, outcome: Outcome) -> None:
        """The logical request is over: end parked spans; note a request that sent nothing."""
        error = outcome.error
        if error is not None and not outcome.sent and isinstance(
                error, (CircuitOpenError, NoEndpointsError)):
            self.not_sent(call, error)
        if not self._tracing or not self._traces:  # nothing recorded (no SDK): no lock
            return
        with self._lock:
            record = self._traces.pop(call.request, None)
        if record is not None:
            _end_all(record.take_parked())

    # -- decisions --------------------------------------------------------------------

    def decision(self, call: Call, name: str, reason: str, **attributes: Any) -> None:
        """Record why a request was (or was not) retried or hedged.

        `name` is `retry`, `no_retry`, `hedge` or `no_hedge`. The
        event goes on the attempt it is about (see the module docstring);
        the counters for retries, hedges and budget refusals move here.
        """
        labels = {"meshlib.service": call.runtime.name}
        if name == "retry":
            self.retries.add(1, labels)
        elif name == "hedge":
            self.hedges.add(1, labels)
        elif "budget" in reason:
            self.budget_refusals.add(1, labels)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s (attempt %d): %s: %s %s", call.request.method,
                         _redacted(call.request.url), call.attempts, name, reason, attributes or "")
        span = self._decision_span(call, hedging=name in ("hedge", "no_hedge"))
        if span is not None:
            event: dict[str, Any] = {"meshlib.reason": reason,
                                     "meshlib.service": call.runtime.name}
            for key, value in attributes.items():
                event[key if "." in key else f"meshlib.{key}"] = value
            span.add_event(f"meshlib.{name}", event)

    def not_sent(self, call: Call, error: BaseException) -> BaseException:
        """Record a logical request that ends with nothing sent; return `error` to raise.

        Counts `meshlib.requests.not_sent` (or a deadline expiry) and adds a
        `meshlib.circuit_open` / `meshlib.no_endpoints` /
        `meshlib.deadline_exceeded` event.
        """
        labels = {"meshlib.service": call.runtime.name, "error.type": _error_type(error)}
        if isinstance(error, DeadlineExceeded):
            name = "deadline_exceeded"
            self.deadline_expiries.add(1, {"meshlib.service": call.runtime.name})
        else:
            name = "circuit_open" if isinstance(error, CircuitOpenError) else "no_endpoints"
            self.not_sent_requests.add(1, labels)
        logger.debug("%s %s: nothing sent: %s", call.request.method,
                     _redacted(call.request.url), error)
        span = self._decision_span(call, hedging=False)
        if span is not None:
            span.add_event(f"meshlib.{name}", {"meshlib.reason": str(error), **labels})
        return error

    def deadline_expired(self, call: Call) -> None:
        """Count a logical request that ended on its deadline."""
        self.deadline_expiries.add(1, {"meshlib.service": call.runtime.name})

    def breaker_transition(self, service: str, endpoint: str, old: str, new: str) -> None:
        """Log (INFO) and count a breaker state change; add an event to the current span."""
        logger.info("circuit breaker of %s endpoint %s: %s -> %s", service, endpoint, old, new)
        attributes = {"meshlib.service": service, "meshlib.breaker.from": old,
                      "meshlib.breaker.to": new}
        self.breaker_transitions.add(1, attributes)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("meshlib.breaker_transition",
                           {**attributes, "meshlib.endpoint": endpoint})

    def route_transition(self, service: str, route: str, old: str, new: str) -> None:
        """Log (INFO when it opens or closes) and count a route breaker's state change."""
        logger.info("route breaker of %s route %s: %s -> %s", service, route, old, new)
        attributes = {"meshlib.service": service, "meshlib.breaker.from": old,
                      "meshlib.breaker.to": new, "meshlib.breaker.kind": "route"}
        self.breaker_transitions.add(1, attributes)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("meshlib.route_breaker_transition",
                           {**attributes, "meshlib.route": route})

    # -- helpers ----------------------------------------------------------------------

    def _decision_span(self, call: Call, *, hedging: bool) -> Span | None:
        """The span a decision belongs on: the judged attempt, the one in flight, or the
        caller's."""
        if self._tracing:
            with self._lock:
                record = self._traces.get(call.request)
                if record is not None:
                    if hedging and record.open:
                        return record.open[0]
                    if record.parked:
                        return record.parked[-1][0]
                    if record.open:
                        return record.open[0]
        span = trace.get_current_span()
        return span if span.is_recording() else None


def _attempt_attributes(call: Call, state: EndpointState, request: httpx.Request,
                        hedge: bool) -> tuple[str, dict[str, Any]]:
    """An attempt span's name and its attributes (HTTP client semantic conventions)."""
    method = request.method
    known = method in _KNOWN_METHODS
    url = request.url
    attributes: dict[str, Any] = {
        "http.request.method": method if known else "_OTHER",
        "url.full": _redacted(url),
        "server.address": call.runtime.name,
        "server.port": url.port or (443 if url.scheme == "https" else 80),
        "network.peer.address": state.endpoint.host,
        "network.peer.port": state.endpoint.port,
        "meshlib.service": call.runtime.name,
        "meshlib.route": str(call.health.key),
        "meshlib.endpoint": state.address,
        "meshlib.balancer": call.policy.balancer,
    }
    if call.route is not None:  # a configured route: its name is the route template
        attributes["http.route"] = str(call.route)
    if not known:
        attributes["http.request.method_original"] = method
    if call.attempts > 1:
        attributes["http.request.resend_count"] = call.attempts - 1
    if hedge:
        attributes["meshlib.hedge"] = True
    return (method if known else "HTTP"), attributes


def _no_meter_types() -> tuple[type, ...]:
    try:  # the API's proxy is not re-exported publicly
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - a future API: then every meter is "real"
        return (metrics.NoOpMeterProvider,)
    return (_ProxyMeterProvider, metrics.NoOpMeterProvider)


_NO_METERS = _no_meter_types()
_NO_TRACERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

try:  # the API's globals: ``None`` until a provider is set (in code, or from the environment)
    from opentelemetry.metrics import _internal as _metrics_globals
    _metrics_globals._METER_PROVIDER  # noqa: B018 - present in every API since 1.12
    trace._TRACER_PROVIDER  # noqa: B018
except (ImportError, AttributeError):  # pragma: no cover - a future API: ask it every time
    _metrics_globals = None  # type: ignore[assignment]


#: provider variables set when meshlib was imported; the API loaded them then (meshlib's
#: ``get_tracer``/``get_meter`` at import ask for the providers), so the globals are set
_ENVIRON_PROVIDERS = frozenset(
    name for name in (OTEL_PYTHON_METER_PROVIDER, OTEL_PYTHON_TRACER_PROVIDER)
    if name in os.environ)


#: whether the globals can be read directly, and no provider comes from the environment
_METERS_READABLE = _metrics_globals is not None \
    and OTEL_PYTHON_METER_PROVIDER not in _ENVIRON_PROVIDERS
_TRACERS_READABLE = _metrics_globals is not None \
    and OTEL_PYTHON_TRACER_PROVIDER not in _ENVIRON_PROVIDERS


def _metrics_installed() -> bool:
    """Whether a real meter provider is installed (the API's proxy binds to it then).

    Asked at every attempt: with no provider set it is one global read (where the
    API's `get_meter_provider()` also reads `os.environ` on every call)."""
    if _METERS_READABLE and _metrics_globals._METER_PROVIDER is None:
        return False
    return not isinstance(metrics.get_meter_provider(), _NO_METERS)


def _tracing_installed() -> bool:
    """Whether a real tracer provider is installed (once set, it stays); one global
    read with none set, as `_metrics_installed()`."""
    if _TRACERS_READABLE and trace._TRACER_PROVIDER is None:
        return False
    return not isinstance(trace.get_tracer_provider(), _NO_TRACERS)


def _end_all(parked: list[tuple[Span, int]]) -> None:
    for span, end_time in parked:
        span.end(end_time=end_time)


def _discard(spans: list[Span], span: Span) -> None:
    for i, item in enumerate(spans):
        if item is span:
            del spans[i]
            return


def _error_type(error: BaseException) -> str:
    """The semantic conventions' `error.type` of an exception: its qualified class name."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _redacted(url: httpx.URL) -> str:
    """`url.full` with credentials and signature query parameters replaced by `REDACTED`."""
    if url.userinfo:
        url = url.copy_with(username="REDACTED", password="REDACTED")
    if url.query and any(key in _SECRET_QUERY_KEYS for key in url.params):
        params = [(k, "REDACTED" if k in _SECRET_QUERY_KEYS else v)
                  for k, v in url.params.multi_items()]
        url = url.copy_with(params=params)
    return str(url)


# -- the endpoints gauge: a weak registry of live meshes --------------------------------

class Observed(Protocol):
    """What the gauge reads of a mesh (`_mesh.Mesh`): its clock and service runtimes."""

    @property
    def clock(self) -> Callable[[], float]:
        """The mesh's monotonic clock."""
        ...

    @property
    def runtimes(self) -> Mapping[str, ServiceRuntime]:
        """Service runtimes by name."""
        ...


_meshes: weakref.WeakSet[Observed] = weakref.WeakSet()
_meshes_lock = threading.Lock()


def register_mesh(mesh: Observed) -> None:
    """Let the `meshlib.endpoints` gauge observe `mesh` for as long as it lives."""
    with _meshes_lock:
        _meshes.add(mesh)


def _observe_endpoints(options: CallbackOptions) -> Iterable[Observation]:
    """Endpoints per (service, breaker state), summed over the registered meshes."""
    with _meshes_lock:
        meshes = list(_meshes)
    counts: dict[tuple[str, str], int] = {}
    for mesh in meshes:
        now = mesh.clock()
        for runtime in list(mesh.runtimes.values()):
            for state_name in _BREAKER_STATES:
                counts.setdefault((runtime.name, state_name), 0)
            for state in list(runtime.states.values()):
                key = (runtime.name, state.breaker.state(now))
                counts[key] = counts.get(key, 0) + 1
    return [Observation(n, {"meshlib.service": service, "meshlib.breaker.state": state})
            for (service, state), n in counts.items()]


telemetry = Telemetry()
