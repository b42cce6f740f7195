"""Telemetry: one CLIENT span per attempt, decision events, trace propagation, metrics, logs.

OpenTelemetry lets a process set its global providers once, so this module
builds one SDK tracer provider (in-memory exporter, simple processor) and one
meter provider (in-memory reader) at import, installs them once per session,
and clears the exporter before each test. Each test uses its own service
name, so spans and metric points are told apart by ``meshlib.service``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Breaker, Hedge, Policy, RetryBudget
from meshlib._telemetry import DURATION_BUCKETS, _redacted, telemetry

EXPORTER = InMemorySpanExporter()
TRACER_PROVIDER = TracerProvider()
TRACER_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
READER = InMemoryMetricReader()
METER_PROVIDER = MeterProvider(metric_readers=[READER])

FAST = Policy(backoff=Backoff(base=0.001, max=0.005))


@pytest.fixture(scope="session", autouse=True)
def _otel_providers() -> None:
    """Install the SDK providers as the global ones, once per session."""
    trace.set_tracer_provider(TRACER_PROVIDER)
    metrics.set_meter_provider(METER_PROVIDER)
    if trace.get_tracer_provider() is not TRACER_PROVIDER:
        pytest.skip("another global tracer provider was installed first")


@pytest.fixture(autouse=True)
def _clear_spans() -> Iterator[None]:
    EXPORTER.clear()
    yield
    EXPORTER.clear()


def _spans(service: str, *, wait_for: int = 0) -> list[ReadableSpan]:
    """Finished attempt spans of ``service``, oldest first (waiting for ``wait_for`` of them)."""
    deadline = time.monotonic() + 3.0
    while True:
        spans = [s for s in EXPORTER.get_finished_spans()
                 if (s.attributes or {}).get("meshlib.service") == service]
        if len(spans) >= wait_for or time.monotonic() > deadline:
            return sorted(spans, key=lambda s: s.start_time or 0)
        time.sleep(0.01)


def _points(name: str) -> list[Any]:
    data = READER.get_metrics_data()
    if data is None:
        return []
    return [point
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == name for point in m.data.data_points]


def _value(name: str, service: str, **attributes: Any) -> float:
    """Sum of a counter (or histogram count) over points of ``service`` matching ``attributes``."""
    total = 0.0
    for point in _points(name):
        attrs = dict(point.attributes or {})
        if attrs.get("meshlib.service") != service:
            continue
        if any(attrs.get(k) != v for k, v in attributes.items()):
            continue
        total += point.count if hasattr(point, "bucket_counts") else point.value
    return total


def _events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def _traceparent_ids(value: str) -> tuple[str, str]:
    version, trace_id, span_id, _flags = value.split("-")
    assert version == "00"
    return trace_id, span_id


def test_retried_request_yields_one_client_span_per_attempt(backends: BackendFactory) -> None:
    """503 then 200: two CLIENT spans, children of the caller's span, resend_count absent then 1."""
    b = backends(1, fail_pct=50, seed=1)  # seed 1: the first request fails, the second not
    tracer = TRACER_PROVIDER.get_tracer("test")
    with meshlib.MeshClient(services={"tel-retry": b.static_url}, policy=FAST) as client, \
            tracer.start_as_current_span("caller") as caller:
        response = client.get("http://tel-retry/items?x=1")
    assert response.status_code == 200
    assert response.extensions["meshlib"]["attempts"] == 2
    first, second = _spans("tel-retry", wait_for=2)
    endpoint = b.addresses[0]
    host, port = endpoint.rsplit(":", 1)
    for span in (first, second):
        attrs = span.attributes or {}
        assert span.name == "GET"
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == caller.get_span_context().span_id
        assert span.context is not None
        assert span.context.trace_id == caller.get_span_context().trace_id
        assert attrs["http.request.method"] == "GET"
        assert attrs["url.full"] == "http://tel-retry/items?x=1"
        assert attrs["server.address"] == "tel-retry"
        assert attrs["server.port"] == 80
        assert attrs["network.peer.address"] == host
        assert attrs["network.peer.port"] == int(port)
        assert attrs["meshlib.service"] == "tel-retry"
        assert attrs["meshlib.route"] == "GET /items"  # no routes: method + first segment
        assert "http.route" not in attrs
        assert attrs["meshlib.balancer"] == "p2c-ewma"
        assert "meshlib.hedge" not in attrs
    assert "http.request.resend_count" not in (first.attributes or {})
    assert (second.attributes or {})["http.request.resend_count"] == 1
    assert (first.attributes or {})["http.response.status_code"] == 503
    assert (first.attributes or {})["error.type"] == "503"
    assert first.status.status_code is StatusCode.ERROR
    assert (second.attributes or {})["http.response.status_code"] == 200
    assert (second.attributes or {})["network.protocol.version"] == "1.1"
    assert "error.type" not in (second.attributes or {})
    assert second.status.status_code is StatusCode.UNSET
    # the verdict on the 503 is an event on the span of the attempt that got it
    (retry,) = _events(first, "meshlib.retry")
    assert retry["meshlib.reason"] == "status 503"
    assert "meshlib.sleep_s" in retry
    assert not _events(second, "meshlib.retry")
    # the first span ends when its attempt ended, before the retry's span starts
    assert first.end_time is not None and second.start_time is not None
    assert first.end_time <= second.start_time


def test_backend_receives_the_callers_trace(backends: BackendFactory) -> None:
    """Each attempt carries a traceparent: the caller's trace id and that attempt's span id."""
    b = backends(1, fail_pct=50, seed=1)
    tracer = TRACER_PROVIDER.get_tracer("test")
    with meshlib.MeshClient(services={"tel-prop": b.static_url}, policy=FAST) as client, \
            tracer.start_as_current_span("caller") as caller:
        client.get("http://tel-prop/")
    spans = _spans("tel-prop", wait_for=2)
    received = [r.headers["traceparent"] for r in b[0].requests]
    assert len(received) == 2
    caller_trace = format(caller.get_span_context().trace_id, "032x")
    for header, span in zip(received, spans, strict=True):
        trace_id, span_id = _traceparent_ids(header)
        assert trace_id == caller_trace
        assert span.context is not None
        assert span_id == format(span.context.span_id, "016x")


async def test_async_retry_spans_and_propagation(backends: BackendFactory) -> None:
    """The async client: two spans, resend_count 1 on the retry, caller's trace at the backend."""
    b = backends(1, fail_pct=50, seed=1)
    tracer = TRACER_PROVIDER.get_tracer("test")
    async with meshlib.AsyncMeshClient(services={"tel-async": b.static_url},
                                       policy=FAST) as client:
        with tracer.start_as_current_span("caller") as caller:
            response = await client.get("http://tel-async/")
    assert response.status_code == 200
    first, second = _spans("tel-async", wait_for=2)
    assert "http.request.resend_count" not in (first.attributes or {})
    assert (second.attributes or {})["http.request.resend_count"] == 1
    assert _events(first, "meshlib.retry")
    caller_trace = format(caller.get_span_context().trace_id, "032x")
    for recorded in b[0].requests:
        assert _traceparent_ids(recorded.headers["traceparent"])[0] == caller_trace


def test_duration_histogram_and_retry_counter_move_by_what_happened(
        backends: BackendFactory) -> None:
    """One retried request: two duration samples, one retry, no hedge, no refusal."""
    b = backends(1, fail_pct=50, seed=1)
    service = "tel-metrics"
    before = (_value("http.client.request.duration", service),
              _value("meshlib.retries", service))
    with meshlib.MeshClient(services={service: b.static_url}, policy=FAST) as client:
        client.get(f"http://{service}/")
    assert _value("http.client.request.duration", service) - before[0] == 2
    assert _value("meshlib.retries", service) - before[1] == 1
    assert _value("http.client.request.duration", service, **{
        "http.response.status_code": 503, "error.type": "503"}) == 1
    assert _value("http.client.request.duration", service,
                  **{"http.response.status_code": 200}) == 1
    assert _value("meshlib.hedges", service) == 0
    assert _value("meshlib.retry_budget.refusals", service) == 0
    (point,) = [p for p in _points("http.client.request.duration")
                if (p.attributes or {}).get("meshlib.service") == service
                and (p.attributes or {}).get("http.response.status_code") == 200]
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS
    assert point.attributes["http.request.method"] == "GET"
    assert point.attributes["server.address"] == service


def test_refused_retry_carries_the_reason(backends: BackendFactory) -> None:
    """POST on 503 is not retried; the attempt's span says why."""
    b = backends(2, status=503)
    with meshlib.MeshClient(services={"tel-post": b.static_url}, policy=FAST) as client:
        response = client.post("http://tel-post/orders", content=b"{}")
    assert response.status_code == 503
    (span,) = _spans("tel-post", wait_for=1)
    (refused,) = _events(span, "meshlib.no_retry")
    assert "not idempotent" in refused["meshlib.reason"]
    assert _value("meshlib.retries", "tel-post") == 0
    assert b.count == 1


def test_budget_refusal_is_an_event_and_counted(backends: BackendFactory) -> None:
    """An empty retry budget refuses the retry: event on the span, refusal counter +1."""
    b = backends(1, status=503)
    policy = FAST.replace(retry_budget=RetryBudget(ratio=0.0, min_per_second=0.0))
    with meshlib.MeshClient(services={"tel-budget": b.static_url}, policy=policy) as client:
        assert client.get("http://tel-budget/").status_code == 503
    (span,) = _spans("tel-budget", wait_for=1)
    (refused,) = _events(span, "meshlib.no_retry")
    assert refused["meshlib.reason"] == "retry budget exhausted"
    assert _value("meshlib.retry_budget.refusals", "tel-budget") == 1
    assert _value("meshlib.retries", "tel-budget") == 0


def test_breaker_transition_counted_logged_and_circuit_open_recorded(
        backends: BackendFactory, caplog: pytest.LogCaptureFixture) -> None:
    """A 500 from the only endpoint opens its route's 1-failure breaker (counted, INFO log);
    the next request sends nothing."""
    b = backends(1, status=500)
    service = "tel-breaker"
    policy = FAST.replace(breaker=Breaker(failures=1, reset_timeout=60.0))
    tracer = TRACER_PROVIDER.get_tracer("test")
    caplog.set_level(logging.INFO, logger="meshlib")
    with meshlib.MeshClient(services={service: b.static_url}, policy=policy) as client:
        assert client.get(f"http://{service}/").status_code == 500
        assert _value("meshlib.breaker.transitions", service, **{
            "meshlib.breaker.from": "closed", "meshlib.breaker.to": "open",
            "meshlib.breaker.kind": "route"}) == 1
        assert any("route breaker" in r.getMessage() and "GET /" in r.getMessage()
                   and r.levelno == logging.INFO for r in caplog.records)
        # the endpoint has no peer doing better: it is not ejected, its route fails fast
        assert _value("meshlib.endpoints", service, **{"meshlib.breaker.state": "closed"}) == 1
        with tracer.start_as_current_span("caller") as caller, \
                pytest.raises(meshlib.CircuitOpenError):
            client.get(f"http://{service}/")
    assert b.count == 1
    assert _value("meshlib.requests.not_sent", service,
                  **{"error.type": "meshlib.CircuitOpenError"}) == 1
    (caller_span,) = [s for s in EXPORTER.get_finished_spans()
                      if s.context is not None
                      and s.context.span_id == caller.get_span_context().span_id]
    (event,) = _events(caller_span, "meshlib.circuit_open")
    assert "circuit breaker is open" in event["meshlib.reason"]
    assert "GET /" in event["meshlib.reason"]


def test_hedge_gets_its_own_span_and_the_first_attempt_says_why(
        backends: BackendFactory) -> None:
    """A hedged request: the hedge's span has meshlib.hedge, the slow attempt a hedge event."""
    b = backends(2, delay_ms=300)
    service = "tel-hedge"
    policy = FAST.replace(hedge=Hedge(delay=0.05))
    with meshlib.MeshClient(services={service: b.static_url}, policy=policy) as client:
        response = client.get(f"http://{service}/")
    assert response.extensions["meshlib"]["hedged"] is True
    first, hedge = _spans(service, wait_for=2)
    assert (hedge.attributes or {})["meshlib.hedge"] is True
    assert (hedge.attributes or {})["http.request.resend_count"] == 1
    assert "meshlib.hedge" not in (first.attributes or {})
    (event,) = _events(first, "meshlib.hedge")
    assert event["meshlib.reason"] == "first attempt slower than the hedge delay"
    assert event["meshlib.endpoint"] == (hedge.attributes or {})["meshlib.endpoint"]
    assert _value("meshlib.hedges", service) == 1


async def test_async_hedge_loser_span_is_ended_as_cancelled(backends: BackendFactory) -> None:
    """Async: the losing hedge is cancelled; its span ends with a meshlib.cancelled event."""
    b = backends(2, delay_ms=[300, 0])
    service = "tel-ahedge"
    policy = FAST.replace(hedge=Hedge(delay=0.05), balancer="round-robin")
    async with meshlib.AsyncMeshClient(services={service: b.static_url},
                                       policy=policy) as client:
        hedged = False
        for _ in range(4):
            response = await client.get(f"http://{service}/")
            hedged = hedged or response.extensions["meshlib"]["hedged"]
    assert hedged
    spans = _spans(service)
    cancelled = [s for s in spans if _events(s, "meshlib.cancelled")]
    assert cancelled
    assert all((s.attributes or {}).get("network.peer.port") == b[0].port for s in cancelled)


def test_post_with_a_hedge_policy_says_why_it_is_not_hedged(backends: BackendFactory) -> None:
    """POST is never hedged; the attempt's span carries a meshlib.no_hedge event."""
    b = backends(2)
    policy = FAST.replace(hedge=Hedge(delay=0.05))
    with meshlib.MeshClient(services={"tel-nohedge": b.static_url}, policy=policy) as client:
        client.post("http://tel-nohedge/", content=b"x")
    (span,) = _spans("tel-nohedge", wait_for=1)
    (event,) = _events(span, "meshlib.no_hedge")
    assert event["meshlib.reason"] == "not idempotent"


def test_hedge_policy_without_retries_says_so_not_one_endpoint(
        backends: BackendFactory) -> None:
    """retries=0 leaves no extra attempt to hedge with: the reason says that, not that
    the (three-endpoint) service has only one endpoint."""
    b = backends(3)
    policy = FAST.replace(hedge=Hedge(delay=0.05), retries=0)
    with meshlib.MeshClient(services={"tel-noretries": b.static_url}, policy=policy) as client:
        client.get("http://tel-noretries/")
    (span,) = _spans("tel-noretries", wait_for=1)
    (event,) = _events(span, "meshlib.no_hedge")
    assert event["meshlib.reason"] == "no extra attempt allowed (retries=0)"


def test_endpoint_gauge_counts_endpoints_per_service_and_state(
        backends: BackendFactory) -> None:
    """meshlib.endpoints reports the live client's endpoints by breaker state."""
    b = backends(3)
    with meshlib.MeshClient(services={"tel-gauge": b.static_url}):
        assert _value("meshlib.endpoints", "tel-gauge", **{"meshlib.breaker.state": "closed"}) == 3
        assert _value("meshlib.endpoints", "tel-gauge", **{"meshlib.breaker.state": "open"}) == 0


def test_transport_error_span(backends: BackendFactory) -> None:
    """A refused connection: error.type is the exception's qualified name, status ERROR."""
    b = backends(1)
    b[0].refuse()
    policy = FAST.replace(retries=0)
    with meshlib.MeshClient(services={"tel-refused": b.static_url}, policy=policy) as client, \
            pytest.raises(httpx.ConnectError):
        client.get("http://tel-refused/")
    (span,) = _spans("tel-refused", wait_for=1)
    assert (span.attributes or {})["error.type"] == "httpx.ConnectError"
    assert span.status.status_code is StatusCode.ERROR
    assert "http.response.status_code" not in (span.attributes or {})
    assert _value("http.client.request.duration", "tel-refused",
                  **{"error.type": "httpx.ConnectError"}) == 1


def test_nothing_per_request_is_logged_above_debug(
        backends: BackendFactory, caplog: pytest.LogCaptureFixture) -> None:
    """A retried request logs its decisions at DEBUG only."""
    b = backends(1, fail_pct=50, seed=1)
    caplog.set_level(logging.DEBUG, logger="meshlib")
    with meshlib.MeshClient(services={"tel-log": b.static_url}, policy=FAST) as client:
        caplog.clear()
        client.get("http://tel-log/")
    records = [r for r in caplog.records if r.name.startswith("meshlib")]
    assert any("retry" in r.getMessage() for r in records)
    assert all(r.levelno <= logging.DEBUG for r in records)


def test_pass_through_requests_make_no_mesh_spans(backends: BackendFactory) -> None:
    """A host that is not a service is plain httpx: no meshlib span, no traceparent added."""
    b = backends(1)
    with meshlib.MeshClient(services={"tel-other": b.static_url}) as client:
        client.get(f"http://{b.addresses[0]}/")
    assert not [s for s in EXPORTER.get_finished_spans()
                if "meshlib.service" in (s.attributes or {})]
    assert "traceparent" not in b[0].requests[-1].headers


def test_url_full_redacts_credentials_and_signatures() -> None:
    """url.full never carries a password or a signature."""
    url = httpx.URL("https://me:secret@users/x?sig=abc&page=2")
    assert _redacted(url) == "https://REDACTED:REDACTED@users/x?sig=REDACTED&page=2"
    assert _redacted(httpx.URL("http://users/x?page=2")) == "http://users/x?page=2"


NO_SDK_SCRIPT = """
import httpx
from opentelemetry import context, propagate, trace
import meshlib
from meshlib.testing._backend import Backend

backend = Backend(1).start()
try:
    with meshlib.MeshClient(services={"svc": backend.static_url}) as client:
        client.get("http://svc/")
        assert "traceparent" not in backend[0].last_request.headers
        incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        token = context.attach(propagate.extract({"traceparent": incoming}))
        try:
            client.get("http://svc/")
        finally:
            context.detach(token)
        assert backend[0].last_request.headers["traceparent"] == incoming
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
finally:
    backend.stop()
print("ok")
"""


def test_without_an_sdk_trace_context_passes_through() -> None:
    """No SDK: nothing is injected without a context; an incoming trace context is forwarded."""
    proc = subprocess.run([sys.executable, "-c", NO_SDK_SCRIPT], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


def test_provider_installed_after_earlier_requests_gets_full_spans(
        backends: BackendFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests made before an SDK was installed do not stop later ones from being traced."""
    monkeypatch.setattr(telemetry, "_tracing", False)  # as if every request so far had no SDK
    b = backends(1)
    with meshlib.MeshClient(services={"tel-late": b.static_url}) as client:
        client.get("http://tel-late/")
    (span,) = _spans("tel-late", wait_for=1)
    assert span.name == "GET"
    assert (span.attributes or {})["server.address"] == "tel-late"
    assert (span.attributes or {})["http.response.status_code"] == 200


def test_configured_route_names_spans_and_metrics(backends: BackendFactory) -> None:
    """With routes configured, attempt spans and the duration histogram carry the route's
    name as `http.route` and `meshlib.route`, and the service the route chose."""
    b = backends(1)
    service = "tel-route"
    routes = {service: [meshlib.Route(meshlib.Match(path_prefix="/api"), to=service,
                                      name="api")]}
    before = _value("http.client.request.duration", service,
                    **{"http.route": "api", "meshlib.route": "api"})
    with meshlib.MeshClient(services={service: b.static_url}, routes=routes,
                            policy=FAST) as client:
        assert client.get(f"http://{service}/api/users/7").status_code == 200
    (span,) = _spans(service, wait_for=1)
    attrs = span.attributes or {}
    assert attrs["http.route"] == "api" and attrs["meshlib.route"] == "api"
    assert attrs["meshlib.service"] == service
    assert _value("http.client.request.duration", service,
                  **{"http.route": "api", "meshlib.route": "api"}) - before == 1
