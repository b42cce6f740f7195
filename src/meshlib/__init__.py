"""meshlib: an embeddable client-side service mesh for httpx.

Swap ``httpx.Client`` for :class:`meshlib.MeshClient` and requests to
configured service names get discovery, latency-aware balancing, retries
gated by idempotency and a retry budget, deadlines, circuit breakers,
hedging and OpenTelemetry, in-process.
"""

from __future__ import annotations

from ._async_transport import AsyncMeshTransport
from ._client import AsyncMeshClient, MeshClient
from ._endpoint import Endpoint
from ._errors import CircuitOpenError, ConfigError, DeadlineExceeded, MeshError, NoEndpointsError
from ._policy import Backoff, Breaker, Hedge, Policy, RetryBudget
from ._scope import current_deadline, deadline, policy, time_left
from ._service import Service
from ._transport import MeshTransport

__version__ = "0.1.0"

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
    "MeshClient",
    "MeshError",
    "MeshTransport",
    "NoEndpointsError",
    "Policy",
    "RetryBudget",
    "Service",
    "__version__",
    "current_deadline",
    "deadline",
    "policy",
    "time_left",
]

for _name in ("MeshTransport", "AsyncMeshTransport"):
    globals()[_name].__module__ = "meshlib"
