"""Endpoint values from discovery, and the per-endpoint statistics the balancer reads."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["DECAY_SECONDS", "Endpoint", "EndpointState", "format_address"]

#: peak-EWMA decay time constant, as Finagle's and Linkerd's default
DECAY_SECONDS = 10.0


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 addresses in brackets (``[::1]:8001``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service as discovery reports it.

    ``weight`` scales the share of traffic under equal latency, ``zone`` enables
    zone-aware routing, ``priority`` is the SRV priority (lower is preferred).

    .. versionadded:: 0.1
    """

    host: str
    port: int
    weight: float = 1.0
    zone: str | None = None
    priority: int = 0

    @property
    def address(self) -> str:
        """``host:port``, IPv6 in brackets."""
        return format_address(self.host, self.port)


Endpoint.__module__ = "meshlib"


class EndpointState:
    """Mutable statistics of one endpoint, shared by every picker that holds it.

    Latency is a peak EWMA (Finagle's ``PeakEwma``): a sample above the current
    value replaces it at once; a lower one is blended in with weight
    ``1 - exp(-dt / DECAY_SECONDS)``; and reading decays the value towards zero,
    so an endpoint that has not been picked for a while gets probed again.
    Counters are changed under a short lock that is never held across I/O.
    """

    __slots__ = (
        "_ewma", "_lock", "_ok", "_ok_stamp", "_stamp", "address", "breaker", "endpoint",
        "failures", "inflight", "pool", "requests", "retired", "rr_current",
    )

    def __init__(self, endpoint: Endpoint, breaker: Any = None) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self.breaker = breaker
        self.pool: Any = None
        self.retired = False
        self.inflight = 0
        self.requests = 0
        self.failures = 0
        self.rr_current = 0.0
        self._ewma: float | None = None
        self._stamp = 0.0
        self._ok: float | None = None  # peak EWMA of successful answers only
        self._ok_stamp = 0.0
        self._lock = threading.Lock()

    def ewma(self, now: float) -> float | None:
        """The peak-EWMA latency in seconds at ``now``, decayed; ``None`` before any sample."""
        value = self._ewma
        if value is None:
            return None
        elapsed = now - self._stamp
        if elapsed <= 0:
            return value
        return value * math.exp(-elapsed / DECAY_SECONDS)

    def ok_estimate(self, now: float) -> float | None:
        """Peak-EWMA latency of successful answers only, decayed; ``None`` before any.

        Deadline-aware admission uses this: the failure penalty that steers the
        balancer away from a failing endpoint says nothing about how long it takes.
        """
        value = self._ok
        if value is None:
            return None
        elapsed = now - self._ok_stamp
        return value * math.exp(-elapsed / DECAY_SECONDS) if elapsed > 0 else value

    def fits(self, seconds: float, now: float) -> bool:
        """Whether this endpoint usually answers within ``seconds``."""
        value = self.ok_estimate(now)
        return value is None or value < seconds

    def begin(self) -> None:
        """An attempt to this endpoint started."""
        with self._lock:
            self.inflight += 1
            self.requests += 1

    def observe(self, latency: float, now: float, *, failed: bool, penalty: float) -> None:
        """Record an attempt's latency; a failure counts as a sample of at least ``penalty``."""
        sample = max(latency, penalty) if failed else latency
        with self._lock:
            if failed:
                self.failures += 1
            current = self._ewma
            if current is None:
                self._ewma = sample
            else:
                weight = math.exp(-max(now - self._stamp, 0.0) / DECAY_SECONDS)
                decayed = current * weight
                self._ewma = sample if sample > decayed else decayed + sample * (1.0 - weight)
            self._stamp = now
            if not failed:
                current = self._ok
                if current is None:
                    self._ok = latency
                else:
                    weight = math.exp(-max(now - self._ok_stamp, 0.0) / DECAY_SECONDS)
                    decayed = current * weight
                    self._ok = latency if latency > decayed else decayed + latency * (
                        1.0 - weight)
                self._ok_stamp = now

    def finish(self) -> None:
        """An attempt is over (response closed, failed or cancelled): one fewer in flight."""
        with self._lock:
            self.inflight -= 1
