"""Print meshlib's spans to the console for one request that is both hedged and retried.

Run it with no setup (it starts its own loopback backends)::

    python examples/telemetry_console.py          # one line per span, plus its events
    python examples/telemetry_console.py --json   # ConsoleSpanExporter's full JSON

Two backends each answer in 150 ms; each fails its first request with 503
and answers its second with 200. With ``Hedge(delay=0.05)`` the request goes
like this:

1. attempt 1 goes to one backend; after 50 ms it is hedged to the other
   (attempt 2, ``meshlib.hedge=true``); both answer 503;
2. the 503 is retried (``meshlib.retry`` event on the span that got it):
   attempt 3 answers 200; it is not hedged, and its span says why
   (``meshlib.no_hedge``: both endpoints were already tried).

Every attempt is a CLIENT span, child of the ``checkout`` span, with
``http.request.resend_count`` 1, 2 on the later ones, and the backends
receive a ``traceparent`` of the ``checkout`` trace.

Needs ``opentelemetry-sdk`` (``pip install 'httpx-mesh[dev]'`` or
``pip install opentelemetry-sdk``); meshlib itself only uses the API.
"""

from __future__ import annotations

import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import meshlib
from meshlib import Backoff, Hedge, Policy
from meshlib.testing import Fleet


def one_line(span: ReadableSpan) -> str:
    """A compact rendering: name, duration, key attributes, then one line per event."""
    attrs = dict(span.attributes or {})
    duration_ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    keys = {"meshlib.endpoint": "endpoint", "http.response.status_code": "status",
            "http.request.resend_count": "resend_count", "meshlib.hedge": "hedge",
            "error.type": "error"}
    shown = " ".join(f"{label}={attrs[key]}" for key, label in keys.items() if key in attrs)
    kind = span.kind.name
    lines = [f"{span.name:<8} {kind:<8} {duration_ms:7.1f} ms  {shown}"]
    for event in span.events:
        reason = (event.attributes or {}).get("meshlib.reason", "")
        lines.append(f"{'':>8} event {event.name}: {reason}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Set up the SDK, start backends, make one request, print its spans."""
    exporter = (ConsoleSpanExporter() if "--json" in argv
                else ConsoleSpanExporter(formatter=one_line))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("example")

    # seed 11: each endpoint fails its first request (503) and answers its second
    fleet = Fleet(2, latency=0.15, error_rate=0.5, seed=11).start()
    policy = Policy(hedge=Hedge(delay=0.05), backoff=Backoff(base=0.01, max=0.02))
    try:
        with meshlib.MeshClient(services={"inventory": fleet.url},
                                policy=policy) as client, \
                tracer.start_as_current_span("checkout") as checkout:
            response = client.get("http://inventory/items/42")
            info = response.extensions["meshlib"]
        time.sleep(0.3)  # a losing hedge's span ends when its answer arrives
        hits = [hit for endpoint in fleet.hits() for hit in endpoint]
    finally:
        fleet.close()
        provider.shutdown()

    trace_id = format(checkout.get_span_context().trace_id, "032x")
    received = [hit.headers.get("traceparent", "") for hit in hits]
    same_trace = sum(trace_id in header for header in received)
    print(f"\nstatus {response.status_code} from {info['endpoint']} after "
          f"{info['attempts']} attempts (hedged: {info['hedged']})")
    print(f"backends received {len(received)} requests, {same_trace} with a traceparent "
          f"of trace {trace_id}")
    return 0 if response.status_code == 200 and same_trace == len(received) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
