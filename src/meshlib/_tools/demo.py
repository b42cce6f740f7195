"""`meshlib demo`: plain httpx and MeshClient side by side against local backends.

Starts five loopback servers (three healthy, one slow, one failing part of
its requests), then sends the same paced stream of GETs through a plain
round-robin `httpx.Client`, through httpx wrapped in tenacity retries (what
most services run today) and through `meshlib.MeshClient`, at the same
time.  Half-way through, one healthy server goes down (connections
refused).  Progress lines show both clients; a final table compares success
rate, p50, p99 and attempts.  Needs no setup and no network beyond loopback.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from ..testing import Fleet
from .demo_baseline import TenacityBaseline
from .stats import percentile

__all__ = ["run_demo"]

_SERVICE = "demo"
_HEALTHY_MS = 5.0
_SLOW_MS = 250.0
_FAIL_PCT = 40.0
_HEDGE_S = 0.05


class _Stats:
    """Thread-safe tally of one client's results."""

    def __init__(self, name: str, total: int) -> None:
        self.name = name
        self.total = total
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.ok = 0
        self.attempts = 0
        self.hedged = 0
        self.errors: dict[str, int] = {}
        self.answered_by: dict[str, int] = {}

    def add(
        self,
        seconds: float,
        *,
        ok: bool,
        attempts: int,
        hedged: bool = False,
        backend: str | None = None,
        error: str | None = None,
    ) -> None:
        with self._lock:
            self.latencies.append(seconds)
            self.ok += ok
            self.attempts += attempts
            self.hedged += hedged
            if backend is not None:
                self.answered_by[backend] = self.answered_by.get(backend, 0) + 1
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = list(self.latencies)
            done = len(latencies)
            return {
                "done": done,
                "ok": self.ok,
                "success": self.ok / done if done else float("nan"),
                "p50_ms": percentile(latencies, 50) * 1e3,
                "p99_ms": percentile(latencies, 99) * 1e3,
                "attempts": self.attempts,
                "hedged": self.hedged,
                "errors": dict(self.errors),
                "answered_by": dict(self.answered_by),
            }


class _Schedule:
    """Hands out request indices, each due at `start + i / rate`."""

    def __init__(self, total: int, rate: float, stop: threading.Event) -> None:
        self._total = total
        self._rate = rate
        self._stop = stop
        self._next = 0
        self._lock = threading.Lock()
        self.start = time.monotonic()

    def take(self) -> int | None:
        """The next index once it is due, or `None` when all are taken or stopped."""
        with self._lock:
            if self._next >= self._total:
                return None
            index = self._next
            self._next += 1
        wait = self.start + index / self._rate - time.monotonic()
        if wait > 0 and self._stop.wait(wait):
            return None
        return None if self._stop.is_set() else index


def _run_workers(
    count: int, schedule: _Schedule, send: Callable[[int], None], name: str
) -> list[threading.Thread]:
    def loop() -> None:
        while (index := schedule.take()) is not None:
            send(index)

    threads = [
        threading.Thread(target=loop, name=f"meshlib-demo-{name}-{i}", daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def _fmt_ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _fmt_pct(value: float) -> str:
    return "n/a" if value != value else f"{value * 100:.1f}%"


def run_demo(
    *,
    duration: float = 12.0,
    rate: float = 50.0,
    workers: int = 8,
    out: TextIO | None = None,
    report: dict[str, Any] | None = None,
) -> int:
    """Run the demo; return a process exit status (0 on success).

    `duration` (seconds) and `rate` (requests per second, per client)
    set the size: `duration * rate` requests per client.  Tests pass a
    short `duration`.  When `report` is given, it receives each
    client's final numbers under `"httpx"`, `"tenacity"` and `"meshlib"`.
    """
    import meshlib

    stream = sys.stdout if out is None else out

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    total = max(1, int(duration * rate))
    roles = ["healthy", "goes-down", "healthy", "slow", "failing"]
    fleet = Fleet(5, latency=_HEALTHY_MS / 1000.0, seed=42)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        fleet.start()
        fleet.set(3, latency=_SLOW_MS / 1000.0)
        fleet.set(4, error_rate=_FAIL_PCT / 100.0)
        role_of = dict(zip(fleet.endpoints, roles, strict=True))
        victim = fleet.endpoints[1]
        say(f"meshlib demo: {len(fleet)} local backends on loopback")
        for address, role in role_of.items():
            detail = {
                "healthy": f"answers in {_HEALTHY_MS:g} ms",
                "goes-down": f"answers in {_HEALTHY_MS:g} ms, goes down half-way",
                "slow": f"answers in {_SLOW_MS:g} ms",
                "failing": f"answers 503 to {_FAIL_PCT:g}% of requests",
            }[role]
            say(f"  {address:<22} {role:<9} {detail}")
        say()
        say(f"Each client sends {total} GETs at {rate:g}/s ({workers} threads), side by side:")
        say("  httpx    plain httpx.Client cycling over the URLs (round robin)")
        say("  tenacity the same, with tenacity retries (3 attempts, full-jitter backoff)")
        say(f'  meshlib  meshlib.MeshClient(services={{"{_SERVICE}": "static://..."}}),')
        say(f"           GET http://{_SERVICE}/... (p2c-ewma balancer, default retries,")
        say(f"           a hedge to a second backend after {_HEDGE_S * 1000:g} ms)")
        say(f"Half-way through, {victim} goes down (connections refused).")
        say()

        plain_stats = _Stats("httpx", total)
        retry_stats = _Stats("tenacity", total)
        mesh_stats = _Stats("meshlib", total)
        plain = httpx.Client(timeout=5.0)
        mesh = meshlib.MeshClient(
            services={_SERVICE: fleet.url},
            policy=meshlib.Policy(timeout=5.0, hedge=meshlib.Hedge(delay=_HEDGE_S)),
        )
        urls = [f"http://{e}" for e in fleet.endpoints]
        baseline = TenacityBaseline(urls, timeout=5.0)

        def send_plain(index: int) -> None:
            t0 = time.perf_counter()
            try:
                r = plain.get(f"{urls[index % len(urls)]}/orders/{index}")
            except httpx.HTTPError as exc:
                plain_stats.add(
                    time.perf_counter() - t0, ok=False, attempts=1, error=type(exc).__name__
                )
            else:
                plain_stats.add(
                    time.perf_counter() - t0,
                    ok=r.status_code < 400,
                    attempts=1,
                    backend=r.headers.get("x-backend"),
                    error=None if r.status_code < 400 else str(r.status_code),
                )

        def send_tenacity(index: int) -> None:
            outcome = baseline.get(f"/orders/{index}")
            retry_stats.add(
                outcome.seconds,
                ok=outcome.ok,
                attempts=outcome.attempts,
                backend=None if outcome.response is None
                else outcome.response.headers.get("x-backend"),
                error=outcome.error,
            )

        def send_mesh(index: int) -> None:
            t0 = time.perf_counter()
            try:
                r = mesh.get(f"http://{_SERVICE}/orders/{index}")
            except httpx.HTTPError as exc:
                mesh_stats.add(
                    time.perf_counter() - t0, ok=False, attempts=1, error=type(exc).__name__
                )
            else:
                info = r.extensions.get("meshlib") or {}
                mesh_stats.add(
                    time.perf_counter() - t0,
                    ok=r.status_code < 400,
                    attempts=int(info.get("attempts", 1)),
                    hedged=bool(info.get("hedged", False)),
                    backend=r.headers.get("x-backend"),
                    error=None if r.status_code < 400 else str(r.status_code),
                )

        plain_schedule = _Schedule(total, rate, stop)
        retry_schedule = _Schedule(total, rate, stop)
        mesh_schedule = _Schedule(total, rate, stop)
        threads += _run_workers(workers, plain_schedule, send_plain, "httpx")
        threads += _run_workers(workers, retry_schedule, send_tenacity, "tenacity")
        threads += _run_workers(workers, mesh_schedule, send_mesh, "mesh")

        start = time.monotonic()
        outage_at = start + duration / 2
        outage_done = False
        next_report = start + 1.0
        hard_deadline = start + duration + 30.0
        while any(t.is_alive() for t in threads):
            now = time.monotonic()
            if not outage_done and now >= outage_at:
                fleet.set(1, refuse=True)
                outage_done = True
                say(f"  >> t={now - start:4.1f}s  {victim} is down: connections refused")
            if now >= next_report:
                next_report += 1.0
                say(_progress_line(now - start, plain_stats, retry_stats, mesh_stats))
            if now > hard_deadline:
                stop.set()
                say("  (stopping: the run took far longer than planned)")
                break
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=10)
        say(_progress_line(time.monotonic() - start, plain_stats, retry_stats, mesh_stats))
        plain.close()
        baseline.close()
        mesh.close()
        say()
        say(_final_table(plain_stats, retry_stats, mesh_stats, role_of))
        if report is not None:
            report["httpx"] = plain_stats.snapshot()
            report["tenacity"] = retry_stats.snapshot()
            report["meshlib"] = mesh_stats.snapshot()
            report["roles"] = role_of
        return 0
    except KeyboardInterrupt:
        stop.set()
        say("\ninterrupted")
        return 130
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        fleet.close()


def _progress_line(elapsed: float, plain: _Stats, retried: _Stats, mesh: _Stats) -> str:
    parts = [f"  t={elapsed:4.1f}s"]
    for stats in (plain, retried, mesh):
        s = stats.snapshot()
        parts.append(
            f"{stats.name:<8} {s['done']:>4}/{stats.total:<4} ok {_fmt_pct(s['success']):>6}"
            f"  p99 {_fmt_ms(s['p99_ms']):>7}"
        )
    return "  |  ".join(parts)


def _final_table(plain: _Stats, retried: _Stats, mesh: _Stats, role_of: dict[str, str]) -> str:
    header = ("client", "requests", "success", "p50", "p99", "attempts", "hedged", "failures")
    rows = [header]
    snaps = []
    for stats, label in ((plain, "plain httpx (round robin)"),
                         (retried, "httpx + tenacity retries"), (mesh, "meshlib MeshClient")):
        s = stats.snapshot()
        snaps.append((label, s))
        failures = ", ".join(f"{k} x{v}" for k, v in sorted(s["errors"].items())) or "-"
        rows.append(
            (
                label,
                str(s["done"]),
                _fmt_pct(s["success"]),
                _fmt_ms(s["p50_ms"]),
                _fmt_ms(s["p99_ms"]),
                str(s["attempts"]),
                str(s["hedged"]),
                failures,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1], strict=True)
        ]
        cells.append(row[-1])
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("answered by:")
    for label, s in snaps:
        counts: dict[str, int] = {}
        for address, n in s["answered_by"].items():
            role = role_of.get(address, address)
            counts[role] = counts.get(role, 0) + n
        text = ", ".join(f"{role} {n}" for role, n in sorted(counts.items()))
        lines.append(f"  {label:<26} {text}")
    return "\n".join(lines)
