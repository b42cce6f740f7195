"""meshlib in one screen: three local instances of "users", one slow and one failing.

Run it: ``python examples/quickstart.py``. It starts its own loopback backends,
so it needs nothing else, and exits when done.
"""

from __future__ import annotations

from collections import Counter

import meshlib
from meshlib._backend import Backend  # meshlib's own loopback test servers


def main() -> None:
    backends = Backend(3, delay_ms=[2, 40, 2], fail_pct=[0, 0, 30]).start()
    try:
        healthy, slow, failing = backends.addresses
        names = {healthy: "healthy", slow: "slow (40 ms)", failing: "failing (30% 503)"}
        policy = meshlib.Policy(timeout=1.0, hedge=meshlib.Hedge(delay=0.02))
        with meshlib.MeshClient(services={"users": backends.static_url}, policy=policy) as client:
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
    finally:
        backends.stop()


if __name__ == "__main__":
    main()
