"""Tools for the tests of code that uses meshlib: testing mode and a fault fleet.

Testing mode (as stamina's `set_testing`):

```
import meshlib.testing

meshlib.testing.set_testing(True)              # backoff and Retry-After no longer sleep
with meshlib.testing.set_testing(attempts=1):  # ... and one attempt per request
    ...                                        # (the previous state is back on exit)
```

A fleet of misbehaving endpoints:

```
with meshlib.testing.Fleet(3, latency=0.01) as fleet:
    fleet.set(0, refuse=True)                  # nothing listens on the first one
    with meshlib.MeshClient(services={"users": fleet.url}) as client:
        client.get("http://users/me")          # answered by another endpoint
    print(fleet.hits())
```

respx mocks keyed on service URLs need no helper: they match requests made
through `MeshClient` as they match plain httpx. The pytest plugin
(`meshlib.testing._plugin`, registered as `meshlib`) offers the
fixtures `mesh_fleet` and `mesh_testing`. See docs/testing.md.

An xDS control plane for tests (extra `xds`; see docs/xds.md):

```
with meshlib.testing.XdsServer() as server:
    server.set(clusters=[{"name": "users", "type": "EDS",
                          "eds_cluster_config": {"eds_config": {"ads": {}}}}])
    ...                                        # server.bootstrap, server.acks()
```

Added in version 0.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._testmode import asleep, capped, is_testing, set_testing, sleep

if TYPE_CHECKING:
    from ._fleet import Fleet, FleetFactory, Hit
    from ._xds_server import XdsRequest, XdsServer

__all__ = ["Fleet", "FleetFactory", "Hit", "XdsRequest", "XdsServer", "asleep", "capped",
           "is_testing", "set_testing", "sleep"]


def __getattr__(name: str) -> Any:
    # The fleet and its loopback fault server are loaded on first use, so that
    # ``import meshlib.testing`` (set_testing alone) stays light.
    if name in ("Fleet", "FleetFactory", "Hit"):
        from . import _fleet

        return getattr(_fleet, name)
    if name in ("XdsServer", "XdsRequest"):
        # grpcio (the xds extra) is imported only when the control plane is asked for
        from . import _xds_server

        return getattr(_xds_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
