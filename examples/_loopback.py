"""A tiny JSON backend on 127.0.0.1 for the examples (standard library only).

Every GET is answered with ``{"backend": "127.0.0.1:PORT", "path": ...,
"x-mesh-timeout-ms": ...}``, the last being the deadline header the mesh sent
(or ``null``), so an example can show who answered and how much time was left.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        host, port = self.server.server_address[:2]
        body = json.dumps({
            "backend": f"{host}:{port}",
            "path": self.path,
            "x-mesh-timeout-ms": self.headers.get("x-mesh-timeout-ms"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class Backends:
    """``n`` JSON backends on 127.0.0.1, each on a free port; stopped on leaving ``with``."""

    def __init__(self, n: int) -> None:
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Handler) for _ in range(n)]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True).start()

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every backend."""
        return [f"127.0.0.1:{server.server_address[1]}" for server in self.servers]

    @property
    def static_url(self) -> str:
        """A ``static://`` discovery URL of all of them."""
        return "static://" + ",".join(self.addresses)

    def stop(self) -> None:
        """Stop every backend."""
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
