"""Fail-safe outlier handling (issue 8), against real loopback servers: a route failing
everywhere does not take the service out, a total outage still fails fast, a healed
endpoint gets its share back, a caller's short deadline never ejects an endpoint, and
slow start ramps a recovered endpoint up."""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import meshlib
from conftest import BackendFactory
from meshlib import Backoff, Breaker, Policy, SlowStart
from meshlib._balancer import FAILURE_PENALTY
from meshlib._discovery._static import StaticDiscovery
from meshlib._endpoint import Endpoint, EndpointState
from meshlib._service import Service, ServiceRuntime
from meshlib.asgi import MeshMiddleware
from test_asgi import serve_asgi

FAST = Policy(backoff=Backoff(base=0.001, max=0.005))


def _breakers(client: meshlib.MeshClient | meshlib.AsyncMeshClient,
              service: str = "svc") -> dict[str, str]:
    snap = client.snapshot()["services"][service]
    return {e["endpoint"]: e["breaker"] for e in snap["endpoints"]}


def _attempts(client: meshlib.MeshClient, service: str = "svc") -> int:
    return sum(e["requests"] for e in client.snapshot()["services"][service]["endpoints"])


# -- 1. errors confined to one route ----------------------------------------------------

def _route(client: meshlib.MeshClient | meshlib.AsyncMeshClient, route: str,
           service: str = "svc") -> str:
    routes = client.snapshot()["services"][service]["routes"]
    return str(routes.get(route, {"breaker": "closed"})["breaker"])


@pytest.mark.parametrize("status", [503, 500])
def test_route_failing_on_every_instance_does_not_fail_other_routes(
        backends: BackendFactory, status: int) -> None:
    """A route answering 5xx on every instance opens its own breaker (it then fails fast,
    nothing sent) and ejects no endpoint; 200 requests to a healthy route all succeed."""
    b = backends(3)
    policy = FAST.replace(retries=2)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        # five consecutive failures spread over all three endpoints open the route
        for _ in range(15):
            assert client.get(f"http://svc/broken?status={status}").status_code == status
            if _route(client, "GET /broken") == "open":
                break
        assert _route(client, "GET /broken") == "open"
        sent = b.count
        with pytest.raises(meshlib.CircuitOpenError, match="GET /broken"):
            client.get(f"http://svc/broken?status={status}")
        assert b.count == sent  # failed fast: nothing sent
        assert set(_breakers(client).values()) == {"closed"}
        codes = Counter(client.get("http://svc/healthy").status_code for _ in range(200))
    assert codes == {200: 200}


def test_route_breaker_opens_whatever_the_ejection_cap(backends: BackendFactory) -> None:
    """At any `max_ejection_percent`, endpoints failing alike are not ejected: the
    route's breaker is what fails fast."""
    b = backends(2, status=503)
    policy = FAST.replace(retries=1, breaker=Breaker(failures=2, max_ejection_percent=100))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(2):
            with contextlib.suppress(meshlib.CircuitOpenError):
                client.get("http://svc/")
        assert set(_breakers(client).values()) == {"closed"}
        assert _route(client, "GET /") == "open"
        with pytest.raises(meshlib.CircuitOpenError):
            client.get("http://svc/")


def test_single_endpoint_is_not_ejected_for_its_answers(backends: BackendFactory) -> None:
    """One endpoint answering 503: the endpoint itself is never ejected (it has no peer
    doing better); its route fails fast, and a trial after `reset_timeout` closes the
    route once the endpoint heals."""
    b = backends(1, status=503)
    policy = FAST.replace(retries=0, breaker=Breaker(failures=2, reset_timeout=0.2))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(2):
            assert client.get("http://svc/").status_code == 503
        with pytest.raises(meshlib.CircuitOpenError):
            client.get("http://svc/")
        assert _breakers(client) == {b.addresses[0]: "closed"}
        b[0].status = 200
        deadline = time.monotonic() + 2 * 0.2 + 0.5
        while time.monotonic() < deadline:
            try:
                assert client.get("http://svc/").status_code == 200
                break
            except meshlib.CircuitOpenError:
                time.sleep(0.02)
        assert _route(client, "GET /") == "closed"
        assert client.get("http://svc/").status_code == 200


# -- 2. a total outage still fails fast --------------------------------------------------

@pytest.mark.parametrize("fault", ["refused", "reset"])
def test_total_outage_fails_fast_with_next_to_no_load(backends: BackendFactory,
                                                      fault: str) -> None:
    """Every endpoint refuses (or resets) connections: after learning, requests raise
    CircuitOpenError with nothing sent; 100 requests cost at most 1.25 attempts each
    while learning and far fewer overall."""
    b = backends(3)
    for server in b:
        if fault == "refused":
            server.refuse()
        else:
            server.mode = "reset"
    requests = 100
    errors: Counter[str] = Counter()
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        for _ in range(requests):
            try:
                client.get("http://svc/")
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
        attempts = _attempts(client)
        if fault == "refused":  # refused connections eject the endpoints themselves
            assert set(_breakers(client).values()) == {"open"}
        else:  # a reset after the request was sent is the route's failure, not a refusal
            assert _route(client, "GET /") == "open"
        before = b.count
        with pytest.raises(meshlib.CircuitOpenError):
            client.get("http://svc/")
        assert b.count == before
    assert sum(errors.values()) == requests
    # 3 endpoints x 5 failures to learn; the rest fail fast without an attempt
    assert attempts <= 15 + 3, (attempts, errors)
    assert errors["CircuitOpenError"] >= requests - 10, errors
    if fault == "reset":
        assert b.count <= attempts


# -- 3. a healed endpoint gets its share back --------------------------------------------

def test_healed_endpoint_gets_its_share_back_within_two_reset_timeouts(
        backends: BackendFactory) -> None:
    """An endpoint answering 503 is ejected; it heals; by 2 x reset_timeout its share of
    sequential traffic is near fair (>= 15% of 3), not starved by its failure penalty."""
    # 10 ms answers: a busy machine's scheduling noise (a few ms) stays small next to
    # the latency, so p2c-ewma sees the three as equal once the penalty is gone
    b = backends(3, status=[503, 200, 200], delay_ms=10)
    policy = FAST.replace(breaker=Breaker(failures=2, reset_timeout=1.0))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        with meshlib.policy(balancer="round-robin"):  # p2c-ewma avoids it after one 503
            for _ in range(200):
                client.get("http://svc/")
                if _breakers(client)[b.addresses[0]] == "open":
                    break
        assert _breakers(client)[b.addresses[0]] == "open"
        b[0].status = 200
        healed = time.monotonic()
        while time.monotonic() - healed < 2.0:
            assert client.get("http://svc/").status_code == 200
            time.sleep(0.002)
        assert _breakers(client)[b.addresses[0]] == "closed"
        b.reset_counts()
        for _ in range(200):
            assert client.get("http://svc/").status_code == 200
    share = b[0].count / 200
    assert share >= 0.15, [s.count for s in b]


def test_penalty_is_shed_by_successes_not_only_by_the_ewma() -> None:
    """A failure makes an endpoint expensive; a handful of successes (the exploring
    picks) bring it back to its latency, instead of ~50 s of EWMA decay."""
    state = EndpointState(Endpoint("127.0.0.1", 1))
    now = 1.0
    state.observe(0.002, now, failed=False, penalty=FAILURE_PENALTY)
    state.observe(0.002, now, failed=True, penalty=FAILURE_PENALTY)
    cost = state.ewma(now)
    assert cost is not None and cost > 1.0
    for _ in range(12):
        now += 0.01
        state.observe(0.002, now, failed=False, penalty=FAILURE_PENALTY)
    cost = state.ewma(now)
    assert cost is not None and cost < 0.005
    state.observe(0.002, now, failed=True, penalty=FAILURE_PENALTY)
    state.forgive()
    assert state.ewma(now) == pytest.approx(0.002, rel=0.05)


# -- 4. a caller's deadline is never the endpoint's fault --------------------------------

def _relay_app(downstream: str, policy: Policy) -> tuple[Starlette, dict[str, Any]]:
    made: dict[str, Any] = {}

    async def relay(request: Request) -> JSONResponse:
        client = made["client"]
        try:
            response = await client.get("http://down/x")
        except meshlib.CircuitOpenError:
            return JSONResponse({"error": "CircuitOpenError"}, status_code=503)
        except httpx.TimeoutException as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=504)
        return JSONResponse({"status": response.status_code})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        made["client"] = meshlib.AsyncMeshClient(services={"down": downstream}, policy=policy)
        yield
        await made["client"].aclose()

    return Starlette(routes=[Route("/relay", relay)], lifespan=lifespan), made


@pytest.mark.parametrize("cap", [50.0, 100.0])
def test_inherited_short_deadline_does_not_eject_a_healthy_upstream(
        backends: BackendFactory, cap: float) -> None:
    """A server behind MeshMiddleware gets 20 requests with x-mesh-timeout-ms: 15 while its
    upstream answers in 20 ms, on a cold client: the timeouts are the caller's, so
    callers with no header then succeed, and no upstream breaker opened."""
    b = backends(2, delay_ms=20)
    policy = FAST.replace(breaker=Breaker(failures=3, max_ejection_percent=cap))
    app, made = _relay_app(b.static_url, policy)
    with serve_asgi(MeshMiddleware(app)) as url, httpx.Client(timeout=10) as caller:
        for _ in range(20):
            r = caller.get(url + "/relay", headers={"x-mesh-timeout-ms": "15"})
            assert r.status_code == 504, r.text
        assert set(_breakers(made["client"], "down").values()) == {"closed"}
        for _ in range(20):
            r = caller.get(url + "/relay")
            assert r.status_code == 200, r.text


def test_scoped_deadline_timeouts_are_not_held_against_a_warm_endpoint(
        backends: BackendFactory) -> None:
    """Warm client, scoped meshlib.deadline shorter than the endpoint's usual latency:
    no breaker failure, no latency sample."""
    b = backends(2, delay_ms=30)
    policy = FAST.replace(retries=0, breaker=Breaker(failures=2, max_ejection_percent=100))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(4):
            assert client.get("http://svc/").status_code == 200
        for _ in range(10):
            with meshlib.deadline(0.01), pytest.raises(httpx.TimeoutException):
                client.get("http://svc/")
        assert set(_breakers(client).values()) == {"closed"}
        assert client.get("http://svc/").status_code == 200


def test_hung_endpoint_given_the_full_policy_time_is_still_ejected(
        backends: BackendFactory) -> None:
    """An endpoint that stalls through the service's own timeout is ejected."""
    b = backends(2, mode=["stall", "normal"])
    policy = FAST.replace(timeout=0.2, retries=0, breaker=Breaker(failures=2),
                          balancer="round-robin")  # p2c-ewma would rarely pick it again
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        for _ in range(40):
            with contextlib.suppress(httpx.TimeoutException):
                client.get("http://svc/")
            if _breakers(client)[b.addresses[0]] == "open":
                break
        assert _breakers(client)[b.addresses[0]] == "open"
        b.reset_counts()
        for _ in range(20):
            assert client.get("http://svc/").status_code == 200
    assert b[0].count == 0


# -- 5. slow start --------------------------------------------------------------------------

def _runtime(endpoints: list[Endpoint], policy: Policy, clock: list[float]) -> ServiceRuntime:
    url = "static://" + ",".join(e.address for e in endpoints)
    runtime = ServiceRuntime("svc", Service(url), StaticDiscovery(url), policy,
                             clock=lambda: clock[0])
    runtime.rng = random.Random(3)
    runtime.apply(tuple(endpoints), clock[0])
    return runtime


def _share(runtime: ServiceRuntime, address: str, now: float, n: int = 6000) -> float:
    balancer = runtime.balancer("random")
    balancer.rng = random.Random(5)  # type: ignore[attr-defined]
    picks = Counter(runtime.pick(balancer, set(), now)[0].address for _ in range(n))
    return picks[address] / n


@pytest.mark.parametrize(("aggression", "at", "factor"), [
    (1.0, 0.0, 0.10),   # min_weight_percent
    (1.0, 5.0, 0.50),
    (1.0, 10.0, 1.0),
    (2.0, 2.5, 0.50),   # sqrt(0.25)
    (0.5, 5.0, 0.25),   # 0.5 ** 2
])
def test_slow_start_ramps_a_new_endpoint_by_the_configured_curve(
        aggression: float, at: float, factor: float) -> None:
    """An endpoint added after the first answer gets fair_share x factor(t), with
    factor = max(min_weight, (t / window) ** (1 / aggression)); fake clock."""
    a, b, c = (Endpoint("127.0.0.1", port) for port in (1, 2, 3))
    clock = [100.0]
    policy = Policy(slow_start=SlowStart(window=10.0, aggression=aggression))
    runtime = _runtime([a, b], policy, clock)
    runtime.apply((a, b, c), 100.0)  # c joins at t=100
    share = _share(runtime, c.address, 100.0 + at)
    assert share == pytest.approx(factor / 3, abs=0.025), share


def test_slow_start_is_off_by_default_and_skips_the_initial_set() -> None:
    """No ramp without SlowStart; with it, endpoints of the first answer start at full share."""
    a, b, c = (Endpoint("127.0.0.1", port) for port in (1, 2, 3))
    clock = [0.0]
    runtime = _runtime([a, b], Policy(), clock)
    runtime.apply((a, b, c), 0.0)
    assert _share(runtime, c.address, 0.0) == pytest.approx(1 / 3, abs=0.025)
    ramped = _runtime([a, b, c], Policy(slow_start=SlowStart(window=10.0)), clock)
    assert _share(ramped, c.address, 0.0) == pytest.approx(1 / 3, abs=0.025)


def test_slow_start_ramps_an_endpoint_whose_breaker_closes_again() -> None:
    """Recovered (breaker closed after open) counts as new: its share ramps up."""
    a, b, c = (Endpoint("127.0.0.1", port) for port in (1, 2, 3))
    clock = [0.0]
    policy = Policy(slow_start=SlowStart(window=10.0),
                    breaker=Breaker(failures=1, reset_timeout=1.0))
    runtime = _runtime([a, b, c], policy, clock)
    breaker = runtime.states[c.address].breaker
    breaker.record(False, 0.0)
    assert runtime.pick(runtime.balancer("random"), set(), 0.5)[0].address != c.address
    clock[0] = 2.0
    admission = breaker.admit(2.0)
    breaker.record(True, 2.0, admission)
    assert breaker.state(2.0) == "closed"
    assert _share(runtime, c.address, 7.0) == pytest.approx(0.5 / 3, abs=0.025)
    assert _share(runtime, c.address, 12.5) == pytest.approx(1 / 3, abs=0.025)


def test_slow_start_with_real_servers_ramps_a_recovered_endpoint(
        backends: BackendFactory) -> None:
    """A recovered endpoint gets well under its fair share right after its breaker
    closes, and its full share once the window has passed."""
    b = backends(3)
    window = 3.0
    policy = FAST.replace(retries=2, slow_start=SlowStart(window=window),
                          breaker=Breaker(failures=2, reset_timeout=0.3))
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=policy) as client:
        b[0].refuse()
        with meshlib.policy(balancer="round-robin"):  # p2c-ewma would avoid it at once
            for _ in range(200):
                client.get("http://svc/")
                if _breakers(client)[b.addresses[0]] == "open":
                    break
        assert _breakers(client)[b.addresses[0]] == "open"
        b[0].restore()
        limit = time.monotonic() + 3.0
        while _breakers(client)[b.addresses[0]] != "closed" and time.monotonic() < limit:
            client.get("http://svc/")
            time.sleep(0.005)
        assert _breakers(client)[b.addresses[0]] == "closed"
        closed = time.monotonic()
        b.reset_counts()
        for _ in range(150):
            client.get("http://svc/")
        early = b[0].count / 150
        ramp_took = time.monotonic() - closed
        time.sleep(max(window - ramp_took, 0.0) + 0.1)
        b.reset_counts()
        for _ in range(300):
            client.get("http://svc/")
        late = b[0].count / 300
    if ramp_took < window / 3:  # the machine was not too busy to see the ramp
        assert early < 0.2, (early, ramp_took)
    assert late >= 0.2, late



@pytest.mark.parametrize(("build", "needle"), [
    (lambda: Breaker(max_ejection_percent=101), "max_ejection_percent"),
    (lambda: Breaker(max_ejection_percent=-1), "max_ejection_percent"),
    (lambda: Breaker(max_ejection_percent=float("nan")), "max_ejection_percent"),
    (lambda: Breaker(reset_timeout=5, max_reset_timeout=1), "max_reset_timeout"),
    (lambda: Breaker(max_reset_timeout=1e308), "max_reset_timeout"),
    (lambda: SlowStart(window=0), "window"),
    (lambda: SlowStart(window=1e308), "window"),
    (lambda: SlowStart(aggression=0), "aggression"),
    (lambda: SlowStart(aggression=1e9), "aggression"),
    (lambda: SlowStart(min_weight_percent=150), "min_weight_percent"),
    (lambda: Policy(slow_start=30.0), "slow_start"),  # type: ignore[arg-type]
])
def test_outlier_knobs_are_validated(build: Any, needle: str) -> None:
    """A bad outlier or slow-start value is a ConfigError naming the field."""
    with pytest.raises(meshlib.ConfigError, match=needle):
        build()


def test_pool_timeouts_are_the_clients_own_not_the_endpoints() -> None:
    """A PoolTimeout (the client's own per-endpoint pool is full) never counts against
    the endpoint: with one connection per endpoint and a 20 ms pool timeout, a burst of
    concurrent requests to slow-but-healthy endpoints opens no breaker, even with the
    ejection cap off; the next request is served."""
    from concurrent.futures import ThreadPoolExecutor

    from meshlib.testing import Fleet

    policy = FAST.replace(retries=0, breaker=Breaker(failures=2, reset_timeout=30.0,
                                                     max_ejection_percent=100))
    with Fleet(2, latency=0.3) as fleet, meshlib.MeshClient(
            services={"svc": fleet.url}, policy=policy,
            limits=httpx.Limits(max_connections=1),
            timeout=httpx.Timeout(5.0, pool=0.02)) as client:

        def one(_: int) -> str:
            try:
                return str(client.get("http://svc/x").status_code)
            except httpx.TimeoutException as exc:
                return type(exc).__name__

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert "PoolTimeout" in results, results  # the scenario really happened
        assert set(_breakers(client).values()) == {"closed"}
        assert client.get("http://svc/x").status_code == 200
