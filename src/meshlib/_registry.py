"""A weak, process-wide registry of live mesh clients, for the snapshot endpoints.

Every `meshlib.MeshClient` and `meshlib.AsyncMeshClient`
registers itself when it is built. The registry holds it weakly: it never keeps
a client alive, and one that has been closed or garbage-collected drops out by
itself. The ASGI and WSGI middlewares read it when they were given no
`clients`, so a client made after the middleware (in a FastAPI lifespan, say)
is seen. A bare `MeshTransport` under a plain `httpx.Client` is not
registered: pass it in `clients=` explicitly.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable
from typing import Any

__all__ = ["client_list", "live_clients", "register_client", "snapshot_sources"]

_live: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_order = itertools.count()
_lock = threading.Lock()


def register_client(client: Any) -> None:
    """Remember `client` (weakly) until it is closed or collected."""
    with _lock:
        _live[next(_order)] = client


def live_clients() -> list[Any]:
    """The registered clients that are still open (`not client.is_closed`), oldest first."""
    with _lock:
        items = sorted(_live.items())
    return [c for _, c in items if not c.is_closed]


def client_list(clients: Iterable[Any] | None) -> list[Any] | None:
    """What a middleware keeps of its `clients` argument.

    `None` stays `None` (every live client, looked up at each request); a
    list is kept as it is, not copied, so the caller can append to it later;
    any other iterable becomes a new list.
    """
    if clients is None or isinstance(clients, list):
        return clients
    return list(clients)


def snapshot_sources(clients: list[Any] | None) -> list[Any]:
    """What a snapshot endpoint shows: the given clients, or every open mesh client."""
    return live_clients() if clients is None else clients
