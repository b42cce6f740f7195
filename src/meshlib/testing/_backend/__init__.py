"""A fast loopback HTTP/1.1 fault server on raw `asyncio` protocols (stdlib only).

Used by meshlib's own test-suite and, through `meshlib.testing.Fleet`,
by `meshlib bench`, `meshlib demo`, the examples and users' tests. Split
by job:

* `.parsing`: the HTTP/1.1 wire format (request heads, bodies);
* `.protocol`: behaviour, one asyncio protocol per connection;
* `.settings`: behaviour settings, recorded requests, addresses (plain values);
* `.control`: one `Server`, its settings and records, thread-safe;
* `.runner`: `Backend`, the servers on an event loop in a thread;
* `.process`: `BackendProcess`, the same in a child process
  (`python -m meshlib.testing._backend`), so that a benchmark's client does
  not share the interpreter lock with its servers.

A `Backend` runs one or more servers on loopback (`127.0.0.1`
and/or `::1`) on ephemeral ports. Each server's behaviour can be changed
at run time from any thread:

* `delay_ms`: base delay before answering;
* `status`: status code to answer with;
* `fail_pct`: percentage of requests answered with `fail_status`;
* `retry_after`: a `Retry-After` header on every error answer (>= 400);
* `drop_pct`: percentage of requests whose connection is closed unanswered;
* `mode`: `"normal"`, `"close"` (close the connection without
  answering), `"reset"` (abort the connection with a TCP RST),
  or `"stall"` (keep the socket, never answer, until stopped);
* `Server.refuse()` stops listening (connects are refused) and
  `Server.restore()` listens again on the same port.

Unless `query_overrides=False`, a request may override the behaviour with
query parameters `?delay_ms=`, `?status=`, `?fail_pct=`,
`?retry_after=` and `?mode=` (`close`, `reset`, `stall` or `normal`:
one route that drops its connections beside healthy ones).

Every response carries `X-Backend: host:port` and a small JSON body:

```
{"endpoint": "127.0.0.1:4711", "backend": "127.0.0.1:4711", "method": "GET",
 "path": "/x", "query": "a=1", "headers": {...}, "body_bytes": 0, "n": 1}
```

Requests are recorded per server once read completely (headers and body,
`Content-Length` or chunked), before any behaviour applies, so a test can
assert exactly how many attempts reached a server.
"""

from __future__ import annotations

from .control import Server
from .process import BackendProcess
from .runner import Backend
from .settings import Mode, RecordedRequest, ServerSettings

__all__ = ["Backend", "BackendProcess", "Mode", "RecordedRequest", "Server", "ServerSettings"]
