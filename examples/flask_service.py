"""A Flask (WSGI) service, served by threads, calling another service through the mesh.

The pattern to copy:

* one ``MeshClient`` for the whole process: it is safe to share across the
  server's threads (connection pools, balancer and breakers are shared too);
* ``app.wsgi_app = MeshMiddleware(app.wsgi_app, snapshot_path="/_mesh")``
  turns the caller's ``x-mesh-timeout-ms`` into a deadline around each request
  and serves the mesh state as JSON (every mesh client open in the process).

Run it (needs ``pip install flask``)::

    python examples/flask_service.py

It starts three "users" backends and the Flask app under a threaded WSGI
server on 127.0.0.1, sends 40 requests from 8 threads at once, prints how
the mesh spread them, and stops everything.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    from flask import Flask
    from werkzeug.serving import make_server
except ImportError as missing:  # a one-line hint instead of a traceback
    sys.exit(f"flask_service: {missing.name} is not installed: pip install flask")

import httpx
from _loopback import Backends

import meshlib
from meshlib.wsgi import MeshMiddleware

REQUESTS = 40
THREADS = 8


def create_app(client: meshlib.MeshClient) -> Flask:
    """The Flask application, calling the ``users`` service through ``client``."""
    app = Flask(__name__)

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, Any]:
        response = client.get(f"http://users/v1/users/{order_id % 5}")
        response.raise_for_status()
        return {"order": order_id, "thread": threading.current_thread().name,
                "user_from": response.extensions["meshlib"]["endpoint"],
                "users_saw_deadline_ms": response.json()["x-mesh-timeout-ms"]}

    app.wsgi_app = MeshMiddleware(app.wsgi_app, snapshot_path="/_mesh")  # type: ignore[method-assign]
    return app


def main() -> int:
    """Start the backends and the app, load it from several threads, show the spread, stop."""
    with Backends(3) as users, meshlib.MeshClient(
            services={"users": users.static_url},
            policy=meshlib.Policy(timeout=2.0)) as client:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines
        server = make_server("127.0.0.1", 0, create_app(client), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            with httpx.Client(base_url=url, timeout=5,
                              headers={"x-mesh-timeout-ms": "1000"}) as caller, \
                    ThreadPoolExecutor(THREADS) as pool:
                answers = list(pool.map(lambda i: caller.get(f"/orders/{i}").json(),
                                        range(REQUESTS)))
            spread = Counter(a["user_from"] for a in answers)
            handler_threads = {a["thread"] for a in answers}
            print(f"{len(answers)} requests, all answered, by {len(handler_threads)} "
                  "server threads")
            print("users answered: " + ", ".join(f"{k} x{v}" for k, v in sorted(spread.items())))
            print("max deadline users saw: "
                  f"{max(int(a['users_saw_deadline_ms']) for a in answers)} ms")
            snapshot = httpx.get(f"{url}/_mesh", timeout=5).json()
            total = sum(e["requests"] for e in snapshot["services"]["users"]["endpoints"])
            print(f"snapshot: users requests={total}")
        finally:
            server.shutdown()
            thread.join(10)
    print("servers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
