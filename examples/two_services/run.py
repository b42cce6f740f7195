"""Start services B and A on loopback, call A with an 800 ms deadline, print what B saw.

    python examples/two_services/run.py

The client calls A through a :class:`meshlib.MeshClient` inside
``meshlib.deadline(0.8)``; the mesh sends ``x-mesh-timeout-ms`` with what is
left; A's middleware turns it back into a ``meshlib.deadline``; A's call to B
carries what is left of it. Both servers run under uvicorn in threads on
ephemeral ports and are stopped before the script exits.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

# service_a and service_b are this directory's modules (run.py runs as a script).
import service_a
import service_b
import uvicorn

import meshlib

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@contextlib.contextmanager
def serve(app: Any, name: str) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yield its ``host:port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"uvicorn-{name}", daemon=True)
    thread.start()
    try:
        limit = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > limit:
                raise RuntimeError(f"service {name} did not start")
            time.sleep(0.01)
        yield address
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"service {name} did not stop within {STOP_TIMEOUT:g} s")


def main() -> int:
    """Run the demonstration; returns the exit status."""
    with serve(service_b.create_app(), "b") as b, \
            serve(service_a.create_app(f"static://{b}"), "a") as a:
        print(f"B listening on {b}, A on {a}")
        with meshlib.MeshClient(services={"a": f"static://{a}"}) as client, \
                meshlib.deadline(0.8):
            print("client: with meshlib.deadline(0.8): GET http://a/hello")
            response = client.get("http://a/hello")
        response.raise_for_status()
        data = response.json()
        print(f"A saw x-mesh-timeout-ms: {data['a_saw_ms']}")
        print(f"B saw x-mesh-timeout-ms: {data['b']['x-mesh-timeout-ms']}")
        print(f"B time left in its handler: {data['b']['time_left_ms']} ms")
    print("servers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
