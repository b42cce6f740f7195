"""The `meshlib` command line: `demo`, `resolve`, `bench`, `status`.

Run `meshlib COMMAND --help` for the options of each command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._config import parse_services, read_env
from ._discovery import DiscoveryFailure, DiscoveryOptions, discovery_from_url
from ._errors import ConfigError
from ._tools.printing import print_change

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


#: what ``resolve`` reads from the environment (nothing else: no policy, no services)
_RESOLVE_ENV = ("MESHLIB_DNS_NAMESERVER", "MESHLIB_ZONE", "MESHLIB_K8S_API",
                "MESHLIB_K8S_TOKEN_FILE", "MESHLIB_K8S_CA_FILE", "KUBERNETES_SERVICE_HOST",
                "KUBERNETES_SERVICE_PORT")


def _options() -> DiscoveryOptions:
    """The discovery options of the environment (nameserver, zone, Kubernetes API)."""
    env = {name: os.environ[name] for name in _RESOLVE_ENV if name in os.environ}
    return DiscoveryOptions.from_env(read_env(env))


def _details(discovery: object, update: Sequence[object]) -> list[dict[str, Any]] | None:
    """Per-endpoint conditions for kinds that know them (k8s: ready, terminating, zone)."""
    view = getattr(discovery, "view", None)
    if view is None:
        return None
    used = {getattr(e, "address", None) for e in update}
    return [{"endpoint": e.address, "host": e.host, "port": e.port, "zone": e.zone,
             "ready": e.ready, "serving": e.serving, "terminating": e.terminating,
             "for_zones": list(e.for_zones) if e.for_zones else None, "slice": e.slice,
             "used": e.address in used} for e in view()]


def _format_details(details: list[dict[str, Any]]) -> str:
    """One line per endpoint: conditions, zone, hints, slice; `(not used)` if left out."""
    lines = []
    for d in details:
        line = (f"{d['endpoint']}  ready={'yes' if d['ready'] else 'no'} "
                f"terminating={'yes' if d['terminating'] else 'no'}")
        if d["zone"]:
            line += f" zone={d['zone']}"
        if d["for_zones"]:
            line += f" hints={','.join(d['for_zones'])}"
        line += f" slice={d['slice']}" + ("" if d["used"] else "  (not used)")
        lines.append(line)
    return "\n".join(lines) if lines else "(no endpoints)"


def _discovery_url(target: str) -> str:
    """`target` itself if it is a discovery URL, else the URL `MESHLIB_SERVICES` gives it.

    Raises `ConfigError` naming the service when it is not there (or the variable is bad).
    """
    if "://" in target:
        return target
    raw = os.environ.get("MESHLIB_SERVICES", "")
    services = parse_services(raw) if raw.strip() else {}
    for name, url in services.items():
        if name.lower() == target.lower():
            return url
    if not services:
        raise ConfigError(f"{target!r} is not a discovery URL (scheme://...) and "
                          "MESHLIB_SERVICES is not set, so it is not a service name either")
    raise ConfigError(f"{target!r} is not a discovery URL (scheme://...) nor a service in "
                      f"MESHLIB_SERVICES (which names {', '.join(sorted(services))})")


async def _resolve(url: str, watch: bool, timeout: float, as_json: bool) -> int:
    discovery = discovery_from_url(url, _options())
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
            details = _details(discovery, update)
            if as_json:
                text = json.dumps(details if details is not None else [
                    {"endpoint": e.address, "host": e.host, "port": e.port, "weight": e.weight,
                     "zone": e.zone, "priority": e.priority} for e in update])
            else:
                text = _format_set(update) if details is None else _format_details(details)
            last = print_change(text, last, watch=watch, as_json=as_json)
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


_EPILOG = """environment:
  MESHLIB_SERVICES        name=URL pairs, for `meshlib resolve NAME`
  MESHLIB_DNS_NAMESERVER  HOST:PORT for DNS discovery URLs that name no nameserver
  MESHLIB_K8S_API         the Kubernetes API server for k8s:// (default: in-cluster;
                          MESHLIB_K8S_TOKEN_FILE, MESHLIB_K8S_CA_FILE override the
                          service account's token and CA)
  MESHLIB_ZONE            the client's zone, for k8s:// topology hints
"""

_RESOLVE_HELP = """Print the endpoints a discovery URL resolves to, one per line with its
weight, priority and zone (for k8s://, each endpoint's ready / terminating
conditions, zone, hints and slice). TARGET is a discovery URL (static://, dns+srv://,
dns://, file://, etcd://, consul://, k8s://) or the name of a service in
MESHLIB_SERVICES. Exit status: 0 on an answer, 1 when discovery failed or
did not answer in time, 2 on a malformed URL or an unknown service name."""

_STATUS_HELP = """Fetch the JSON snapshot a running service exposes through
meshlib.asgi.MeshMiddleware or meshlib.wsgi.MeshMiddleware (their snapshot_path)
and print, per service, its routes and endpoints with their golden signals
over the last 60 s (requests, success rate, requests per second, p50/p95/p99
latency), the balancer's score (score_ms; a failure counts as 1000 ms),
requests in flight, breaker states and attempt counts, as `linkerd viz stat`
does. --watch refreshes the tables until Ctrl-C.
Exit status: 0 when the snapshot lists at least one service, 1 otherwise (not
reachable, not a snapshot, or no services: the middleware sees no client)."""


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="meshlib", description="meshlib, an embeddable client-side service mesh for httpx.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"meshlib {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "demo", help="plain httpx and MeshClient side by side on local backends",
        description="Start local backends on loopback (one slow, one failing) and send the "
                    "same requests through plain httpx and through MeshClient, with progress "
                    "lines and a final table. "
                    "Needs no setup and no network beyond 127.0.0.1.")
    resolve = sub.add_parser("resolve", help="print what a discovery URL or service resolves to",
                             description=_RESOLVE_HELP, epilog=_EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    resolve.add_argument("url", metavar="TARGET",
                         help="a discovery URL, e.g. dns+srv://_http._tcp.users.example.com, "
                              "or a service name from MESHLIB_SERVICES")
    resolve.add_argument("--watch", action="store_true",
                         help="keep following discovery and print every change until ^C")
    resolve.add_argument("--timeout", type=_positive, default=10.0, metavar="SECONDS",
                         help="seconds to wait for the first answer (default 10)")
    resolve.add_argument("--json", action="store_true",
                         help="print each endpoint set as a JSON list")
    bench = sub.add_parser(
        "bench", help="benchmarks against bare httpx, in the same run",
        description="Run the benchmark scenarios on loopback, each against a bare httpx "
                    "baseline measured in the same run, and print a table.")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--quick", action="store_true",
                       help="a short run (few requests: noisier numbers, and its p99 and "
                            "p99.9 are indicative only)")
    bench.add_argument("--plot", metavar="DIR", default=None,
                       help="also write PNG plots (latency CDFs, throughput, pick cost, "
                            "the sidecar comparison) "
                            "into DIR; needs matplotlib: pip install 'httpx-mesh[plot]'")
    status = sub.add_parser("status", help="show the mesh snapshot of a running service",
                            description=_STATUS_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("url", help="the snapshot URL a meshlib middleware exposes, "
                                    "e.g. http://127.0.0.1:8000/_mesh")
    status.add_argument("--json", action="store_true",
                        help="print the snapshot as JSON instead of tables")
    status.add_argument("--watch", metavar="SECONDS", nargs="?", type=_positive_seconds,
                        const=2.0, default=None,
                        help="refresh every SECONDS (default 2) until Ctrl-C")
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.1 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"--watch needs 0.1 to 3600 seconds, got {text!r}")
    return value
#: the exit status of a command whose reader went away (as a shell reports SIGPIPE)
_EXIT_BROKEN_PIPE = 128 + 13


def _quiet_stdout() -> None:
    """Point standard output at `/dev/null`, so that flushing it at exit (after its
    reader went away, as `| head` does) raises nothing more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (a test's capture): nothing to quiet
        pass
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    When the reader of standard output goes away (`meshlib resolve URL | head -1`),
    the command ends quietly with status 141, as Unix tools killed by `SIGPIPE` do.
    """
    try:
        return _run(argv)
    except BrokenPipeError:
        _quiet_stdout()
        return _EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    """Run one command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._tools.demo import run_demo

            return run_demo()
        if args.command == "resolve":
            try:
                url = _discovery_url(args.url)
                if url.partition("://")[0].lower() == "xds":
                    from ._tools.resolve_routes import resolve_routes

                    return asyncio.run(resolve_routes(url, args.watch, args.timeout,
                                                      args.json))
                return asyncio.run(_resolve(url, args.watch, args.timeout, args.json))
            except KeyboardInterrupt:
                return 0
        if args.command == "bench":
            from ._tools.bench import run_bench

            run_bench(json_output=args.json, quick=args.quick, plot_dir=args.plot)
            return 0
        if args.command == "status":
            from ._tools.status import run_status

            return run_status(args.url, as_json=args.json, watch=args.watch)
    except ConfigError as exc:
        print(f"meshlib: {exc}", file=sys.stderr)
        return 2
    return 2
