"""Golden signals over the last 60 seconds, in fixed memory.

A `Window` is a ring of 12 buckets of 5 seconds. Each bucket counts
requests and successes and keeps a latency histogram with logarithmic bins
(about 9% wide, from 0.1 ms to about 100 s), allocated the first time the
bucket sees a latency. Recording is a few integer operations and one
logarithm, with no lock: under threads a count may rarely be lost, which a
60-second rate can afford. Percentiles are read from the merged bins, so
they are accurate to a bin's width; nothing keeps a list of samples.

`snapshot()` (per service, per route and per endpoint) reports `requests`,
`rps` (over the time the window covers, at most 60 s), `success_rate` and
`latency_ms` (`p50`, `p95`, `p99`) of the requests that got an answer.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["BUCKETS", "BUCKET_SECONDS", "Window"]

#: the window covers BUCKETS x BUCKET_SECONDS = 60 s
BUCKETS = 12
BUCKET_SECONDS = 5.0
_MIN_MS = 0.1
#: bins per doubling of latency (each about 9% wide)
_PER_DOUBLING = 8
_BINS = 20 * _PER_DOUBLING  # 0.1 ms * 2**20: about 105 s; slower lands in the last bin
_SCALE = _PER_DOUBLING / math.log(2.0)


def _bin(latency_s: float) -> int:
    ms = latency_s * 1000.0
    if ms <= _MIN_MS:
        return 0
    index = int(math.log(ms / _MIN_MS) * _SCALE)
    return index if index < _BINS else _BINS - 1


def _bin_ms(index: int) -> float:
    """The middle of bin `index` (geometric), in milliseconds."""
    return float(_MIN_MS * 2.0 ** ((index + 0.5) / _PER_DOUBLING))


class Window:
    """Requests, successes and latencies of the last 60 s (see the module docstring)."""

    __slots__ = ("_bins", "_epochs", "_ok", "_requests", "_shed", "_since")

    def __init__(self, now: float) -> None:
        self._epochs = [-1] * BUCKETS
        self._requests = [0] * BUCKETS
        self._ok = [0] * BUCKETS
        self._shed = [0] * BUCKETS  # failed fast, nothing sent
        self._bins: list[list[int] | None] = [None] * BUCKETS
        #: when the window started counting (rps over less than 60 s when younger)
        self._since = now

    def record(self, now: float, ok: bool, latency_s: float | None, *,
               shed: bool = False) -> None:
        """One request ended at `now`: `ok` or not; `latency_s` if it got an answer;
        `shed` if it failed fast with nothing sent."""
        self._add(int(now // BUCKET_SECONDS), ok, shed,
                  -1 if latency_s is None else _bin(latency_s))

    def record_with(self, other: Window, now: float, ok: bool, latency_s: float | None) -> None:
        """`record()` into this window and `other` at once (a request's service and
        route windows): the bucket and the latency's bin are worked out once."""
        epoch = int(now // BUCKET_SECONDS)
        index = -1 if latency_s is None else _bin(latency_s)
        self._add(epoch, ok, False, index)
        other._add(epoch, ok, False, index)

    def _add(self, epoch: int, ok: bool, shed: bool, index: int) -> None:
        """Count one request in the bucket of `epoch`, its latency in bin `index` (-1:
        no answer)."""
        slot = epoch % BUCKETS
        if self._epochs[slot] != epoch:
            self._roll(slot, epoch)
        self._requests[slot] += 1
        if ok:
            self._ok[slot] += 1
        elif shed:
            self._shed[slot] += 1
        if index >= 0:
            bins = self._bins[slot]
            if bins is None:
                bins = self._bins[slot] = [0] * _BINS
            bins[index] += 1

    def _roll(self, slot: int, epoch: int) -> None:
        """Start bucket `slot` over for `epoch` (its last use is over 60 s old)."""
        self._epochs[slot] = epoch
        self._requests[slot] = 0
        self._ok[slot] = 0
        self._shed[slot] = 0
        bins = self._bins[slot]
        if bins is not None:
            bins[:] = [0] * _BINS

    def _live(self, now: float) -> list[int]:
        epoch = int(now // BUCKET_SECONDS)
        oldest = epoch - BUCKETS + 1
        return [slot for slot, seen in enumerate(self._epochs) if oldest <= seen <= epoch]

    def requests(self, now: float) -> int:
        """Requests in the window."""
        return sum(self._requests[slot] for slot in self._live(now))

    def sent_ok(self, now: float) -> tuple[int, int]:
        """Requests *sent* in the window (failed-fast ones left out), and how many were ok."""
        live = self._live(now)
        sent = sum(self._requests[slot] - self._shed[slot] for slot in live)
        return sent, sum(self._ok[slot] for slot in live)

    def failure_rate(self, now: float, *, minimum: int = 20) -> float | None:
        """The share of *sent* requests in the window that failed; `None` with fewer
        than `minimum` sent."""
        sent, ok = self.sent_ok(now)
        return max(sent - ok, 0) / sent if sent >= minimum else None

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready golden signals: requests, rps, success_rate, latency_ms p50/p95/p99."""
        live = self._live(now)
        requests = sum(self._requests[slot] for slot in live)
        ok = sum(self._ok[slot] for slot in live)
        oldest = (int(now // BUCKET_SECONDS) - BUCKETS + 1) * BUCKET_SECONDS
        span = max(now - max(self._since, oldest), 1.0)
        merged = [0] * _BINS
        samples = 0
        for slot in live:
            bins = self._bins[slot]
            if bins is not None:
                for index, count in enumerate(bins):
                    if count:
                        merged[index] += count
                        samples += count
        latency: dict[str, float | None] = {"p50": None, "p95": None, "p99": None}
        if samples:
            for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
                latency[name] = round(_quantile(merged, samples, q), 3)
        return {
            "requests": requests,
            "rps": round(requests / span, 3),
            "success_rate": round(ok / requests, 4) if requests else None,
            "latency_ms": latency,
        }


def _quantile(bins: list[int], total: int, q: float) -> float:
    rank = max(math.ceil(q * total), 1)
    seen = 0
    for index, count in enumerate(bins):
        seen += count
        if seen >= rank:
            return _bin_ms(index)
    return _bin_ms(len(bins) - 1)
