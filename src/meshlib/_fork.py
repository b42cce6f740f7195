"""What a client built before `os.fork()` does in the child (pre-fork servers).

gunicorn `--preload` and multiprocessing's `fork` start method copy a
process that may already hold a client: its pools (sockets connected by the
parent), its discovery (a thread or tasks that do not exist in the child,
watch connections the parent still reads) and locks that a parent thread may
have held at the moment of the fork. Sharing any of that with the parent
would mix two processes' bytes on one connection.

Each live transport registers here (weakly); one `os.register_at_fork`
hook calls, in the child only, each one's `_after_fork_in_child()`, which
resets its locks and counters, forgets the parent's pools and restarts
discovery. What the child forgets is never closed: closing would act on the
parent's connections (a TLS close, an event loop's registration shared with
the parent) or on its event loop. It is kept here, unused, for the life of
the child, so that no finalizer closes it later either. The child's copies
of the pooled connections' sockets are pointed at `/dev/null` (`let_go()`):
the parent's connections close when the parent closes them, and nothing the
child does can write to them.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from typing import Any, Protocol

__all__ = ["Forkable", "keep", "let_go", "register"]

logger = logging.getLogger("meshlib")


class Forkable(Protocol):
    """What registers: a transport that can start over in a forked child."""

    def _after_fork_in_child(self) -> None:
        """Reset what the parent's threads may hold; forget the parent's connections."""


_live: weakref.WeakSet[Any] = weakref.WeakSet()
#: what the child inherited and must neither use nor close (see the module docstring)
_kept: list[object] = []


def register(owner: Forkable) -> None:
    """Have `owner._after_fork_in_child()` called in every child forked from now on
    (as long as `owner` lives)."""
    _live.add(owner)


def keep(*inherited: object) -> None:
    """Hold what the child inherited from the parent (pools, a discovery thread's loop,
    tasks) so that it is never closed or finalized in the child."""
    _kept.extend(item for item in inherited if item is not None)


#: meshlib's process-wide locks, as (module, attribute): held briefly by any thread
#: building a client (or tracing an attempt), so a fork may catch one held
_PROCESS_LOCKS = (("meshlib._registry", "_lock"), ("meshlib._telemetry", "_meshes_lock"),
                  ("meshlib._config", "_warned_lock"))


def _renew_process_locks() -> None:
    for module_name, attribute in _PROCESS_LOCKS:
        module = sys.modules.get(module_name)
        if module is not None:
            setattr(module, attribute, threading.Lock())
    telemetry = getattr(sys.modules.get("meshlib._telemetry"), "telemetry", None)
    if telemetry is not None:
        telemetry._lock = threading.Lock()


def _pooled_sockets(pool: Any) -> list[int]:
    """The socket descriptors of an httpcore pool's connections (an endpoint pool's, or
    an `httpx` transport's); none for anything else."""
    core = getattr(pool, "_pool", None)
    found = []
    for connection in getattr(core, "connections", None) or ():
        stream = getattr(getattr(connection, "_connection", None), "_network_stream", None)
        get = getattr(stream, "get_extra_info", None)
        sock = get("socket") if get is not None else None
        fileno = getattr(sock, "fileno", None)
        number = fileno() if fileno is not None else -1
        if isinstance(number, int) and number >= 0:
            found.append(number)
    return found


def let_go(pools: list[Any]) -> None:
    """In the child: point its copies of the pools' sockets at `/dev/null`, keeping
    their numbers taken (the pools still name them), so that the connections are the
    parent's alone."""
    numbers = [n for pool in pools for n in _pooled_sockets(pool)]
    if not numbers:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for number in numbers:
            os.dup2(devnull, number)
    finally:
        os.close(devnull)


def _in_child() -> None:
    _renew_process_locks()
    for owner in list(_live):
        try:
            owner._after_fork_in_child()
        except Exception:  # a child must start even if one client cannot follow
            logger.exception("meshlib: a client could not reset after fork; it may keep "
                             "the parent's endpoints")


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_in_child)
