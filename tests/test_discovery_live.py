"""A MeshClient under load while its registry changes or goes away (real etcd, files)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

import meshlib
from conftest import BackendFactory
from meshlib._discovery._file import FileDiscovery
from servers import Etcd


class Load:
    """Sequential GETs from a background thread, bounded in count and time."""

    def __init__(self, client: meshlib.MeshClient, limit: int = 20000, seconds: float = 20):
        self.client, self.limit, self.seconds = client, limit, seconds
        self.seen: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        end = time.monotonic() + self.seconds
        for _ in range(self.limit):
            if self._stop.is_set() or time.monotonic() > end:
                return
            try:
                self.seen[self.client.get("http://svc/").headers["x-backend"]] += 1
            except httpx.HTTPError as exc:
                self.errors.append(exc)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def total(self) -> int:
        return sum(self.seen.values())


def _wait(predicate: object, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_file_rewritten_under_load_loses_no_request(tmp_path: Path, backends: BackendFactory,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewriting the endpoint file 20 times while requests flow: none fails, all sets used."""
    monkeypatch.setattr(FileDiscovery, "POLL_INTERVAL", 0.02)
    b = backends(3)
    path = tmp_path / "svc.json"
    sets = [[0, 1], [1, 2], [2], [0, 2], [0, 1, 2]]

    def write(indexes: list[int]) -> None:
        tmp = tmp_path / "svc.json.tmp"
        tmp.write_text(json.dumps([{"host": "127.0.0.1", "port": b[i].port} for i in indexes]))
        os.replace(tmp, path)

    write(sets[0])
    with meshlib.MeshClient(services={"svc": f"file://{path}"}) as client, Load(client) as load:
        for round_ in range(20):
            write(sets[round_ % len(sets)])
            time.sleep(0.05)
        _wait(lambda: load.total() > 200)
    assert load.errors == []
    assert set(load.seen) == set(b.addresses)
    assert load.total() == b.count


@pytest.mark.server
def test_etcd_killed_and_restarted_while_serving(backends: BackendFactory) -> None:
    """etcd dies: the client keeps serving the last good set; it comes back: changes follow."""
    b = backends(2)
    with Etcd() as etcd:
        etcd.put("/mesh/svc/a", {"host": "127.0.0.1", "port": b[0].port})
        url = f"etcd://{etcd.address}/mesh/svc"
        with meshlib.MeshClient(services={"svc": url}) as client, Load(client) as load:
            assert _wait(lambda: load.total() > 20)
            etcd.kill_process()
            served = load.total()
            assert _wait(lambda: load.total() > served + 100)  # still serving, registry down
            etcd.start()
            etcd.put("/mesh/svc/b", {"host": "127.0.0.1", "port": b[1].port})
            etcd.delete("/mesh/svc/a")
            assert _wait(lambda: load.seen[b.addresses[1]] > 20, timeout=20)
        assert load.errors == []
