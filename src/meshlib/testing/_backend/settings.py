"""The loopback backend's data: behaviour settings, recorded requests, addresses.

Plain values shared by `.protocol` (which acts on them), `.control`
(which holds them per server) and `.runner`; this module imports none of them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Literal

__all__ = ["Mode", "RecordedRequest", "ServerSettings", "check_loopback", "format_address"]

Mode = Literal["normal", "close", "reset", "stall"]
_MODES: frozenset[str] = frozenset({"normal", "close", "reset", "stall"})


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """The behaviour of one server (immutable; replaced as a whole)."""

    delay_ms: float = 0.0
    status: int = 200
    fail_pct: float = 0.0
    fail_status: int = 503
    retry_after: str | None = None
    mode: Mode = "normal"
    drop_pct: float = 0.0
    """Percentage of requests whose connection is closed, unanswered, once read."""
    query_overrides: bool = True
    """Whether `?delay_ms=`, `?status=`, `?fail_pct=`, `?retry_after=` apply."""

    def validated(self) -> ServerSettings:
        """Return `self` after checking every field, or raise `ValueError`."""
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, not {self.delay_ms!r}")
        if not 100 <= self.status <= 999 or not 100 <= self.fail_status <= 999:
            raise ValueError("status and fail_status must be 3-digit HTTP status codes")
        if not 0 <= self.fail_pct <= 100:
            raise ValueError(f"fail_pct must be within 0..100, not {self.fail_pct!r}")
        if not 0 <= self.drop_pct <= 100:
            raise ValueError(f"drop_pct must be within 0..100, not {self.drop_pct!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, not {self.mode!r}")
        return self


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as a server received it."""

    backend: str
    """`host:port` of the server that received it."""
    method: str
    path: str
    """Path without the query string."""
    query: str
    headers: dict[str, str]
    """Lower-cased header names; repeated headers joined with `", "`."""
    body: bytes
    time: float
    """`time.monotonic()` when the request had been read completely."""
    n: int
    """1-based sequence number of this request on its server."""

    @property
    def target(self) -> str:
        """The request target as sent (path and query)."""
        return f"{self.path}?{self.query}" if self.query else self.path



def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_loopback(host: str) -> str:
    """`host` as a loopback IP address, or `ValueError`."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"backend host must be a loopback IP address, not {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"backend host must be a loopback address, not {host!r}")
    return str(ip)
