"""Balancers: latency awareness, spreading, weights, zones; simulated with a fake clock."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest

from meshlib._balancer import FAILURE_PENALTY, LeastRequest, P2CEwma, make_balancer
from meshlib._breaker import EndpointBreaker
from meshlib._discovery._static import StaticDiscovery
from meshlib._endpoint import Endpoint, EndpointState
from meshlib._policy import Breaker, Policy
from meshlib._service import Service, ServiceRuntime


def _states(n: int, weights: list[float] | None = None) -> list[EndpointState]:
    weights = weights or [1.0] * n
    return [
        EndpointState(Endpoint("127.0.0.1", 9000 + i, weights[i]),
                      EndpointBreaker(Breaker(), f"e{i}"))
        for i in range(n)
    ]


def simulate(balancer_name: str, latencies: list[float], requests: int = 4000,
             concurrency: int = 8, seed: int = 7,
             weights: list[float] | None = None) -> Counter[int]:
    """Closed-loop load: ``concurrency`` workers, each sends the next request when one ends."""
    states = _states(len(latencies), weights)
    balancer = make_balancer(balancer_name, random.Random(seed))
    jitter = random.Random(seed + 1)
    now = 0.0
    events: list[tuple[float, int, int]] = []
    picks: Counter[int] = Counter()
    sent = 0
    seq = 0
    for _ in range(concurrency):
        index = states.index(balancer.pick(states, now))
        states[index].begin()
        picks[index] += 1
        sent += 1
        latency = latencies[index] * jitter.uniform(0.8, 1.2)
        heapq.heappush(events, (now + latency, seq, index))
        seq += 1
    while events:
        done_at, _, index = heapq.heappop(events)
        started = done_at - latencies[index]
        now = done_at
        states[index].observe(now - started, now, failed=False, penalty=FAILURE_PENALTY)
        states[index].finish()
        if sent < requests:
            nxt = states.index(balancer.pick(states, now))
            states[nxt].begin()
            picks[nxt] += 1
            sent += 1
            latency = latencies[nxt] * jitter.uniform(0.8, 1.2)
            heapq.heappush(events, (now + latency, seq, nxt))
            seq += 1
    return picks


def test_p2c_ewma_starves_a_ten_times_slower_endpoint() -> None:
    """p2c-ewma sends an endpoint 10x slower than the rest under 5% of the traffic."""
    picks = simulate("p2c-ewma", [0.010, 0.010, 0.010, 0.100])
    share = picks[3] / sum(picks.values())
    assert share < 0.05, picks


def test_round_robin_gives_the_slow_endpoint_its_full_share() -> None:
    """round-robin ignores latency: the slow endpoint gets a quarter of four."""
    picks = simulate("round-robin", [0.010, 0.010, 0.010, 0.100])
    assert picks[3] / sum(picks.values()) == pytest.approx(0.25, abs=0.01)


def test_least_request_avoids_the_slow_endpoint_under_concurrency() -> None:
    """least-request sends less to an endpoint that holds requests longer."""
    picks = simulate("least-request", [0.010, 0.010, 0.010, 0.100], concurrency=16)
    assert picks[3] / sum(picks.values()) < 0.15, picks


def test_random_spreads_evenly() -> None:
    """random gives each of four equal endpoints about a quarter."""
    picks = simulate("random", [0.01] * 4)
    for i in range(4):
        assert picks[i] / sum(picks.values()) == pytest.approx(0.25, abs=0.04)


@pytest.mark.parametrize("name", ["p2c-ewma", "least-request", "round-robin", "random"])
def test_weights_give_proportional_traffic(name: str) -> None:
    """Under equal latency a weight-3 endpoint gets about three times a weight-1 one."""
    picks = simulate(name, [0.01, 0.01], weights=[1.0, 3.0], requests=8000)
    ratio = picks[1] / picks[0]
    # p2c draws its two candidates by weight and divides cost by weight, so the split
    # is near 1:3 but not exact; the others are exactly (round-robin) or statistically 1:3.
    assert 2.0 < ratio < 4.5, picks


def test_p2c_ewma_unsampled_endpoint_costs_the_cheapest() -> None:
    """A new endpoint with no samples is priced like the cheapest sampled one, not zero."""
    states = _states(3)
    states[0].observe(0.010, 1.0, failed=False, penalty=FAILURE_PENALTY)
    states[1].observe(0.030, 1.0, failed=False, penalty=FAILURE_PENALTY)
    balancer = P2CEwma(random.Random(1))
    default = balancer.default_rtt(states, 1.0)
    assert default == pytest.approx(0.010)
    assert balancer.cost(states[2], 1.0, default) == pytest.approx(0.010)


def test_peak_ewma_jumps_up_and_decays_down() -> None:
    """A slow sample raises the estimate at once; it decays towards zero when idle."""
    state = _states(1)[0]
    state.observe(0.010, 0.0, failed=False, penalty=FAILURE_PENALTY)
    state.observe(0.200, 0.001, failed=False, penalty=FAILURE_PENALTY)
    assert state.ewma(0.001) == pytest.approx(0.200)
    assert state.ewma(10.001) == pytest.approx(0.200 * 0.3679, rel=0.01)


def test_a_busy_endpoint_recovers_from_one_slow_answer_within_a_few_dozen_answers() -> None:
    """One slow first answer (a cold connection, a pause) does not price a fast, busy
    endpoint as slow for seconds: answers a millisecond apart each move the estimate
    at least a quarter of the way to themselves, while a genuinely slow endpoint stays slow."""
    fast, slow = _states(2)
    fast.observe(0.050, 1.0, failed=False, penalty=FAILURE_PENALTY)  # the outlier
    slow.observe(0.050, 1.0, failed=False, penalty=FAILURE_PENALTY)
    now = 1.0
    for _ in range(40):  # 40 ms of traffic
        now += 0.001
        fast.observe(0.005, now, failed=False, penalty=FAILURE_PENALTY)
        slow.observe(0.050, now, failed=False, penalty=FAILURE_PENALTY)
    assert fast.ewma(now) < 0.008  # time-only weights would leave it near 0.050
    assert fast.ok_estimate(now) < 0.008
    assert slow.ewma(now) == pytest.approx(0.050, rel=0.01)
    fast.observe(0.080, now + 0.001, failed=False, penalty=FAILURE_PENALTY)
    assert fast.ewma(now + 0.001) == pytest.approx(0.080)  # a peak still counts at once


def test_failures_raise_cost_so_a_fast_failing_endpoint_is_avoided() -> None:
    """An endpoint answering 503 in 1 ms does not become the favourite (no black hole)."""
    states = _states(2)
    now = 0.0
    for _ in range(20):
        now += 0.01
        states[0].observe(0.001, now, failed=True, penalty=FAILURE_PENALTY)
        states[1].observe(0.020, now, failed=False, penalty=FAILURE_PENALTY)
    balancer = P2CEwma(random.Random(3))
    picks = Counter(states.index(balancer.pick(states, now)) for _ in range(200))
    assert picks[1] == 200


def test_least_request_prefers_fewer_in_flight() -> None:
    """least-request picks the endpoint with fewer outstanding requests."""
    states = _states(2)
    for _ in range(5):
        states[0].begin()
    balancer = LeastRequest(random.Random(2))
    assert all(balancer.pick(states, 0.0) is states[1] for _ in range(50))


def _runtime(endpoints: list[Endpoint], zone: str | None = None) -> ServiceRuntime:
    url = "static://" + ",".join(e.address for e in endpoints)
    runtime = ServiceRuntime("svc", Service(url), StaticDiscovery(url), Policy(), zone=zone,
                             clock=lambda: 0.0)
    runtime.apply(tuple(endpoints), 0.0)
    return runtime


def test_zone_aware_routing_prefers_the_local_zone_while_healthy() -> None:
    """With MESHLIB_ZONE set, endpoints in the same zone get all traffic while available."""
    endpoints = [Endpoint("127.0.0.1", 1, zone="a"), Endpoint("127.0.0.1", 2, zone="b"),
                 Endpoint("127.0.0.1", 3, zone="b")]
    runtime = _runtime(endpoints, zone="a")
    balancer = runtime.balancer("p2c-ewma")
    assert {runtime.pick(balancer, set(), 0.0)[0].address for _ in range(50)} == {"127.0.0.1:1"}
    local = runtime.states["127.0.0.1:1"]
    for _ in range(5):
        local.breaker.record(False, 0.0)
    picked = {runtime.pick(balancer, set(), 0.0)[0].address for _ in range(50)}
    assert picked == {"127.0.0.1:2", "127.0.0.1:3"}


def test_lower_srv_priority_group_is_used_first() -> None:
    """Endpoints of a higher priority number get traffic only when the lower group is down."""
    endpoints = [Endpoint("127.0.0.1", 1, priority=10), Endpoint("127.0.0.1", 2, priority=20)]
    runtime = _runtime(endpoints)
    balancer = runtime.balancer("round-robin")
    assert {runtime.pick(balancer, set(), 0.0)[0].address for _ in range(20)} == {"127.0.0.1:1"}
    for _ in range(5):
        runtime.states["127.0.0.1:1"].breaker.record(False, 0.0)
    assert runtime.pick(balancer, set(), 0.0)[0].address == "127.0.0.1:2"


def test_p2c_ewma_on_a_small_set_shares_equal_endpoints_and_skips_the_slow_one() -> None:
    """Three endpoints, one 10x slower, sequential load: equals share, the slow one starves."""
    picks = simulate("p2c-ewma", [0.005, 0.005, 0.050], concurrency=1, requests=3000)
    total = sum(picks.values())
    assert picks[2] / total < 0.02, picks
    assert picks[0] / total > 0.3 and picks[1] / total > 0.3, picks


def test_p2c_ewma_second_best_is_not_fed_by_a_failing_third() -> None:
    """A slow endpoint is not chosen just because it was paired with a failing one."""
    states = _states(3)
    now = 1.0
    states[0].observe(0.001, now, failed=False, penalty=FAILURE_PENALTY)
    states[1].observe(0.010, now, failed=False, penalty=FAILURE_PENALTY)
    states[2].observe(0.001, now, failed=True, penalty=FAILURE_PENALTY)
    balancer = P2CEwma(random.Random(5))
    picks = Counter(states.index(balancer.pick(states, now)) for _ in range(1000))
    # only exploring picks: 1% spread over the three, and at this one instant at most
    # one of them may go to the merely slower endpoint
    assert picks[1] <= 1, picks
    assert 0 < picks[2] < 20, picks  # the failing one is explored: its penalty must shed
    assert picks[0] > 970, picks


def test_exploring_picks_reach_a_merely_slower_endpoint_at_most_once_a_second() -> None:
    """At 1,000 picks a second, a slower endpoint without failures is explored at most
    once a second (not 1% of a third of the picks), while a penalised one is explored
    at the full rate, since only successes shed its penalty."""
    states = _states(3)
    now = 1.0
    states[0].observe(0.001, now, failed=False, penalty=FAILURE_PENALTY)
    states[1].observe(0.050, now, failed=False, penalty=FAILURE_PENALTY)
    states[2].observe(0.001, now, failed=True, penalty=FAILURE_PENALTY)
    balancer = P2CEwma(random.Random(7))
    picks: Counter[int] = Counter()
    for _ in range(5000):  # 5 s
        now += 0.001
        picks[states.index(balancer.pick(states, now))] += 1
    assert 1 <= picks[1] <= 6, picks  # 1% of a third would be about 17
    assert picks[2] >= 5, picks


def test_p2c_ewma_explores_so_one_unlucky_sample_does_not_exile_an_endpoint() -> None:
    """A fast endpoint whose first sample was an outlier is probed, then preferred again."""
    states = _states(2)
    now = 1.0
    states[0].observe(0.200, now, failed=False, penalty=FAILURE_PENALTY)  # a cold-start outlier
    states[1].observe(0.060, now, failed=False, penalty=FAILURE_PENALTY)
    balancer = P2CEwma(random.Random(11))
    probes = 0
    for _ in range(2000):  # 30 s of traffic
        now += 0.015
        chosen = balancer.pick(states, now)
        probes += chosen is states[0]
        chosen.observe(0.002 if chosen is states[0] else 0.060, now, failed=False,
                       penalty=FAILURE_PENALTY)
    picks = Counter(states.index(balancer.pick(states, now)) for _ in range(200))
    assert probes > 0
    assert picks[0] > 180, picks  # the outlier decayed (10 s time constant): preferred again


def test_retired_endpoint_breakers_do_not_disturb_health_tracking() -> None:
    """An open endpoint that leaves discovery and later closes leaves no stale health state:
    with another endpoint open, picks still avoid it every time."""
    a, b, c = (Endpoint("127.0.0.1", port) for port in (1, 2, 3))
    runtime = _runtime([a, b, c])
    state_a = runtime.states[a.address]
    for _ in range(5):
        state_a.breaker.record(False, 0.0)
    runtime.apply((b, c), 0.0)  # a leaves while open
    assert state_a.breaker.admit(100.0) == 2  # its trial (a request still draining)
    state_a.breaker.record(True, 100.0, 2)  # a closes: must not count for the service
    for _ in range(5):
        runtime.states[b.address].breaker.record(False, 100.0)  # b opens
    balancer = runtime.balancer("random")
    picked = {runtime.pick(balancer, set(), 100.0)[0].address for _ in range(400)}
    assert picked == {c.address}


def test_p2c_ewma_tries_a_new_endpoint_although_another_is_failing() -> None:
    """A failing endpoint's penalty does not make an unsampled newcomer look bad."""
    states = _states(3)
    states[1].observe(0.010, 1.0, failed=False, penalty=FAILURE_PENALTY)
    states[2].observe(0.001, 1.0, failed=True, penalty=FAILURE_PENALTY)
    balancer = P2CEwma(random.Random(4))
    picks = Counter(states.index(balancer.pick(states, 1.0)) for _ in range(200))
    assert picks[0] > 50, picks  # the newcomer shares with the healthy one


def test_large_set_keeps_its_closed_endpoints_across_breaker_transitions() -> None:
    """On 1,000 endpoints with one breaker open, picks never return it (the kept set of
    closed endpoints is rebuilt on the transition), its trial is taken as soon as it is
    due, and once closed it is picked again."""
    endpoints = [Endpoint("127.0.0.1", 10000 + i) for i in range(1000)]
    url = "static://" + ",".join(e.address for e in endpoints)
    runtime = ServiceRuntime("svc", Service(url), StaticDiscovery(url),
                             Policy(breaker=Breaker(failures=1, reset_timeout=5.0)),
                             clock=lambda: 0.0)
    runtime.apply(tuple(endpoints), 0.0)
    bad = runtime.states[endpoints[7].address]
    bad.breaker.record(False, 0.0)
    balancer = runtime.balancer("random")
    assert all(runtime.pick(balancer, set(), 1.0)[0] is not bad for _ in range(3000))
    state, admission = runtime.pick(balancer, set(), 5.0)
    assert state is bad and admission == 2  # TRIAL
    bad.breaker.record(True, 5.0, admission)
    assert any(runtime.pick(balancer, set(), 6.0)[0] is bad for _ in range(5000))


def test_p2c_ewma_on_a_large_set_prices_a_newcomer_like_the_cheapest() -> None:
    """The cheapest-sampled default is still applied on a large set (computed lazily)."""
    states = _states(50)
    for i, state in enumerate(states[1:], start=1):
        state.observe(0.010 + i * 0.001, 1.0, failed=False, penalty=FAILURE_PENALTY)
    candidates = tuple(states)
    balancer = P2CEwma(random.Random(9))
    picks = Counter(balancer.pick(candidates, 1.0) is states[0] for _ in range(4000))
    # states[0] is unsampled, priced like the cheapest (11 ms): it wins every pair it is in
    assert picks[True] > 4000 * 2 / 50 * 0.8, picks
