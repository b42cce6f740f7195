"""Load balancers: pick one endpoint among candidates. Logic only, no I/O.

The service runtime filters candidates (priority group, zone, open breakers,
endpoints already tried) and hands the rest to a balancer's `pick`, which
never blocks. Weights come from discovery (SRV weight, registry weight).

- `p2c-ewma`: power of two choices over `peak_ewma * (inflight + 1) / weight`
  (Finagle's and Linkerd's cost). An endpoint with no latency sample yet costs
  as much as the cheapest sampled one, so it is tried soon (a failing
  endpoint's penalty must not make every newcomer look bad), while the
  in-flight factor keeps a burst from stampeding onto it; a failure counts
  as a slow sample (see `FAILURE_PENALTY`) so an instance failing fast does
  not look like the fastest. On a small set
  (`SMALL_SET` candidates or fewer) two random choices are a poor sample:
  with three endpoints, one slow and one failing, p2c would still send the
  slow one a third of the traffic (whenever the pair excludes the best). So
  there every candidate is priced (latency times load, the load being
  in-flight requests per unit of weight), and the choice is made at random, by
  weight, among those within `NEAR_BEST` (plus `NEAR_SLACK`) of the cheapest: equal endpoints
  share the load, a clearly worse one gets none until its estimate decays
  or an exploring pick (`EXPLORE`, 1%) measures it again. An exploring pick
  that lands on an endpoint with no failure penalty is sent at most once per
  `EXPLORE_INTERVAL` (1 s): a slower endpoint's estimate decays when idle,
  while a penalty sheds only through successes, so at hundreds of requests
  per second exploration costs a slow instance's latency once a second, not
  a few times per hundred requests.
- `least-request`: power of two choices over `(inflight + 1) / weight`
  (Envoy's `LEAST_REQUEST`).
- `round-robin`: smooth weighted round-robin (nginx's algorithm).
- `random`: weighted random.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from ._endpoint import EndpointState

__all__ = [
    "FAILURE_PENALTY",
    "Balancer",
    "LeastRequest",
    "P2CEwma",
    "RandomBalancer",
    "RoundRobin",
    "make_balancer",
]

#: a failed attempt is recorded as a latency sample of at least this many seconds
FAILURE_PENALTY = 1.0
#: cost basis when no endpoint has a latency sample yet
DEFAULT_RTT = 0.001
#: p2c-ewma prices every candidate when there are at most this many
SMALL_SET = 5
#: on a small set, candidates costing up to this factor of the cheapest ...
NEAR_BEST = 1.5
#: ... plus this many seconds are near-equal (sub-millisecond differences are noise)
NEAR_SLACK = 0.005
#: on a small set, this share of picks goes to a random candidate, so that an endpoint
#: judged by one unlucky sample (a cold connection, a pause) is measured again soon
EXPLORE = 0.01
#: ... but an exploring pick that lands on an endpoint with no failure penalty is sent
#: at most once per this many seconds per balancer: such an endpoint is only slower, and
#: its estimate decays when idle anyway; a penalty sheds only through successes
EXPLORE_INTERVAL = 1.0
#: a large set's "cheapest sampled latency" scan is reused this long (seconds)
DEFAULT_REUSE = 0.1


class Balancer(Protocol):
    """Chooses one of a non-empty list of candidate endpoints."""

    name: str

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        """Return one of `candidates` (never empty); must not block."""
        ...


def _uniform_weights(candidates: Sequence[EndpointState]) -> bool:
    first = candidates[0].endpoint.weight
    return all(c.endpoint.weight == first for c in candidates)


class _Uniform:
    """Whether a candidate tuple has equal weights, remembered for the last tuple seen.

    The service hands the same tuple object (its group, or its healthy part) to
    every pick until discovery or a breaker transition replaces it, so on a large
    set the O(n) scan runs once per change instead of once per request. Only
    tuples are remembered (immutable; the reference kept prevents id reuse); the
    pair is one attribute, so threads never see a key with another key's value.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[Sequence[EndpointState] | None, bool] = (None, True)

    def __call__(self, candidates: Sequence[EndpointState]) -> bool:
        last = self._last
        if last[0] is candidates:
            return last[1]
        value = _uniform_weights(candidates)
        if isinstance(candidates, tuple):
            self._last = (candidates, value)
        return value


def _two(candidates: Sequence[EndpointState], rng: random.Random,
         uniform: bool) -> tuple[EndpointState, EndpointState]:
    """Two distinct candidates, drawn with probability proportional to weight."""
    if uniform:
        # two distinct indices from two draws: random.sample costs ~3 us, more than the
        # rest of a pick at 1,000 endpoints; int(random() * n) is uniform to 2**-53
        n = len(candidates)
        draw = rng.random
        a = int(draw() * n)
        b = int(draw() * (n - 1))
        if b >= a:
            b += 1
        return candidates[a], candidates[b]
    weights = [c.endpoint.weight for c in candidates]
    first = rng.choices(range(len(candidates)), weights)[0]
    rest = [i for i in range(len(candidates)) if i != first]
    second = rng.choices(rest, [weights[i] for i in rest])[0]
    return candidates[first], candidates[second]


class _PowerOfTwo:
    name = "p2c"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.uniform = _Uniform()

    def cost(self, state: EndpointState, now: float, default_rtt: float) -> float:
        raise NotImplementedError

    def default_rtt(self, candidates: Sequence[EndpointState], now: float) -> float:
        return DEFAULT_RTT

    def _default_for(self, a: EndpointState, b: EndpointState,
                     candidates: Sequence[EndpointState], now: float) -> float:
        return DEFAULT_RTT

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        if len(candidates) == 1:
            return candidates[0]
        a, b = _two(candidates, self.rng, self.uniform(candidates))
        default = self._default_for(a, b, candidates, now)
        cost_a, cost_b = self.cost(a, now, default), self.cost(b, now, default)
        if cost_a == cost_b:
            return a if self.rng.random() < 0.5 else b
        return a if cost_a < cost_b else b


class P2CEwma(_PowerOfTwo):
    """Power of two choices over peak-EWMA latency times outstanding requests."""

    name = "p2c-ewma"

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        #: (candidates, when, value) of the last full default_rtt scan
        self._default: tuple[Sequence[EndpointState] | None, float, float] = (None, 0.0, 0.0)
        #: when an exploring pick last went to an endpoint without a failure penalty
        self._explored = -EXPLORE_INTERVAL

    def default_rtt(self, candidates: Sequence[EndpointState], now: float) -> float:
        """The cheapest sampled latency among `candidates` (an unsampled endpoint's cost)."""
        best = None
        for state in candidates:
            value = state.ewma(now)
            if value is not None and (best is None or value < best):
                best = value
        return DEFAULT_RTT if best is None else best

    def _default_for(self, a: EndpointState, b: EndpointState,
                     candidates: Sequence[EndpointState], now: float) -> float:
        # only an unsampled endpoint needs the O(n) scan; on a large set it is
        # reused for DEFAULT_REUSE seconds for the same candidate tuple
        if a.sampled and b.sampled:
            return DEFAULT_RTT  # unused
        last = self._default
        if last[0] is candidates and 0.0 <= now - last[1] < DEFAULT_REUSE:
            return last[2]
        value = self.default_rtt(candidates, now)
        if isinstance(candidates, tuple):
            self._default = (candidates, now, value)
        return value

    def cost(self, state: EndpointState, now: float, default_rtt: float) -> float:
        rtt = state.ewma(now)
        if rtt is None:
            rtt = default_rtt
        return rtt * (state.inflight + 1) / state.endpoint.weight

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        if len(candidates) > SMALL_SET or len(candidates) == 1:
            return super().pick(candidates, now)
        if self.rng.random() < EXPLORE:
            chosen = candidates[self.rng.randrange(len(candidates))]
            if chosen.penalised:
                return chosen
            if now - self._explored >= EXPLORE_INTERVAL or now < self._explored:
                self._explored = now
                return chosen
        rtts = [state.ewma(now) for state in candidates]
        sampled = [rtt for rtt in rtts if rtt is not None]
        default = min(sampled) if sampled else DEFAULT_RTT
        # weight sets the share among near-equal endpoints (below), so here it only
        # scales the load: three requests in flight on a weight-3 endpoint weigh as one
        costs = [
            (default if rtt is None else rtt) * (1.0 + state.inflight / state.endpoint.weight)
            for state, rtt in zip(candidates, rtts, strict=True)
        ]
        limit = min(costs) * NEAR_BEST + NEAR_SLACK
        near = [state for state, cost in zip(candidates, costs, strict=True) if cost <= limit]
        if len(near) == 1:
            return near[0]
        if _uniform_weights(near):
            return near[self.rng.randrange(len(near))]
        return self.rng.choices(near, [state.endpoint.weight for state in near])[0]


class LeastRequest(_PowerOfTwo):
    """Power of two choices over outstanding requests per unit of weight."""

    name = "least-request"

    def cost(self, state: EndpointState, now: float, default_rtt: float) -> float:
        return (state.inflight + 1) / state.endpoint.weight


class RoundRobin:
    """Smooth weighted round-robin; plain rotation when weights are equal."""

    name = "round-robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._counter = (rng or random.Random()).randrange(1 << 16)
        self._lock = threading.Lock()
        self.uniform = _Uniform()

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        uniform = self.uniform(candidates)
        with self._lock:
            if uniform:
                self._counter += 1
                return candidates[self._counter % len(candidates)]
            total = 0.0
            best = candidates[0]
            for state in candidates:
                state.rr_current += state.endpoint.weight
                total += state.endpoint.weight
                if state.rr_current > best.rr_current:
                    best = state
            best.rr_current -= total
            return best


class RandomBalancer:
    """Weighted random choice."""

    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.uniform = _Uniform()

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        if self.uniform(candidates):
            return candidates[self.rng.randrange(len(candidates))]
        return self.rng.choices(candidates, [c.endpoint.weight for c in candidates])[0]


_FACTORIES: dict[str, Callable[[random.Random | None], Balancer]] = {
    "p2c-ewma": P2CEwma,
    "least-request": LeastRequest,
    "round-robin": RoundRobin,
    "random": RandomBalancer,
}


def make_balancer(name: str, rng: random.Random | None = None) -> Balancer:
    """A new balancer by policy name: p2c-ewma, least-request, round-robin or random."""
    return _FACTORIES[name](rng)
