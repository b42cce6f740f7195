"""Micro-benchmark: a request's client CPU cost to a service of 1,000 warm endpoints
against one of 4 (issue 11's large-set cost).

    .venv/bin/python scripts/bench_large_set.py [requests]

A shortcut to the large-set part of ``meshlib bench``
(:mod:`meshlib._tools.large_set`). Not a test: speed is measured, never
asserted (STYLE.md).
"""

from __future__ import annotations

import sys

from meshlib._tools.large_set import format_large_set, run_large_set


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(format_large_set(run_large_set(4, 1000, requests=requests)))


if __name__ == "__main__":
    main()
