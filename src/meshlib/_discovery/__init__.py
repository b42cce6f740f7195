"""Discovery kinds and the URL scheme registry."""

from __future__ import annotations

import importlib

from .._errors import ConfigError, redact_url
from ._base import (
    EMPTY_GRACE_SECONDS,
    Discovery,
    DiscoveryFailure,
    DiscoveryOptions,
    EndpointSetTracker,
    Update,
)

__all__ = [
    "EMPTY_GRACE_SECONDS",
    "Discovery",
    "DiscoveryFailure",
    "DiscoveryOptions",
    "EndpointSetTracker",
    "Update",
    "discovery_from_url",
]

#: scheme -> "module:Class", imported on first use
_KINDS: dict[str, str] = {
    "static": "._static:StaticDiscovery",
    "dns+srv": "._dns:SrvDiscovery",
    "dns": "._dns:AddressDiscovery",
    "file": "._file:FileDiscovery",
    "etcd": "._etcd:EtcdDiscovery",
    "consul": "._consul:ConsulDiscovery",
    "k8s": "._k8s:K8sDiscovery",
}


def discovery_from_url(url: str, options: DiscoveryOptions | None = None) -> Discovery:
    """Build the discovery for `url`; raise `ConfigError` naming a bad URL."""
    if not isinstance(url, str) or "://" not in url:
        shown = redact_url(url) if isinstance(url, str) else url
        raise ConfigError(f"discovery URL {shown!r} has no scheme (e.g. static://host:port)")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        shown = f"{scheme}://***@{authority.rpartition('@')[2]}{redact_url(rest[end:])}"
        raise ConfigError(
            f"discovery URL {shown!r}: userinfo (user:password@) is not allowed "
            "in a discovery URL")
    target = _KINDS.get(scheme)
    if target is None:
        raise ConfigError(
            f"discovery URL {redact_url(url)!r}: unknown scheme {scheme!r} "
            f"(known: {', '.join(sorted(_KINDS))})"
        )
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name, __name__)
    cls: type[Discovery] = getattr(module, class_name)
    try:
        return cls(url, options)
    except ConfigError:
        raise
    except ValueError as exc:  # urlsplit's "Invalid IPv6 URL" and the like
        raise ConfigError(f"discovery URL {redact_url(url)!r}: {exc}") from None
