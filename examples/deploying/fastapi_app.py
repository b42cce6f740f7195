"""A FastAPI service that calls the `users` service through the mesh."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

import meshlib
from meshlib.asgi import MeshMiddleware


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # one client per worker process, built when the worker starts, closed when it stops;
    # services from MESHLIB_SERVICES (e.g. "users=k8s://users.shop:http")
    async with meshlib.AsyncMeshClient() as client:
        app.state.mesh = client
        yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(MeshMiddleware, snapshot_path="/_mesh")  # deadlines in, 504/503 out


@app.get("/profile/{user_id}")
async def profile(user_id: int, request: Request) -> dict[str, object]:
    mesh: meshlib.AsyncMeshClient = request.app.state.mesh
    response = await mesh.get(f"http://users/v1/users/{user_id}")
    response.raise_for_status()
    return {"user": response.json(), "served_by": response.extensions["meshlib"]["endpoint"]}
