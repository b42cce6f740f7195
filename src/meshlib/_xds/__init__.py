"""meshlib's xDS client: join an xDS control plane (Istio, go-control-plane, Traffic Director).

Module map (each module's docstring says more):

- `.messages`: the protobuf messages, in a private descriptor pool;
- `.bootstrap`: gRPC's bootstrap file (which control plane, which node);
- `.resources`: decoded, validated resources as frozen dataclasses, and
  `XdsConfig`, the complete graph a client routes by;
- `.protocol`: the ADS state machine (subscriptions, ACK/NACK, timers), no I/O;
- `.backoff`: when to reconnect;
- `.client`: `XdsClient`, the grpcio driver (needs the
  `xds` extra: grpcio and protobuf).

Nothing here is imported by `import meshlib`; grpcio is imported only by
`.client`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import XdsClient

__all__ = ["load_client"]


def load_client() -> type[XdsClient]:
    """`XdsClient`, importing grpcio and protobuf on first use.

    Raises `ConfigError` naming the `xds` extra when they are
    not installed.
    """
    try:
        from .client import XdsClient
    except ImportError as exc:
        from .._errors import ConfigError

        raise ConfigError(f"xds:// needs the xds extra (pip install \"httpx-mesh[xds]\"): "
                          f"{exc}") from None
    return XdsClient
