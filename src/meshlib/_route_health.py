"""Fail fast by route, and the route's memory of how its endpoints answered.

A route is a configured `Route` (its name or index) or, with none, the
request's method and the first segment of its path (`GET /users`). Each
route of each cluster has a `RouteHealth`:

- a breaker that opens when the route fails on every endpoint: at least
  `Breaker.failures` consecutive failed attempts on the route, spread over
  every available endpoint (at most 8 need to be seen). A route that fails
  now and then (a share `p` of its sent requests over the last 60 s, before
  the streak began) needs a longer streak, long enough that `p` alone
  would give it less than once in a billion tries (`streak_needed()`):
  at `p = 0.3`, 18; so a busy, partly failing route is never shut by
  coincidence, while a healthy route that starts failing everywhere is shut
  after `failures`. Then requests to the
  route raise `CircuitOpenError` without sending, until after
  `reset_timeout` one trial request closes it again (or reopens it). A route
  failing never touches its siblings: each route has its own breaker.
- the last outcome of each endpoint on the route, which makes endpoint
  ejection relative: an endpoint's failed answer counts against it only if
  another endpoint last answered this route well (see `_feedback`).

Routes without configuration are kept in a bounded LRU
(`MAX_IMPLICIT_ROUTES`), so ids in paths cannot grow memory.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ._breaker import ADMITTED, BREAKER_OFF, CLOSED, EndpointBreaker
from ._policy import Breaker
from ._window import Window

__all__ = ["MAX_IMPLICIT_ROUTES", "RouteHealth", "RouteHealthTable"]

#: at most this many implicit routes (method + first path segment) per cluster
MAX_IMPLICIT_ROUTES = 1024
#: distinct failing endpoints that prove a route fails everywhere (for larger clusters)
_SPREAD = 8
#: endpoints whose last outcome a route remembers
_MEMORY = 64

#: the chance of a streak by coincidence that :func:`streak_needed` accepts
_COINCIDENCE = 1e-9
#: the longest streak ever required (a route failing nearly always)
_MAX_STREAK = 200

RouteTransition = Callable[[str, str, str], None]  # (route key, old state, new state)


def streak_needed(failures: int, failure_rate: float | None) -> int:
    """Consecutive failed attempts that prove a route fails everywhere, given its usual
    `failure_rate` (`None`: not known yet)."""
    if failure_rate is None or failure_rate <= 0.0:
        return failures
    if failure_rate >= 1.0:
        return max(failures, _MAX_STREAK)
    needed = math.ceil(math.log(_COINCIDENCE) / math.log(failure_rate))
    return max(failures, min(needed, _MAX_STREAK))


class RouteHealth:
    """The breaker and the per-endpoint last outcomes of one route of one cluster."""

    __slots__ = ("_failing", "_last", "_streak", "breaker", "failures", "key", "needed",
                 "window")

    def __init__(self, key: str | int, config: Breaker, now: float,
                 on_transition: RouteTransition | None = None) -> None:
        self.key = key
        #: consecutive failed attempts that open the route (with the spread rule)
        self.failures = config.failures
        # pybreaker opens on the one failure this records: the rule above decides when
        self.breaker = EndpointBreaker(
            config if config is BREAKER_OFF else Breaker(
                failures=1, reset_timeout=config.reset_timeout,
                max_reset_timeout=config.max_reset_timeout),
            str(key), on_transition, now)
        self._streak = 0
        #: the streak that opens the route, fixed when the streak begins
        self.needed = self.failures
        self._failing: set[str] = set()
        self._last: dict[str, bool] = {}
        #: golden signals of the route's logical requests
        self.window = Window(now)

    def admit(self, now: float) -> int:
        """`ADMITTED` while closed; the single `TRIAL` when due; else `REFUSED`."""
        return self.breaker.admit(now)

    def next_trial(self, now: float) -> float:
        """Seconds until the route's next trial request is due (0 when due)."""
        return self.breaker.next_trial(now)

    def succeeded(self, address: str, now: float, admission: int = ADMITTED) -> None:
        """An attempt on this route got a good answer from `address`."""
        last = self._last
        if last.get(address) is not True:
            self._remember(address, True)
        if self._streak:
            self._streak = 0
            self._failing.clear()
        if admission != ADMITTED or not self.breaker.closed:
            self.breaker.record(True, now, admission)

    def failed(self, address: str, now: float, available: int,
               usable: Callable[[str], bool], admission: int = ADMITTED) -> None:
        """An attempt on this route failed at `address`; `available` endpoints of the
        cluster could have been tried, `usable(address)` says whether one still can."""
        self._remember(address, False)
        if not self._streak:  # judged against how the route did before this streak
            self.needed = streak_needed(self.failures, self.window.failure_rate(now))
        self._streak += 1
        if len(self._failing) < _SPREAD:
            self._failing.add(address)
        breaker = self.breaker
        if admission != ADMITTED:
            breaker.record(False, now, admission)  # a failed trial reopens the route
            return
        if breaker.closed and self._streak >= self.needed:
            # failed everywhere: every endpoint that can still be tried (up to 8) failed
            # in this streak; an endpoint ejected meanwhile proves nothing about the rest
            spread = sum(1 for a in self._failing if usable(a))
            if spread >= min(max(available, 1), _SPREAD):
                breaker.record(False, now, admission)

    def release(self, admission: int) -> None:
        """A call admitted on the route ended with no outcome to judge it by."""
        self.breaker.release(admission)

    def peers_succeed(self, address: str) -> bool:
        """Whether another endpoint's last answer on this route was good."""
        return any(ok for other, ok in self._last.items() if ok and other != address)

    def forget(self, address: str) -> None:
        """`address` left discovery."""
        self._last.pop(address, None)
        self._failing.discard(address)

    def _remember(self, address: str, ok: bool) -> None:
        last = self._last
        last.pop(address, None)
        last[address] = ok
        if len(last) > _MEMORY:
            del last[next(iter(last))]

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready: the route's breaker state and its failure streak."""
        state = self.breaker.state(now)
        entry: dict[str, Any] = {"breaker": state, "consecutive_failures": self._streak}
        if state != CLOSED:
            entry["next_trial_s"] = round(self.next_trial(now), 3)
        entry["window"] = self.window.snapshot(now)
        return entry


class RouteHealthTable:
    """The routes of one cluster: configured ones kept, implicit ones in an LRU."""

    __slots__ = ("_config", "_configured", "_implicit", "_lock", "_on_transition")

    def __init__(self, config: Breaker,
                 on_transition: RouteTransition | None = None) -> None:
        self._config = config
        self._on_transition = on_transition
        self._configured: dict[tuple[str, str | int], RouteHealth] = {}
        self._implicit: OrderedDict[str, RouteHealth] = OrderedDict()
        self._lock = threading.Lock()

    def configured(self, key: str | int, host: str, now: float) -> RouteHealth:
        """The health of a configured route of virtual host `host`."""
        full = (host, key)
        health = self._configured.get(full)
        if health is None:
            with self._lock:
                health = self._configured.get(full)
                if health is None:
                    health = RouteHealth(key, self._config, now, self._on_transition)
                    self._configured[full] = health
        return health

    def implicit(self, key: str, now: float) -> RouteHealth:
        """The health of an implicit route (method and first path segment)."""
        implicit = self._implicit
        health = implicit.get(key)
        if health is not None:
            if health.breaker.closed and not health._streak:
                return health  # the common case: no bookkeeping needed
            with self._lock:
                if key in implicit:
                    implicit.move_to_end(key)
            return health
        with self._lock:
            health = implicit.get(key)
            if health is None:
                health = RouteHealth(key, self._config, now, self._on_transition)
                implicit[key] = health
                while len(implicit) > MAX_IMPLICIT_ROUTES:
                    # evict the least recently used healthy route; an open one is kept
                    # (it is what makes requests fail fast), up to twice the bound
                    victim = next((k for k, h in implicit.items() if h.breaker.closed), None)
                    if victim is None or len(implicit) > 2 * MAX_IMPLICIT_ROUTES:
                        implicit.popitem(last=False)
                    else:
                        del implicit[victim]
        return health

    def forget(self, address: str) -> None:
        """An endpoint left discovery: no route remembers it."""
        with self._lock:
            healths = [*self._configured.values(), *self._implicit.values()]
        for health in healths:
            health.forget(address)

    def __len__(self) -> int:
        return len(self._configured) + len(self._implicit)

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready: each route's breaker and window; implicit routes only when not
        healthy or with requests in the last 60 s."""
        with self._lock:
            configured = list(self._configured.items())
            implicit = list(self._implicit.items())
        out: dict[str, Any] = {}
        for (host, key), health in configured:
            out[f"{host}#{key}"] = health.snapshot(now)
        for key, health in implicit:
            if not health.breaker.closed or health._streak or health.window.requests(now):
                out[key] = health.snapshot(now)
        return out
