"""meshlib: an embeddable client-side service mesh for httpx.

Swap `httpx.Client` for `meshlib.MeshClient` and requests to
configured service names get discovery, latency-aware balancing, retries
gated by idempotency and a retry budget, deadlines, circuit breakers,
hedging and OpenTelemetry, in-process.
"""

from __future__ import annotations

from ._async.transport import AsyncMeshTransport
from ._client import AsyncMeshClient, MeshClient
from ._endpoint import Endpoint
from ._errors import (
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    MeshError,
    NoEndpointsError,
    NoRouteError,
)
from ._info import MeshInfo
from ._policy import Backoff, Breaker, Hedge, Policy, RetryBudget, SlowStart
from ._routes import Match, Route, Split
from ._scope import current_deadline, deadline, policy, time_left
from ._service import Service
from ._sync.transport import MeshTransport

__version__ = "0.2.0"

__all__ = [
    "AsyncMeshClient",
    "AsyncMeshTransport",
    "Backoff",
    "Breaker",
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "Endpoint",
    "Hedge",
    "Match",
    "MeshClient",
    "MeshError",
    "MeshInfo",
    "MeshTransport",
    "NoEndpointsError",
    "NoRouteError",
    "Policy",
    "RetryBudget",
    "Route",
    "Service",
    "SlowStart",
    "Split",
    "__version__",
    "current_deadline",
    "deadline",
    "policy",
    "time_left",
]

# the public path in reprs and tracebacks (meshlib.Policy, not meshlib._policy.Policy)
for _name in __all__:
    _public = globals()[_name]
    if isinstance(_public, type):
        _public.__module__ = "meshlib"
del _name, _public
