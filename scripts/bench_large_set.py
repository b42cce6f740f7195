"""Micro-benchmark: a request's client CPU cost to a service of 1,000 warm endpoints
against one of 4 (issue 11's large-set cost).

    .venv/bin/python scripts/bench_large_set.py [requests]

Servers run in a child process (meshlib.testing._backend.BackendProcess); every
endpoint is warmed first (so each has a pooled connection and a latency sample;
keep-alive is raised to 120 s so that connections do not expire between two
visits). Prints client CPU microseconds per request (``time.process_time``, so
the servers' work is not counted) and the ratio. Not a test: speed is
measured, never asserted (STYLE.md).
"""

from __future__ import annotations

import sys
import time

import httpx

import meshlib
from meshlib.testing._backend import BackendProcess


def cost(n: int, requests: int) -> float:
    backend = BackendProcess(n).start()
    try:
        # keep-alive long enough that 1,000 endpoints at this rate stay connected: the
        # default 5 s expiry would measure reconnects, not the mesh
        limits = httpx.Limits(keepalive_expiry=120.0)
        with meshlib.MeshClient(services={"svc": backend.static_url}, limits=limits) as client:
            for _ in range(3 * n):  # warm every endpoint (p2c-ewma reaches each)
                client.get("http://svc/")
            best = float("inf")
            for _ in range(3):
                start = time.process_time()
                for _ in range(requests):
                    client.get("http://svc/")
                best = min(best, (time.process_time() - start) / requests)
            return best * 1e6
    finally:
        backend.stop()


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    small = cost(4, requests)
    large = cost(1000, requests)
    print(f"4 endpoints:     {small:8.1f} us CPU per request")
    print(f"1000 endpoints:  {large:8.1f} us CPU per request")
    print(f"ratio:           {large / small:8.3f}")


if __name__ == "__main__":
    main()
