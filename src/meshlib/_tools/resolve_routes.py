"""`meshlib resolve xds:///LISTENER`: what a control plane gives, as meshlib reads it.

Prints the routes (their matches and weighted clusters), then each cluster
with its endpoints (weight, zone, priority), once or, with `--watch`, on
every change.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from .._control_plane import route_source
from .._discovery import DiscoveryFailure
from .._route_source import RouteUpdate
from .printing import print_change

__all__ = ["describe_update", "resolve_routes"]


def describe_update(update: RouteUpdate) -> dict[str, Any]:
    """JSON-ready: the routes, and each cluster's policy fields and endpoints."""
    clusters: dict[str, Any] = {}
    for key, source in update.clusters.items():
        endpoints = source.discovery.initial() or ()
        policy = source.policy
        clusters[key] = {
            "discovery": source.discovery_url,
            "balancer": policy.balancer if policy is not None else None,
            "endpoints": [{"endpoint": e.address, "weight": e.weight, "zone": e.zone,
                           "priority": e.priority} for e in endpoints]}
    return {"routes": [rule.describe() for rule in update.rules], "clusters": clusters,
            "config": dict(update.status)}


def _text(described: dict[str, Any]) -> str:
    lines = ["routes:"]
    for rule in described["routes"] or []:
        lines.append(f"  {rule['route']}: {json.dumps(rule['match'])} -> "
                     + ", ".join(f"{c} ({w})" for c, w in rule["to"].items()))
    if not described["routes"]:
        lines.append("  (none: no virtual host matches)")
    for key, cluster in described["clusters"].items():
        lines.append(f"{key}: balancer={cluster['balancer']}")
        for e in cluster["endpoints"] or []:
            zone = f" zone={e['zone']}" if e["zone"] else ""
            lines.append(f"  {e['endpoint']}  weight={e['weight']:g} "
                         f"priority={e['priority']}{zone}")
        if not cluster["endpoints"]:
            lines.append("  (no endpoints)")
    return "\n".join(lines)


async def resolve_routes(url: str, watch: bool, timeout: float, as_json: bool) -> int:
    """Print what the control plane of `url` gives; the exit status."""
    source = route_source(url, os.environ)
    updates = source.updates()
    last = ""
    try:
        while True:
            try:
                item = await asyncio.wait_for(updates.__anext__(), None if watch else timeout)
            except asyncio.TimeoutError:
                print(f"meshlib resolve: no configuration from {url} within {timeout:g} s",
                      file=sys.stderr)
                return 1
            if isinstance(item, DiscoveryFailure):
                print(f"meshlib resolve: {url}: {item.reason}", file=sys.stderr)
                if not watch:
                    return 1
                continue
            described = describe_update(item)
            text = json.dumps(described) if as_json else _text(described)
            last = print_change(text, last, watch=watch, as_json=as_json)
            if not watch:
                return 0
    finally:
        await updates.aclose()  # type: ignore[attr-defined]
