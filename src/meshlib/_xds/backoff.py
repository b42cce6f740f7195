"""When to reconnect to the control plane after its stream failed.

The decision object every watching client of meshlib shares,
`Reconnect`, with gRPC's connection backoff
settings (base 1 s, multiplier 1.6, jitter +/-20%; capped at 30 s here rather
than gRPC's 120 s, so that a client sees a recovered control plane sooner).
"""

from __future__ import annotations

from .._reconnect import Reconnect

__all__ = ["Backoff"]

#: the xDS client's reconnect decision (gRPC's defaults are ``Reconnect``'s)
Backoff = Reconnect
