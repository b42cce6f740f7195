"""Service A: calls service B through the mesh, inside the caller's deadline.

``GET /hello`` calls ``http://b/deadline`` with an :class:`meshlib.AsyncMeshClient`.
:class:`meshlib.asgi.MeshMiddleware` has opened a ``meshlib.deadline`` from the
incoming ``x-mesh-timeout-ms`` header, so the call to B carries what is left of
it (a little less than A received). ``/_mesh`` serves A's mesh snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import meshlib
from meshlib.asgi import MeshMiddleware


def create_app(b_discovery: str) -> MeshMiddleware:
    """Service A's ASGI application; ``b_discovery`` is B's discovery URL."""
    client = meshlib.AsyncMeshClient(services={"b": b_discovery})

    async def hello(request: Request) -> JSONResponse:
        # No deadline argument here: it comes from the caller, through the middleware.
        response = await client.get("http://b/deadline")
        return JSONResponse({
            "service": "a",
            "a_saw_ms": request.headers.get("x-mesh-timeout-ms"),
            "b": response.json(),
        })

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = Starlette(routes=[Route("/hello", hello)], lifespan=lifespan)
    return MeshMiddleware(app, snapshot_path="/_mesh", clients=[client])
