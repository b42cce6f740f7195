"""A Flask service that calls the `users` service through the mesh."""

import atexit

from flask import Flask

import meshlib
from meshlib.wsgi import MeshMiddleware

# one client per process, shared by every thread of the server; services from
# MESHLIB_SERVICES. Built at import: with a pre-fork server's --preload, each
# worker still gets its own connections and discovery after the fork.
mesh = meshlib.MeshClient()
atexit.register(mesh.close)

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = True  # let mesh errors reach the middleware (504/503)


@app.get("/profile/<int:user_id>")
def profile(user_id: int) -> dict[str, object]:
    response = mesh.get(f"http://users/v1/users/{user_id}")
    response.raise_for_status()
    return {"user": response.json(), "served_by": response.extensions["meshlib"]["endpoint"]}


# what the WSGI server serves: gunicorn flask_app:application
application = MeshMiddleware(app, snapshot_path="/_mesh")
