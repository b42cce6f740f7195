"""Announce a small HTTP service in etcd and find it again through ``etcd://`` discovery.

Run an etcd first (see docs/discovery.md), then::

    python examples/etcd_register.py etcd://127.0.0.1:2379/mesh/hello

Without a reachable etcd it prints a one-line hint and exits with status 1.

The service registers itself with :class:`meshlib.etcd.EtcdRegistration` (a
lease kept alive in the background, revoked on exit), a ``MeshClient`` finds it
through the same URL and calls it, and on exit the key disappears.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import httpx

import meshlib
from meshlib.etcd import EtcdError, EtcdRegistration


class Hello(BaseHTTPRequestHandler):
    """Answers every GET with a greeting."""

    def do_GET(self) -> None:
        body = b"hello from a registered instance\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> int:
    """Serve, register, discover, call, deregister; return the exit status."""
    url = sys.argv[1] if len(sys.argv) > 1 else "etcd://127.0.0.1:2379/mesh/hello"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        run(url, port)
    except (httpx.TransportError, EtcdError) as exc:
        address = url.split("://", 1)[-1].split("/", 1)[0]
        print(f"etcd_register: no etcd at {address} ({exc or type(exc).__name__}); start one "
              "(see docs/discovery.md, 'Running the servers yourself') or pass its URL",
              file=sys.stderr)
        return 1
    finally:
        server.shutdown()
        server.server_close()
    return 0


def run(url: str, port: int) -> None:
    """Register the instance on ``port`` under ``url``, call it through the mesh, deregister."""
    with EtcdRegistration(url, "127.0.0.1", port, zone="local", ttl=10) as registration:
        print(f"registered {registration.key} (lease {registration.lease})")
        with meshlib.MeshClient(services={"hello": url}) as client:
            response = client.get("http://hello/")
            print(f"GET http://hello/ -> {response.text.strip()!r} "
                  f"from {response.extensions['meshlib']['endpoint']}")
    print("deregistered: the key is gone and the lease revoked")


if __name__ == "__main__":
    sys.exit(main())
