"""SRV weights and priorities from a real dnsmasq, seen as traffic through MeshClient."""

from __future__ import annotations

from collections import Counter

import pytest

import meshlib
from conftest import BackendFactory
from servers import Dnsmasq

SRV = "_http._tcp.svc.mesh.test"

pytestmark = pytest.mark.server


@pytest.mark.parametrize("balancer", ["p2c-ewma", "round-robin", "random"])
def test_srv_weights_one_and_three_split_traffic_one_to_three(
        backends: BackendFactory, balancer: str) -> None:
    """Weights 1 and 3 on equal-latency endpoints give the weight-3 one about 75%.

    Tolerance: 300 requests with p = 0.75 have a standard deviation of 2.5% in
    the share, so 0.75 +/- 0.10 is four standard deviations for the random
    choices; round-robin is exact. Both endpoints answer in 20 ms so that the
    scheduling noise of a busy machine (a few ms) stays small next to their
    latency: p2c-ewma only applies weights among endpoints it sees as equally fast.
    """
    b = backends(2, delay_ms=20)
    with Dnsmasq([
        f"srv-host={SRV},a.mesh.test,{b[0].port},10,1",
        f"srv-host={SRV},b.mesh.test,{b[1].port},10,3",
        "host-record=a.mesh.test,127.0.0.1",
        "host-record=b.mesh.test,127.0.0.1",
    ]) as dns:
        url = f"dns+srv://{SRV}?nameserver={dns.nameserver}"
        policy = meshlib.Policy(balancer=balancer)  # type: ignore[arg-type]
        with meshlib.MeshClient(services={"svc": url}, policy=policy) as client:
            seen = Counter(client.get("http://svc/").headers["x-backend"] for _ in range(300))
    share = seen[b.addresses[1]] / 300
    assert 0.65 <= share <= 0.85, seen


def test_higher_priority_group_is_used_only_when_the_lower_is_down(
        backends: BackendFactory) -> None:
    """Priority 10 gets everything; when its breaker opens, priority 20 takes over."""
    b = backends(2)
    with Dnsmasq([
        f"srv-host={SRV},a.mesh.test,{b[0].port},10,1",
        f"srv-host={SRV},b.mesh.test,{b[1].port},20,1",
        "host-record=a.mesh.test,127.0.0.1",
        "host-record=b.mesh.test,127.0.0.1",
    ]) as dns:
        url = f"dns+srv://{SRV}?nameserver={dns.nameserver}"
        policy = meshlib.Policy(breaker=meshlib.Breaker(failures=2, reset_timeout=30))
        with meshlib.MeshClient(services={"svc": url}, policy=policy) as client:
            for _ in range(10):
                assert client.get("http://svc/").headers["x-backend"] == b.addresses[0]
            b[0].refuse()
            for _ in range(10):
                assert client.get("http://svc/").headers["x-backend"] == b.addresses[1]
