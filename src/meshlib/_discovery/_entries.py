"""One endpoint entry `{"host", "port", "weight"?, "zone"?, "priority"?}`, checked.

Shared by the kinds that read such entries (`file://`, `etcd://`, Consul)
and by `meshlib.etcd`, which writes them.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from .._endpoint import Endpoint

__all__ = ["EntryError", "parse_entry"]


class EntryError(ValueError):
    """An endpoint entry that is not `{"host", "port", "weight"?, "zone"?, "priority"?}`."""


def _host(value: Any) -> str:
    """A checked host name or IP address (IPv6 with or without brackets)."""
    if not isinstance(value, str) or not value.strip():
        raise EntryError(f"'host' must be a non-empty string, not {value!r}")
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise EntryError(f"'host' {value!r} is not a host name or IP address") from None
    if any(c.isspace() or c in "/[]@?#" for c in host):
        raise EntryError(f"'host' {value!r} is not a host name or IP address")
    return host


def _port(value: Any) -> int:
    """A checked port number (1 to 65535)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise EntryError(f"'port' must be a whole number from 1 to 65535, not {value!r}")
    return value


def _weight(value: Any) -> float:
    """A checked weight: a finite number above 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EntryError(f"'weight' must be a number, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise EntryError(f"'weight' must be a finite number above 0, not {value!r}")
    return float(value)


def _priority(value: Any) -> int:
    """A checked priority: a whole number >= 0 (lower is preferred)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EntryError(f"'priority' must be a whole number >= 0, not {value!r}")
    return value


def parse_entry(entry: Any) -> Endpoint:
    """One endpoint from a decoded JSON object; `EntryError` says what is wrong."""
    if not isinstance(entry, dict):
        raise EntryError(f"an entry must be a JSON object, not {type(entry).__name__}")
    if "host" not in entry or "port" not in entry:
        raise EntryError(f"an entry needs 'host' and 'port': {entry!r}")
    zone = entry.get("zone")
    if zone is not None and not isinstance(zone, str):
        raise EntryError(f"'zone' must be a string, not {zone!r}")
    return Endpoint(
        _host(entry["host"]),
        _port(entry["port"]),
        _weight(entry.get("weight", 1.0)),
        zone or None,
        _priority(entry.get("priority", 0)),
    )
