"""The headers meshlib sends and reads, named once (the client core and both middlewares)."""

from __future__ import annotations

__all__ = ["DEADLINE_HEADER", "ENVOY_TIMEOUT_HEADER", "GRPC_TIMEOUT_HEADER"]

DEADLINE_HEADER = "x-mesh-timeout-ms"
"""Whole milliseconds left of the caller's deadline: sent on every attempt, read by
`meshlib.asgi` and `meshlib.wsgi`."""

GRPC_TIMEOUT_HEADER = "grpc-timeout"
"""The gRPC deadline header, read by both middlewares (and sent when a policy sets
`propagate_grpc_timeout`)."""

ENVOY_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
"""Envoy's expected request timeout (whole milliseconds), read by both middlewares."""
