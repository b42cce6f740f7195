"""A canary rollout steered by an xDS control plane, on loopback.

Run it: ``python examples/xds_canary.py`` (needs ``pip install "httpx-mesh[xds]"``).
It starts a local control plane (``meshlib.testing.XdsServer``) and two local
versions of "users", points the client at the control plane through the
bootstrap variable, then moves the canary's share from 0% to 20% to 100% while
requests run: the client follows each change, and no request fails.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

import meshlib

LISTENER = "users.shop.svc.cluster.local:80"


def routes(v1: int, v2: int) -> dict[str, Any]:
    """The route configuration: x-canary: 1 always goes to v2; the rest is split."""
    return {"name": "users-routes", "virtual_hosts": [{
        "name": "users", "domains": ["*"], "routes": [
            {"name": "canary-header", "match": {"prefix": "/", "headers": [
                {"name": "x-canary", "string_match": {"exact": "1"}}]},
             "route": {"cluster": "users-v2"}},
            {"name": "split", "match": {"prefix": "/"},
             "route": {"timeout": "1s", "weighted_clusters": {"clusters": [
                 {"name": "users-v1", "weight": v1}, {"name": "users-v2", "weight": v2}]},
                 "retry_policy": {"retry_on": "5xx", "num_retries": 2}}}]}]}


def main() -> int:
    try:
        from meshlib._xds.resources import EndpointSpec, EndpointsSpec, ListenerSpec
        from meshlib.testing import Fleet, XdsServer
    except ImportError as exc:  # grpcio or protobuf missing
        print(f"this example needs the xds extra (pip install \"httpx-mesh[xds]\"): {exc}",
              file=sys.stderr)
        return 1

    def endpoints(name: str, fleet: Fleet) -> EndpointsSpec:
        return EndpointsSpec(name, tuple(
            EndpointSpec("127.0.0.1", int(e.rpartition(":")[2]), health="HEALTHY")
            for e in fleet.endpoints))

    with XdsServer() as control_plane, Fleet(2) as v1, Fleet(2) as v2:
        control_plane.set(
            listeners=[ListenerSpec(LISTENER, "users-routes")], routes=[routes(100, 0)],
            clusters=[{"name": n, "type": "EDS", "lb_policy": "LEAST_REQUEST",
                       "eds_cluster_config": {"eds_config": {"ads": {}}}}
                      for n in ("users-v1", "users-v2")],
            endpoints=[endpoints("users-v1", v1), endpoints("users-v2", v2)])
        os.environ["MESHLIB_XDS_BOOTSTRAP"] = control_plane.bootstrap  # as Istio injects it
        with meshlib.MeshClient(services={"users": f"xds:///{LISTENER}"}) as client:
            for v1_weight, v2_weight in ((100, 0), (80, 20), (0, 100)):
                control_plane.set(routes=[routes(v1_weight, v2_weight)])
                # the client follows in the background; the first requests may still
                # see the previous split
                seen: Counter[str] = Counter()
                for _ in range(100):
                    response = client.get("http://users/v1/me")
                    response.raise_for_status()
                    seen[response.extensions["meshlib"]["service"]] += 1
                print(f"split {v1_weight}/{v2_weight}: 100 requests, all successful:",
                      dict(sorted(seen.items())))
            canary = client.get("http://users/v1/me", headers={"x-canary": "1"})
            print("with x-canary: 1 ->", canary.extensions["meshlib"]["service"],
                  "route", canary.extensions["meshlib"]["route"])
            state = client.snapshot()["services"]["users"]["xds"]
            print("control plane connected:", state["connected"], "versions:",
                  {kind: info["version"] for kind, info in state["types"].items()})
    print("servers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
