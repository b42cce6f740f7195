"""Recent latencies of a service, for `Hedge(delay="p95")`."""

from __future__ import annotations

__all__ = ["LatencyWindow"]


class LatencyWindow:
    """A ring of the last `size` successful latencies; percentiles computed lazily.

    The sorted copy is rebuilt at most every `size // 8` samples, so reading
    the p95 on every request costs a comparison, not a sort.
    """

    def __init__(self, size: int = 256, min_samples: int = 20) -> None:
        self.size = size
        self.min_samples = min_samples
        self._ring: list[float] = []
        self._next = 0
        self._since_sort = 0
        self._sorted: list[float] = []

    def add(self, latency: float) -> None:
        """Record one latency in seconds."""
        if len(self._ring) < self.size:
            self._ring.append(latency)
        else:
            self._ring[self._next] = latency
            self._next = (self._next + 1) % self.size
        self._since_sort += 1

    def __len__(self) -> int:
        return len(self._ring)

    def percentile(self, q: float) -> float | None:
        """The `q` quantile (0..1) of recent latencies, `None` until `min_samples` exist."""
        if len(self._ring) < self.min_samples:
            return None
        if self._since_sort >= max(self.size // 8, 1) or not self._sorted:
            self._sorted = sorted(self._ring)
            self._since_sort = 0
        index = min(int(q * len(self._sorted)), len(self._sorted) - 1)
        return self._sorted[index]
