"""meshlib in one screen: three local instances of "users", one slow and one failing.

Run it: ``python examples/quickstart.py``. It starts its own loopback backends,
so it needs nothing else, and exits when done.
"""

from __future__ import annotations

from collections import Counter

import meshlib
from meshlib.testing import Fleet  # real endpoints on 127.0.0.1 whose faults we choose


def main() -> None:
    with Fleet(3, latency=0.002) as fleet:
        fleet.set(1, latency=0.040)
        fleet.set(2, error_rate=0.3)
        healthy, slow, failing = fleet.endpoints
        names = {healthy: "healthy", slow: "slow (40 ms)", failing: "failing (30% 503)"}
        policy = meshlib.Policy(timeout=1.0, hedge=meshlib.Hedge(delay=0.02))
        with meshlib.MeshClient(services={"users": fleet.url}, policy=policy) as client:
            answered: Counter[str] = Counter()
            attempts = 0
            for _ in range(200):
                with meshlib.deadline(0.5):  # one budget of time for all attempts
                    response = client.get("http://users/v1/me")
                response.raise_for_status()
                answered[names[response.extensions["meshlib"]["endpoint"]]] += 1
                attempts += response.extensions["meshlib"]["attempts"]
            with meshlib.policy(retries=0):  # a scoped override: one attempt only
                client.post("http://users/v1/events", json={"type": "login"})
            print("200 GETs, all successful; answered by:", dict(answered))
            print(f"attempts sent: {attempts} (retries and hedges included)")
            for endpoint in client.snapshot()["services"]["users"]["endpoints"]:
                print(f"  {names[endpoint['endpoint']]:18} ewma {endpoint['ewma_ms']} ms, "
                      f"{endpoint['requests']} requests, {endpoint['failures']} failures, "
                      f"breaker {endpoint['breaker']}")


if __name__ == "__main__":
    main()
