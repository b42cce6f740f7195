"""Running one service's discovery in the background: the loop both transports use.

It drives anything shaped like a service runtime (`Follower`), so the
discovery layer needs nothing from the layers above it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .._reconnect import Reconnect
from ._base import Discovery, DiscoveryFailure, Update

__all__ = ["Follower", "follow"]

logger = logging.getLogger("meshlib.discovery")

#: seconds before restarting a discovery that crashed, doubling up to the maximum
RESTART_MIN, RESTART_MAX = 0.5, 30.0

Retired = TypeVar("Retired")


class Follower(Protocol[Retired]):
    """What `follow()` drives (`ServiceRuntime`): a name, a discovery, and
    `apply`, which takes an answer and returns the endpoints it retired."""

    @property
    def name(self) -> str:
        """The service name (for logs)."""
        ...

    @property
    def discovery(self) -> Discovery:
        """Where the endpoints come from."""
        ...

    def apply(self, update: Update, now: float) -> list[Retired]:
        """Take one discovery answer; return the endpoints whose pools to close."""
        ...


async def follow(runtime: Follower[Retired],
                 retire: Callable[[list[Retired]], Awaitable[None] | None],
                 clock: Callable[[], float]) -> None:
    """Apply every answer of `runtime`'s discovery until cancelled.

    `retire` closes the pools of endpoints that left. A discovery kind that
    raises (a bug, or garbage its parser did not expect) is not allowed to end
    discovery for good: the failure is recorded like any other (the last good
    set is kept and the tracker logs the change of state) and the kind is
    restarted after a capped, doubling delay. A follower with a ``bind(retire,
    clock)`` method is given both first, so that it can follow more discoveries
    (a control plane's clusters) on the same loop.
    """
    delay = RESTART_MIN
    bind = getattr(runtime, "bind", None)
    if bind is not None:  # a follower that starts followers of its own (a control plane)
        bind(retire, clock)
    try:
        backoff = Reconnect(base=delay, cap=RESTART_MAX, multiplier=2.0, jitter=0.0)
        while True:
            try:
                async for update in runtime.discovery.updates():
                    result = retire(runtime.apply(update, clock()))
                    if inspect.isawaitable(result):
                        await result
                    if not isinstance(update, DiscoveryFailure):
                        backoff.succeeded()
                return  # the kind has nothing more to say (a fixed list)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.failed(clock())
                logger.debug("discovery for %r raised; restarting in %.1f s", runtime.name,
                             delay, exc_info=True)
                runtime.apply(DiscoveryFailure(f"{type(exc).__name__}: {exc}"), clock())
                await asyncio.sleep(delay)
    finally:
        await runtime.discovery.aclose()
