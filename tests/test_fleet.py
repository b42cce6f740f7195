"""meshlib.testing.Fleet: every behaviour field against a real MeshClient, and clean shutdown."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import meshlib
from meshlib.testing import Fleet


def _children() -> set[str]:
    """Process ids of this process's live children (every thread's)."""
    pids: set[str] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            pids.update((task / "children").read_text().split())
    return pids


def _fds() -> set[str]:
    gc.collect()  # sockets an earlier test left to the collector
    return set(os.listdir("/proc/self/fd"))


def test_endpoints_url_and_json_answers() -> None:
    """Every answer is JSON naming the endpoint; url is a static:// URL of all endpoints."""
    with Fleet(3) as fleet:
        assert len(fleet.endpoints) == 3
        assert all(e.startswith("127.0.0.1:") for e in fleet.endpoints)
        assert fleet.url == "static://" + ",".join(fleet.endpoints)
        with httpx.Client() as client:
            for endpoint in fleet.endpoints:
                r = client.get(f"http://{endpoint}/orders/7?x=1")
                assert r.status_code == 200
                body = r.json()
                assert body["endpoint"] == endpoint
                assert body["method"] == "GET" and body["path"] == "/orders/7"


def test_hits_are_per_endpoint_in_order() -> None:
    with Fleet(2) as fleet, httpx.Client() as client:
        first, second = fleet.endpoints
        client.post(f"http://{first}/a", content=b"one")
        client.get(f"http://{second}/b?q=2")
        client.put(f"http://{first}/c", content=b"three")
        hits = fleet.hits()
        assert [(h.method, h.target, h.body) for h in hits[0]] == [
            ("POST", "/a", b"one"), ("PUT", "/c", b"three")]
        assert [(h.method, h.path, h.query) for h in hits[1]] == [("GET", "/b", "q=2")]
        assert all(h.endpoint == first for h in hits[0])
        fleet.reset_hits()
        assert fleet.hits() == [[], []]


def test_query_parameters_do_not_change_behaviour() -> None:
    """A user's own ?status=... query is just a query, not a fault override."""
    with Fleet(1) as fleet, httpx.Client() as client:
        r = client.get(f"http://{fleet.endpoints[0]}/orders?status=pending&delay_ms=x")
        assert r.status_code == 200


def test_refuse_is_a_connect_error_that_fails_over() -> None:
    with Fleet(1, refuse=True) as fleet:
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=meshlib.Policy(retries=0)) as client:
            with pytest.raises(httpx.ConnectError):
                client.get("http://svc/")
    with Fleet(2) as fleet:
        fleet.set(0, refuse=True)
        policy = meshlib.Policy(balancer="round-robin")
        with meshlib.MeshClient(services={"svc": fleet.url}, policy=policy) as client:
            attempts = 0
            for _ in range(6):
                r = client.get("http://svc/")
                assert r.status_code == 200
                assert r.json()["endpoint"] == fleet.endpoints[1]
                attempts += r.extensions["meshlib"]["attempts"]
        assert attempts > 6  # at least one attempt met the refused endpoint, then failed over
        assert fleet.hits()[0] == []
        fleet.set(0, refuse=False)  # listening again on the same port
        with httpx.Client() as plain:
            assert plain.get(f"http://{fleet.endpoints[0]}/").status_code == 200


def test_stall_ends_at_the_deadline() -> None:
    with Fleet(1, stall=True) as fleet:
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=meshlib.Policy(timeout=0.3)) as client:
            start = time.monotonic()
            with pytest.raises(meshlib.DeadlineExceeded):
                client.get("http://svc/")
            assert time.monotonic() - start >= 0.25
        assert len(fleet.hits()[0]) == 1  # read, never answered


async def test_stall_ends_at_the_deadline_async() -> None:
    async with Fleet(1, stall=True) as fleet:
        async with meshlib.AsyncMeshClient(services={"svc": fleet.url},
                                           policy=meshlib.Policy(timeout=0.3)) as client:
            with pytest.raises(meshlib.DeadlineExceeded):
                await client.get("http://svc/")


def _sockets_in_state(port: int, state: str) -> int:
    """TCP sockets of this machine whose local port is ``port``, in ``state`` (hex, as
    /proc/net/tcp writes it: ``08`` is CLOSE_WAIT)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            count += 1
    return count


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_stall_closes_connections_the_client_gave_up(process: bool) -> None:
    """A stalled endpoint closes a connection once its client has gone: none stays in
    CLOSE_WAIT while the fleet runs."""
    with Fleet(1, stall=True, process=process) as fleet:
        port = int(fleet.endpoints[0].rsplit(":", 1)[1])
        with httpx.Client(timeout=0.05) as client:
            for _ in range(10):
                with pytest.raises(httpx.ReadTimeout):
                    client.get(f"http://{fleet.endpoints[0]}/")
        assert len(fleet.hits()[0]) == 10
        deadline = time.monotonic() + 5.0
        while _sockets_in_state(port, "08") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _sockets_in_state(port, "08") == 0


def test_drop_is_retried_only_when_idempotent() -> None:
    meshlib.testing.set_testing(True)
    with Fleet(1, drop=1.0) as fleet:
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=meshlib.Policy(retries=2)) as client:
            with pytest.raises(httpx.TransportError):
                client.post("http://svc/orders", json={"n": 1})
            assert [h.method for h in fleet.hits()[0]] == ["POST"]  # sent exactly once
            fleet.reset_hits()
            with pytest.raises(httpx.TransportError):
                client.get("http://svc/orders")
            assert [h.method for h in fleet.hits()[0]] == ["GET"] * 3  # retried twice


def test_drop_fraction_drops_some() -> None:
    with Fleet(1, drop=0.5, seed=5) as fleet:
        outcomes = []
        for _ in range(30):
            with httpx.Client() as client:  # a fresh connection each time
                try:
                    outcomes.append(client.get(f"http://{fleet.endpoints[0]}/").status_code)
                except httpx.TransportError:
                    outcomes.append(0)
        assert 0 in outcomes and 200 in outcomes
        assert len(fleet.hits()[0]) == 30


def test_error_rate_status_and_retry_after() -> None:
    with Fleet(1, error_rate=1.0, status=429, retry_after="7") as fleet, httpx.Client() as c:
        r = c.get(f"http://{fleet.endpoints[0]}/")
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert r.json()["endpoint"] == fleet.endpoints[0]
        fleet.set(error_rate=0.0)
        r = c.get(f"http://{fleet.endpoints[0]}/")
        assert r.status_code == 200 and "retry-after" not in r.headers
    with Fleet(1, error_rate=0.5, seed=3) as fleet, httpx.Client() as c:
        statuses = {c.get(f"http://{fleet.endpoints[0]}/").status_code for _ in range(40)}
        assert statuses == {200, 503}


def test_errors_are_retried_elsewhere_and_retry_after_is_honoured() -> None:
    with Fleet(2) as fleet:
        fleet.set(0, error_rate=1.0)
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=meshlib.Policy(balancer="round-robin")) as client:
            for _ in range(4):
                assert client.get("http://svc/").status_code == 200
        assert len(fleet.hits()[0]) >= 1
    meshlib.testing.set_testing(True)  # Retry-After: 2 would otherwise wait 2 s
    with Fleet(1, error_rate=1.0, retry_after="2") as fleet:
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=meshlib.Policy(retries=1)) as client:
            r = client.get("http://svc/")
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert len(fleet.hits()[0]) == 2


def test_latency() -> None:
    with Fleet(1, latency=0.2) as fleet:
        with httpx.Client() as plain:
            start = time.monotonic()
            assert plain.get(f"http://{fleet.endpoints[0]}/").status_code == 200
            assert time.monotonic() - start >= 0.19
        with meshlib.MeshClient(services={"svc": fleet.url},
                                policy=meshlib.Policy(timeout=0.1)) as client:
            with pytest.raises(meshlib.DeadlineExceeded):
                client.get("http://svc/")
            fleet.set(latency=0)
            assert client.get("http://svc/").status_code == 200


def test_set_while_requests_run() -> None:
    """Behaviour changes from another thread take effect for requests already flowing."""
    with Fleet(2) as fleet:
        results: list[str] = []
        errors: list[BaseException] = []
        policy = meshlib.Policy(balancer="round-robin")

        def load() -> None:
            try:
                with meshlib.MeshClient(services={"svc": fleet.url}, policy=policy) as client:
                    for _ in range(60):
                        results.append(client.get("http://svc/").json()["endpoint"])
                        time.sleep(0.002)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        worker = threading.Thread(target=load)
        worker.start()
        deadline = time.monotonic() + 10
        while len(results) < 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        fleet.set(0, refuse=True)
        switched = len(results)
        worker.join(timeout=30)
        assert not errors and len(results) == 60
        assert fleet.endpoints[0] in results[:switched]
        assert fleet.endpoints[0] not in results[switched + 1:]


@pytest.mark.parametrize(("field", "value"), [
    ("latency", -1), ("latency", float("inf")), ("latency", "1"),
    ("error_rate", 1.5), ("error_rate", -0.1), ("drop", 2), ("drop", True),
    ("status", 42), ("status", 200.0), ("retry_after", 3.5), ("retry_after", ""),
    ("refuse", 1), ("stall", "yes"), ("color", "red"),
])
def test_bad_behaviour_is_a_config_error_naming_the_field(field: str, value: object) -> None:
    # an unknown keyword is Python's TypeError for the constructor
    with pytest.raises(TypeError if field == "color" else meshlib.ConfigError, match=field):
        Fleet(1, **{field: value})  # type: ignore[arg-type]
    fleet = Fleet(2)
    with pytest.raises(meshlib.ConfigError, match=field):
        fleet.set(**{field: value})
    with pytest.raises(meshlib.ConfigError, match=field):
        fleet.set(1, **{field: value})
    assert fleet.behaviour(0) == fleet.behaviour(1) == Fleet(1).behaviour(0)  # unchanged


def test_bad_arguments() -> None:
    for n in (0, -1, 1.5, True):
        with pytest.raises(meshlib.ConfigError, match="n must be"):
            Fleet(n)  # type: ignore[arg-type]
    with pytest.raises(meshlib.ConfigError, match="index"):
        Fleet(2).set(2, latency=0)
    with pytest.raises(meshlib.ConfigError, match="cpu"):
        Fleet(1, cpu=0)
    with pytest.raises(RuntimeError, match="not started"):
        _ = Fleet(1).endpoints


def test_leaves_no_thread_process_or_fd() -> None:
    threads, fds, children = set(threading.enumerate()), _fds(), _children()
    for process in (False, True):
        with Fleet(2, process=process) as fleet:
            fleet.set(0, stall=True)
            with httpx.Client(timeout=0.2) as client:  # leave a stalled connection open
                with pytest.raises(httpx.ReadTimeout):
                    client.get(f"http://{fleet.endpoints[0]}/")
                assert client.get(f"http://{fleet.endpoints[1]}/").status_code == 200
            if process:
                assert _children() - children
            else:
                assert set(threading.enumerate()) - threads
        assert not fleet.running
    assert not set(threading.enumerate()) - threads
    assert not _fds() - fds
    assert not _children() - children


def test_in_a_child_process() -> None:
    with Fleet(2, process=True, latency=0.001) as fleet:
        fleet.set(1, error_rate=1.0, status=502, retry_after="1")
        with httpx.Client() as client:
            assert client.get(f"http://{fleet.endpoints[0]}/x").status_code == 200
            r = client.get(f"http://{fleet.endpoints[1]}/y", headers={"x-k": "v"})
            assert r.status_code == 502 and r.headers["retry-after"] == "1"
            assert json.loads(r.content)["endpoint"] == fleet.endpoints[1]
        fleet.set(0, refuse=True)
        with httpx.Client() as client, pytest.raises(httpx.ConnectError):
            client.get(f"http://{fleet.endpoints[0]}/z")
        hits = fleet.hits()
        assert [h.path for h in hits[0]] == ["/x"]
        assert hits[1][0].path == "/y" and hits[1][0].headers["x-k"] == "v"


def test_the_runtime_does_not_load_the_tooling() -> None:
    """The fence: importing meshlib loads neither the tooling nor the testing package, and
    testing mode alone loads no fault server."""
    code = ("import sys, meshlib, meshlib.asgi, meshlib.wsgi, meshlib.etcd\n"
            "with meshlib.MeshClient(services={'s': 'static://127.0.0.1:1'}): pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('meshlib._tools', "
            "'meshlib.testing'))))\n"
            "import meshlib.testing\n"
            "meshlib.testing.set_testing(attempts=1)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('meshlib._tools', "
            "'meshlib.testing._'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split() == ["[]", "[]"]
