"""A FastAPI service that calls another service through the mesh.

The pattern to copy:

* the ``AsyncMeshClient`` is built in the lifespan (one per process, closed on
  shutdown), its services read from ``MESHLIB_SERVICES``;
* ``app.add_middleware(MeshMiddleware, snapshot_path="/_mesh")`` turns the
  caller's ``x-mesh-timeout-ms`` into a deadline around each handler (so the
  handler's own mesh calls inherit what is left) and serves the mesh state as
  JSON; given no ``clients``, it shows every mesh client open in the process,
  including the one the lifespan builds after it.

Run it (needs ``pip install fastapi uvicorn``)::

    python examples/fastapi_service.py

It starts two "users" backends and the FastAPI app on 127.0.0.1, calls
``/profile/7`` with a 500 ms deadline, prints the answer and the snapshot,
and stops everything.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

try:
    import uvicorn
    from fastapi import FastAPI, Request
except ImportError as missing:  # a one-line hint instead of a traceback
    sys.exit(f"fastapi_service: {missing.name} is not installed: pip install fastapi uvicorn")

import httpx
from _loopback import Backends

import meshlib
from meshlib.asgi import MeshMiddleware


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One mesh client for the whole process, closed on shutdown."""
    async with meshlib.AsyncMeshClient() as client:  # services from MESHLIB_SERVICES
        app.state.mesh = client
        yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(MeshMiddleware, snapshot_path="/_mesh")


@app.get("/profile/{user_id}")
async def profile(user_id: int, request: Request) -> dict[str, Any]:
    """Fetch the user from the ``users`` service, within what is left of our caller's deadline."""
    mesh: meshlib.AsyncMeshClient = request.app.state.mesh
    left_ms = round(meshlib.time_left() * 1000)
    response = await mesh.get(f"http://users/v1/users/{user_id}")
    response.raise_for_status()
    return {"user": user_id, "time_left_ms": left_ms, "users_said": response.json(),
            "mesh": response.extensions["meshlib"]}


@contextlib.contextmanager
def serve(application: Any) -> Iterator[str]:
    """Run ``application`` under uvicorn on 127.0.0.1 in a thread; yield its URL; stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(application, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        limit = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > limit:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def main() -> int:
    """Start the backends and the app, call it, show the snapshot, stop."""
    with Backends(2) as users:
        os.environ["MESHLIB_SERVICES"] = f"users={users.static_url}"
        with serve(app) as url:
            answer = httpx.get(f"{url}/profile/7", headers={"x-mesh-timeout-ms": "500"},
                               timeout=5).json()
            print(f"GET /profile/7 -> answered by {answer['mesh']['endpoint']} "
                  f"after {answer['mesh']['attempts']} attempt(s)")
            print(f"handler time left: {answer['time_left_ms']} ms")
            print(f"users saw x-mesh-timeout-ms: {answer['users_said']['x-mesh-timeout-ms']}")
            snapshot = httpx.get(f"{url}/_mesh", timeout=5).json()
            for name, service in snapshot["services"].items():
                for endpoint in service["endpoints"]:
                    print(f"snapshot: {name} {endpoint['endpoint']} "
                          f"requests={endpoint['requests']} breaker={endpoint['breaker']}")
    print("servers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
