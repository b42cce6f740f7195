"""What a control plane gives the mesh for one virtual host: its rules and the clusters
they send to.

Route sources (xDS RDS/CDS/EDS for `xds://` services, Gateway API HTTPRoutes
for `k8s://` services) are async generators of `RouteUpdate`, run in
the background like discovery. Each update replaces the host's whole rule
list and cluster set at once; a failure (`DiscoveryFailure`) keeps the last
good ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ._discovery import Discovery, DiscoveryFailure
from ._policy import Policy
from ._routing import RouteRule

__all__ = ["ClusterSource", "RouteSource", "RouteUpdate"]


@dataclass(frozen=True, slots=True)
class ClusterSource:
    """A cluster a control plane names: where its endpoints come from, and its policy.

    `key` identifies it across updates: an update naming the same key with
    an equal `discovery_url` and `policy` keeps the running cluster (its
    endpoints, breakers and statistics) rather than building a new one.
    """

    key: str
    discovery: Discovery
    policy: Policy | None = None
    #: shown in snapshot() and errors (the control plane's own name for the cluster)
    display_name: str = ""

    @property
    def discovery_url(self) -> str:
        """The discovery's URL (what identifies where the endpoints come from)."""
        return self.discovery.url


@dataclass(frozen=True, slots=True)
class RouteUpdate:
    """The whole route configuration of one virtual host.

    `rules` name clusters by `ClusterSource.key` in their backends; empty
    `rules` mean the host has no routes (requests go to the service itself).
    `clusters` holds every cluster the rules name.
    """

    rules: tuple[RouteRule, ...]
    clusters: Mapping[str, ClusterSource] = field(default_factory=dict)
    #: control-plane state for snapshot() (versions, last NACK, ...), JSON-ready
    status: Mapping[str, object] = field(default_factory=dict)


class RouteSource(Protocol):
    """A control plane's view of one virtual host, followed in the background."""

    @property
    def url(self) -> str:
        """Where the routes come from (for logs and snapshot())."""
        ...

    def updates(self) -> AsyncIterator[RouteUpdate | DiscoveryFailure]:
        """Yield the host's configuration now and after each change."""
        ...
