"""Micro-benchmark: the cost of one endpoint pick at 10, 100 and 1,000 warm endpoints.

    .venv/bin/python scripts/bench_pick.py [sizes...]

A shortcut to the pick-cost part of ``meshlib bench``
(:mod:`meshlib._tools.pick`): microseconds per ``ServiceRuntime.pick`` for
each balancer, with every breaker closed and with one endpoint's breaker open.
Not a test: speed is measured, never asserted (STYLE.md).
"""

from __future__ import annotations

import sys

from meshlib._tools.pick import format_pick, run_pick_cost


def main() -> None:
    sizes = tuple(int(a) for a in sys.argv[1:]) or (10, 100, 1000)
    print(format_pick(run_pick_cost(sizes)))


if __name__ == "__main__":
    main()
