"""Service B: reports the deadline it sees.

``GET /deadline`` answers with the ``x-mesh-timeout-ms`` header it received and
the time left in its handler according to ``meshlib`` (which the
:class:`meshlib.asgi.MeshMiddleware` set from that header).
"""

from __future__ import annotations

import math

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshlib import time_left
from meshlib.asgi import MeshMiddleware


async def report_deadline(request: Request) -> JSONResponse:
    """Answer with the deadline header as received and the time left here, in ms."""
    left = time_left()
    return JSONResponse({
        "service": "b",
        "x-mesh-timeout-ms": request.headers.get("x-mesh-timeout-ms"),
        "time_left_ms": None if math.isinf(left) else round(left * 1000.0, 1),
    })


def create_app() -> MeshMiddleware:
    """Service B's ASGI application, wrapped in the mesh middleware."""
    return MeshMiddleware(Starlette(routes=[Route("/deadline", report_deadline)]))
