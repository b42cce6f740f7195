"""Memory per endpoint: an endpoint's state plus an idle connection pool.

For each pool (the sync `MeshClient`'s httpcore pool, `AsyncMeshClient`'s
httpcore pool and, when aiohttp is installed, its aiohttp pool), with
`tracemalloc` on: build a client over a static service of `n`
endpoints (addresses on 127.0.0.1 that are never contacted), give every
endpoint a latency sample (a warm state) and create its pool the way the
first request to it would (for aiohttp, with its session and connector
open); then the same with `small` endpoints. The figure is the marginal
cost, `(memory(n) - memory(small)) / (n - small)`, so the client's fixed
cost is not spread over the endpoints. An idle pool holds no connection:
a connection's socket and buffers come on top, and memory that C libraries
allocate outside Python's allocator (OpenSSL's, say) is not traced.
Goal: at most 20 KiB per endpoint.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import Any

from .goals import mark

__all__ = ["MEMORY_GOAL_KIB", "POOLS", "format_memory", "run_memory"]

#: the goal per endpoint, in KiB
MEMORY_GOAL_KIB = 20.0
#: the pools measured, in table order
POOLS = ("sync-httpcore", "async-httpcore", "async-aiohttp")


def _static(n: int) -> str:
    return "static://" + ",".join(f"127.0.0.1:{20000 + i}" for i in range(n))


def _warm(transport: Any) -> None:
    """Give each endpoint a latency sample and its pool, as its first request would."""
    from .._balancer import FAILURE_PENALTY

    now = time.monotonic()
    for runtime in transport.mesh.runtimes.values():
        for state in runtime.states.values():
            state.observe(0.001, now, failed=False, penalty=FAILURE_PENALTY)
            pool = transport._pool_for(state)
            opener = getattr(pool, "_open", None)  # aiohttp: its session and connector
            if opener is not None and getattr(pool, "_session", None) is None:
                opener()


def _traced(build: Any) -> int:
    """Bytes still allocated after `build()` (its result alive), traced from a clean start."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return after - before


def _sync_bytes(n: int) -> int:
    import meshlib

    clients: list[Any] = []

    def build() -> Any:
        client = meshlib.MeshClient(services={"svc": _static(n)})
        clients.append(client)
        _warm(client.mesh_transport)
        return client

    try:
        return _traced(build)
    finally:
        for client in clients:
            client.close()


def _async_bytes(n: int, pool: str) -> int:
    import meshlib

    async def main() -> int:
        clients: list[Any] = []

        def build() -> Any:
            client = meshlib.AsyncMeshClient(services={"svc": _static(n)}, pool=pool)
            clients.append(client)
            _warm(client.mesh_transport)
            return client

        try:
            return _traced(build)
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(main())


def _aiohttp_installed() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def run_memory(n: int = 1000, *, small: int = 10) -> list[dict[str, Any]]:
    """Measure memory per endpoint for each pool; one dict per pool.

    Each dict has `pool` (one of `POOLS`), `endpoints` (`n`),
    `bytes_per_endpoint` and `kib_per_endpoint` (marginal, see the module
    docstring), `total_kib` (the whole client at `n` endpoints), `goal_kib`
    and `ok`; for aiohttp when it is not installed, `skipped` (why) instead
    of the figures.
    """
    if small < 1 or n <= small:
        raise ValueError(f"n must exceed small >= 1, not n={n!r}, small={small!r}")
    rows: list[dict[str, Any]] = []
    for name in POOLS:
        if name == "async-aiohttp" and not _aiohttp_installed():
            rows.append({"pool": name, "endpoints": n, "goal_kib": MEMORY_GOAL_KIB,
                         "skipped": "aiohttp is not installed (pip install 'httpx-mesh[aiohttp]')"})
            continue
        if name == "sync-httpcore":
            large, little = _sync_bytes(n), _sync_bytes(small)
        else:
            pool = name.removeprefix("async-")
            large, little = _async_bytes(n, pool), _async_bytes(small, pool)
        per = (large - little) / (n - small)
        rows.append({"pool": name, "endpoints": n, "bytes_per_endpoint": round(per),
                     "kib_per_endpoint": round(per / 1024, 2),
                     "total_kib": round(large / 1024, 1), "goal_kib": MEMORY_GOAL_KIB,
                     "ok": per / 1024 <= MEMORY_GOAL_KIB})
    return rows


def format_memory(rows: list[dict[str, Any]]) -> str:
    """`run_memory`'s rows as lines: KiB per endpoint for each pool."""
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['pool']:<15} skipped: {r['skipped']}")
            continue
        verdict = f"goal <= {r['goal_kib']:g} KiB: {mark(r['ok'])}"
        lines.append(f"{r['pool']:<15} {r['kib_per_endpoint']:6.2f} KiB per endpoint "
                     f"({r['total_kib']:,.0f} KiB for the client at {r['endpoints']:,}; "
                     f"{verdict})")
    return "\n".join(lines)
