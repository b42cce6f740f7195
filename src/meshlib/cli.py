"""The ``meshlib`` command line: ``demo``, ``resolve``, ``bench``, ``status``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from ._config import read_env
from ._discovery import DiscoveryFailure, DiscoveryOptions, discovery_from_url
from ._errors import ConfigError

__all__ = ["main"]


def _format_set(endpoints: Sequence[object]) -> str:
    lines = []
    for endpoint in endpoints:
        address = getattr(endpoint, "address", str(endpoint))
        weight = getattr(endpoint, "weight", 1.0)
        zone = getattr(endpoint, "zone", None)
        priority = getattr(endpoint, "priority", 0)
        extra = f"  weight={weight:g} priority={priority}"
        if zone:
            extra += f" zone={zone}"
        lines.append(f"{address}{extra}")
    return "\n".join(lines) if lines else "(no endpoints)"


def _nameserver() -> tuple[str, int] | None:
    """``MESHLIB_DNS_NAMESERVER`` alone: ``resolve`` needs nothing else from the environment."""
    raw = os.environ.get("MESHLIB_DNS_NAMESERVER", "")
    return read_env({"MESHLIB_DNS_NAMESERVER": raw}).dns_nameserver if raw.strip() else None


async def _resolve(url: str, watch: bool, timeout: float, as_json: bool) -> int:
    discovery = discovery_from_url(url, DiscoveryOptions(dns_nameserver=_nameserver()))
    updates = discovery.updates()
    status = 0
    last: object = None  # with --watch, print only what changed
    try:
        while True:
            try:
                update = await asyncio.wait_for(updates.__anext__(),
                                                None if watch else timeout)
            except asyncio.TimeoutError:
                print(f"meshlib resolve: no answer from {url} within {timeout:g} s",
                      file=sys.stderr)
                return 1
            except StopAsyncIteration:
                return status
            if isinstance(update, DiscoveryFailure):
                if not isinstance(last, DiscoveryFailure):
                    print(f"meshlib resolve: {url}: {update.reason}", file=sys.stderr)
                last, status = update, 1
                if not watch:
                    return status
                continue
            status = 0
            if update == last:
                continue
            last = update
            if as_json:
                print(json.dumps([{"endpoint": e.address, "host": e.host, "port": e.port,
                                   "weight": e.weight, "zone": e.zone, "priority": e.priority}
                                  for e in update]), flush=True)
            else:
                print(_format_set(update), flush=True)
                if watch:
                    print("--", flush=True)
            if not watch:
                return 0
    finally:
        aclose = getattr(updates, "aclose", None)  # async generators have it
        if aclose is not None:
            await aclose()
        await discovery.aclose()


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="plain httpx and MeshClient side by side on local backends")
    resolve = sub.add_parser("resolve", help="print what a discovery URL resolves to")
    resolve.add_argument("url")
    resolve.add_argument("--watch", action="store_true", help="print every change until ^C")
    resolve.add_argument("--timeout", type=_positive, default=10.0,
                         help="seconds to wait for the first answer (default 10)")
    resolve.add_argument("--json", action="store_true")
    bench = sub.add_parser("bench", help="benchmarks against bare httpx, in the same run")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--quick", action="store_true", help="a short run")
    status = sub.add_parser("status", help="show the mesh snapshot of a running service")
    status.add_argument("url", help="the snapshot URL a meshlib middleware exposes")
    status.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._tools.demo import run_demo

            return run_demo()
        if args.command == "resolve":
            try:
                return asyncio.run(_resolve(args.url, args.watch, args.timeout, args.json))
            except KeyboardInterrupt:
                return 0
        if args.command == "bench":
            from ._tools.bench import run_bench

            run_bench(json_output=args.json, quick=args.quick)
            return 0
        if args.command == "status":
            from ._tools.status import run_status

            return run_status(args.url, as_json=args.json)
    except ConfigError as exc:
        print(f"meshlib: {exc}", file=sys.stderr)
        return 2
    return 2
