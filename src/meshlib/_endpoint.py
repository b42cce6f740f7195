"""Endpoint values from discovery, and the per-endpoint statistics the balancer reads."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError
from ._window import Window

__all__ = [
    "DECAY_SECONDS",
    "MIN_SAMPLE_WEIGHT",
    "Endpoint",
    "EndpointState",
    "format_address",
    "parse_host_port",
]

#: peak-EWMA decay time constant, as Finagle's and Linkerd's default
DECAY_SECONDS = 10.0
#: the least weight a sample below the estimate gets: however close together samples
#: come, each moves the estimate this far towards itself
MIN_SAMPLE_WEIGHT = 0.25
#: the most weight the estimate keeps at a sample (`1 - MIN_SAMPLE_WEIGHT`)
_MAX_KEEP = 1.0 - MIN_SAMPLE_WEIGHT


def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 addresses in brackets (`[::1]:8001`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, *, what: str, default_port: int | None = None) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:53`); raise `ConfigError` naming `what`."""
    text = text.strip()
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{what}: {text!r} has an unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{what}: {text!r} is not [host]:port")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ConfigError(f"{what}: {text!r}: write an IPv6 address as [addr]:port")
    if not host:
        raise ConfigError(f"{what}: {text!r} has no host")
    if any(c.isspace() or not c.isprintable() or c in "/?#@[]" for c in host):
        raise ConfigError(f"{what}: {text!r}: {host!r} is not a host name or IP address")
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{what}: {text!r} has no port")
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what}: {text!r} has a bad port {port_text!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service as discovery reports it.

    `weight` scales the share of traffic under equal latency, `zone` enables
    zone-aware routing, `priority` is the SRV priority (lower is preferred).

    Added in version 0.1.
    """

    host: str
    port: int
    weight: float = 1.0
    zone: str | None = None
    priority: int = 0

    @property
    def address(self) -> str:
        """`host:port`, IPv6 in brackets."""
        return format_address(self.host, self.port)



class EndpointState:
    """Mutable statistics of one endpoint, shared by every picker that holds it.

    Latency is a peak EWMA (Finagle's `PeakEwma`): a sample above the current
    value replaces it at once; a lower one is blended in with weight
    `1 - exp(-dt / DECAY_SECONDS)`, but at least `MIN_SAMPLE_WEIGHT`; and
    reading decays the value towards zero, so an endpoint that has not been
    picked for a while gets probed again. The floor is meshlib's own: with
    time-only weights a busy endpoint's samples, milliseconds apart, each move
    the estimate by a ten-thousandth, so one slow first answer (a cold
    connection, a pause of the client's machine) would price a fast endpoint
    as slow for tens of seconds whatever it answers meanwhile; with the floor,
    a handful of good answers bring it back. A slow endpoint's own answers
    keep it slow, and a peak still counts at once.

    Failures are priced apart from latency, as a *penalty* added to it: a failed
    attempt raises the penalty to at least `penalty` seconds, each success halves
    it, and it decays with the same time constant when idle. So a failing endpoint
    is avoided, and a healed one sheds its penalty after a handful of successes
    (the exploring picks find it) instead of through the 10 s EWMA; when its
    breaker closes the penalty is cleared at once (`forgive()`).
    Counters are changed under a short lock that is never held across I/O.
    """

    __slots__ = (
        "_ewma", "_lock", "_ok", "_ok_stamp", "_penalty", "_penalty_stamp", "_stamp", "address",
        "breaker", "endpoint", "failures", "inflight", "pool", "ramp_from", "requests",
        "retired", "rr_current", "streak", "window",
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
        #: when this endpoint's slow-start ramp began (``None``: not ramping)
        self.ramp_from: float | None = None
        self._ewma: float | None = None
        self._stamp = 0.0
        self._penalty = 0.0  # failure penalty in seconds, added to the latency estimate
        self._penalty_stamp = 0.0
        self._ok: float | None = None  # peak EWMA of successful answers only
        self._ok_stamp = 0.0
        self._lock = threading.Lock()
        #: golden signals of its attempts, made at its first judged attempt
        self.window: Window | None = None
        #: consecutive failed answers (reset by a success)
        self.streak = 0

    def ewma(self, now: float) -> float | None:
        """The balancer's cost basis at `now`: the decayed peak-EWMA latency plus the
        decayed failure penalty, in seconds; `None` before any sample."""
        value = _decayed(self._ewma, self._stamp, now)
        if value is None or not self._penalty:
            return value
        return value + self.penalty(now)

    @property
    def penalised(self) -> bool:
        """Whether a failure penalty is being shed (cheap: no decay computed)."""
        return self._penalty != 0.0

    @property
    def sampled(self) -> bool:
        """Whether any latency sample was recorded (cheap: no decay computed)."""
        return self._ewma is not None

    def penalty(self, now: float) -> float:
        """The decayed failure penalty in seconds (0 for an endpoint that has not failed)."""
        penalty = self._penalty
        elapsed = now - self._penalty_stamp
        return penalty * math.exp(-elapsed / DECAY_SECONDS) if penalty and elapsed > 0 \
            else penalty

    def ok_estimate(self, now: float) -> float | None:
        """Peak-EWMA latency of successful answers only, decayed; `None` before any.

        Deadline-aware admission uses this: the failure penalty that steers the
        balancer away from a failing endpoint says nothing about how long it takes.
        """
        return _decayed(self._ok, self._ok_stamp, now)

    def fits(self, seconds: float, now: float) -> bool:
        """Whether this endpoint usually answers within `seconds`."""
        value = self.ok_estimate(now)
        return value is None or value < seconds

    def begin(self) -> None:
        """An attempt to this endpoint started."""
        with self._lock:
            self.inflight += 1
            self.requests += 1

    def observe(self, latency: float, now: float, *, failed: bool, penalty: float) -> None:
        """Record an attempt's latency; a failure raises the penalty to at least
        `penalty` seconds, a success halves it."""
        with self._lock:
            if not failed and not self._penalty and self._ok_stamp == self._stamp \
                    and self._ok is not None and self._ewma is not None:
                # the common case: a success after a success; both estimates were last
                # updated together, so they decay by the same weight
                weight = _keep(self._stamp, now)
                self._ewma = _blend(self._ewma, weight, latency)
                self._ok = _blend(self._ok, weight, latency)
                self._stamp = self._ok_stamp = now
                return
            self._ewma = _peak_ewma(self._ewma, self._stamp, latency, now)
            self._stamp = now
            if failed:
                self.failures += 1
                self._penalty = max(self.penalty(now), penalty)
                self._penalty_stamp = now
                return
            if self._penalty:
                left = self.penalty(now) * 0.5
                self._penalty = left if left > 1e-6 else 0.0
                self._penalty_stamp = now
            self._ok = _peak_ewma(self._ok, self._ok_stamp, latency, now)
            self._ok_stamp = now

    def forgive(self) -> None:
        """Clear the failure penalty and the latency of failed attempts (the breaker
        closed again: the endpoint proved healthy); the successful-latency estimate
        becomes the cost basis again."""
        with self._lock:
            self._penalty = 0.0
            if self._ok is not None:
                self._ewma, self._stamp = self._ok, self._ok_stamp

    def finish(self) -> None:
        """An attempt is over (response closed, failed or cancelled): one fewer in flight."""
        with self._lock:
            self.inflight -= 1


def _decayed(value: float | None, stamp: float, now: float) -> float | None:
    """A peak-EWMA value last updated at `stamp`, decayed towards zero until `now`."""
    if value is None:
        return None
    elapsed = now - stamp
    return value * math.exp(-elapsed / DECAY_SECONDS) if elapsed > 0 else value


def _keep(stamp: float, now: float) -> float:
    """The weight an estimate last updated at `stamp` keeps at a sample at `now`:
    `exp(-dt / DECAY_SECONDS)`, at most `1 - MIN_SAMPLE_WEIGHT`."""
    return min(math.exp(-max(now - stamp, 0.0) / DECAY_SECONDS), _MAX_KEEP)


def _blend(current: float, weight: float, sample: float) -> float:
    """`_peak_ewma()` with the weight the estimate keeps already worked out."""
    decayed = current * weight
    return sample if sample > decayed else decayed + sample * (1.0 - weight)


def _peak_ewma(current: float | None, stamp: float, sample: float, now: float) -> float:
    """One peak-EWMA update: a sample above the decayed value replaces it; a lower one is
    blended in with weight `1 - exp(-dt / DECAY_SECONDS)`, at least `MIN_SAMPLE_WEIGHT`."""
    if current is None:
        return sample
    return _blend(current, _keep(stamp, now), sample)
