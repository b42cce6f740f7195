"""The type of `response.extensions["meshlib"]`: what the mesh did for a response."""

from __future__ import annotations

from typing import TypedDict

__all__ = ["MeshInfo"]


class MeshInfo(TypedDict):
    """What `response.extensions["meshlib"]` holds for a response from a mesh service.

    httpx types `extensions` as `dict[str, Any]`; annotate to have the keys
    checked:

    ```
    info: meshlib.MeshInfo = response.extensions["meshlib"]
    print(info["endpoint"], info["attempts"])
    ```

    A response from a host that is not a service (pass-through) has no
    `"meshlib"` key.

    Added in version 0.3.
    """

    #: the service (cluster) that answered
    service: str
    #: the configured route's ``name``, else its index; ``None`` without routes
    route: str | int | None
    #: ``"host:port"`` of the endpoint that answered (``None`` when a test's respx
    #: mock answered before discovery did)
    endpoint: str | None
    #: attempts started, the first and every retry and hedge included
    attempts: int
    #: whether a hedge was sent
    hedged: bool
