"""The `grpc-timeout` wire format, for deadlines sent to gRPC-aware peers.

Every attempt carries `x-mesh-timeout-ms` (whole milliseconds left). When the
policy sets `propagate_grpc_timeout=True` it also carries `grpc-timeout` in
gRPC's wire format, so a gRPC server or a sidecar that reads only that header
(Envoy, gRPC-aware proxies) sees the same deadline.
"""

from __future__ import annotations

__all__ = ["format_grpc_timeout"]

#: gRPC's TimeoutValue is at most 8 digits
_GRPC_MAX = 99_999_999
#: coarser units, tried in order when milliseconds need more than 8 digits
_GRPC_UNITS = (("S", 1_000), ("M", 60_000), ("H", 3_600_000))


def format_grpc_timeout(seconds: float) -> str:
    """`seconds` in gRPC's `grpc-timeout` format: `1500m`, `0m` when none is left.

    Whole milliseconds (truncated, like `x-mesh-timeout-ms`) while they fit in
    gRPC's 8 digits, else whole seconds, minutes or hours (rounded down, so the
    callee never gets more time than the caller has).
    """
    ms = max(int(seconds * 1000.0), 0)
    if ms <= _GRPC_MAX:
        return f"{ms}m"
    for unit, size in _GRPC_UNITS:
        if ms // size <= _GRPC_MAX:
            return f"{ms // size}{unit}"
    return f"{_GRPC_MAX}H"

