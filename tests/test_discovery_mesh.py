"""Dynamic discovery seen through MeshClient: updates, draining, start-up, bad answers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import meshlib
from conftest import BackendFactory
from meshlib._discovery._file import FileDiscovery
from meshlib.testing._backend import Backend


@pytest.fixture(autouse=True)
def _fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FileDiscovery, "POLL_INTERVAL", 0.05)


def _write(path: Path, backend: Backend, indexes: list[int]) -> None:
    entries = [{"host": backend[i].host, "port": backend[i].port} for i in indexes]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, path)  # atomic rename, as deploy tools do


def _wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def _endpoints(client: meshlib.MeshClient | meshlib.AsyncMeshClient) -> set[str]:
    return {e["endpoint"] for e in client.snapshot()["services"]["svc"]["endpoints"]}


def test_client_follows_file_changes(tmp_path: Path, backends: BackendFactory) -> None:
    """Endpoints added and removed in the file are used and dropped by the client."""
    b = backends(3)
    path = tmp_path / "svc.json"
    _write(path, b, [0])
    with meshlib.MeshClient(services={"svc": f"file://{path}"}) as client:
        assert client.get("http://svc/").headers["x-backend"] == b.addresses[0]
        _write(path, b, [1, 2])
        assert _wait_for(lambda: _endpoints(client) == {b.addresses[1], b.addresses[2]})
        b.reset_counts()
        for _ in range(20):
            client.get("http://svc/")
    assert b[0].count == 0
    assert b[1].count + b[2].count == 20


def test_leaving_endpoint_drains_then_its_pool_is_closed(tmp_path: Path,
                                                          backends: BackendFactory) -> None:
    """A request in flight to a removed endpoint completes; then its connections close."""
    b = backends(2, delay_ms=[0, 0])
    path = tmp_path / "svc.json"
    _write(path, b, [0])
    with meshlib.MeshClient(services={"svc": f"file://{path}"}) as client:
        client.get("http://svc/")
        runtime = client.mesh_transport.mesh.runtimes["svc"]
        state = runtime.states[b.addresses[0]]
        with client.stream("GET", "http://svc/") as streamed:  # holds the endpoint busy
            _write(path, b, [1])
            assert _wait_for(lambda: _endpoints(client) == {b.addresses[1]})
            assert state.retired and state.pool is not None  # still serving the stream
            assert streamed.read()
        assert state.pool is None  # closed once the last response was closed
        assert _wait_for(lambda: b[0].connection_count == 0)
        assert client.get("http://svc/").headers["x-backend"] == b.addresses[1]


def test_garbage_keeps_the_last_good_endpoints(tmp_path: Path, backends: BackendFactory,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt file is logged once and the last good set keeps serving."""
    b = backends(1)
    path = tmp_path / "svc.json"
    _write(path, b, [0])
    with meshlib.MeshClient(services={"svc": f"file://{path}"}) as client:
        client.get("http://svc/")
        path.write_text("{not json")
        time.sleep(0.3)
        for _ in range(5):
            assert client.get("http://svc/").status_code == 200
        assert _endpoints(client) == {b.addresses[0]}
    warnings = [r for r in caplog.records if "failed, keeping" in r.getMessage()]
    assert len(warnings) == 1


def test_first_request_waits_for_discovery_then_raises_no_endpoints(tmp_path: Path) -> None:
    """A failing first answer (missing file) is no answer: the request waits within its
    deadline for a good one, then NoEndpointsError names the discovery failure."""
    path = tmp_path / "missing.json"
    with meshlib.MeshClient(services={"svc": f"file://{path}"},
                            policy=meshlib.Policy(timeout=0.5)) as client:
        start = time.monotonic()
        with pytest.raises(meshlib.NoEndpointsError, match="No such file") as caught:
            client.get("http://svc/")
        assert time.monotonic() - start >= 0.4
        assert "last error" in str(caught.value)
        assert client.snapshot()["services"]["svc"]["ready"] is False


async def test_async_client_follows_file_changes(tmp_path: Path,
                                                 backends: BackendFactory) -> None:
    """AsyncMeshClient runs discovery as a task and follows changes too."""
    import asyncio

    b = backends(2)
    path = tmp_path / "svc.json"
    _write(path, b, [0])
    async with meshlib.AsyncMeshClient(services={"svc": f"file://{path}"}) as client:
        assert (await client.get("http://svc/")).headers["x-backend"] == b.addresses[0]
        _write(path, b, [1])
        for _ in range(100):
            if _endpoints(client) == {b.addresses[1]}:
                break
            await asyncio.sleep(0.02)
        assert (await client.get("http://svc/")).headers["x-backend"] == b.addresses[1]


def test_async_client_survives_a_new_event_loop(tmp_path: Path, backends: BackendFactory) -> None:
    """Used from two asyncio.run() calls, the async client restarts discovery on the new loop."""
    import asyncio

    b = backends(2)
    path = tmp_path / "svc.json"
    _write(path, b, [0])
    client = meshlib.AsyncMeshClient(services={"svc": f"file://{path}"})

    async def first() -> str:
        return (await client.get("http://svc/")).headers["x-backend"]

    async def second() -> str:
        _write(path, b, [1])
        assert (await client.get("http://svc/")).status_code == 200  # restarts discovery
        for _ in range(100):
            if _endpoints(client) == {b.addresses[1]}:
                break
            await asyncio.sleep(0.02)
        response = await client.get("http://svc/")
        await client.aclose()
        return response.headers["x-backend"]

    assert asyncio.run(first()) == b.addresses[0]
    assert asyncio.run(second()) == b.addresses[1]


def test_discovery_that_never_answers_raises_no_endpoints_at_the_deadline(
        backends: BackendFactory) -> None:
    """A registry that never answers: the request waits its deadline, then NoEndpointsError."""
    registry = backends(1, mode="stall")  # accepts the blocking query, never answers
    url = f"consul://{registry.addresses[0]}/svc"
    with meshlib.MeshClient(services={"svc": url},
                            policy=meshlib.Policy(timeout=0.3)) as client:
        start = time.monotonic()
        with pytest.raises(meshlib.NoEndpointsError, match="has not answered"):
            client.get("http://svc/")
        assert 0.25 <= time.monotonic() - start < 2.0


def test_failures_do_not_complete_the_grace_of_an_empty_answer() -> None:
    """An empty answer followed by failures is a flapping registry: the set is kept."""
    from meshlib._discovery import DiscoveryFailure, EndpointSetTracker
    from meshlib._endpoint import Endpoint

    tracker = EndpointSetTracker("svc", "test://", grace=5.0)
    one = (Endpoint("127.0.0.1", 1),)
    assert tracker.accept(one, 0.0) == one
    assert tracker.accept((), 1.0) is None  # pending
    assert tracker.accept(DiscoveryFailure("registry down"), 2.0) is None
    assert tracker.due(7.0) is None
    assert tracker.current == one
    assert tracker.accept((), 8.0) is None  # a new empty answer starts the grace again
    assert tracker.due(13.5) == ()


def test_a_discovery_kind_that_crashes_is_restarted(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path,
                                                     backends: BackendFactory) -> None:
    """An unexpected exception in a discovery kind keeps the last set and restarts it."""
    import meshlib._discovery._runner as runner

    monkeypatch.setattr(runner, "RESTART_MIN", 0.05)
    b = backends(2)
    path = tmp_path / "svc.json"
    _write(path, b, [0])
    real = FileDiscovery.updates
    calls = {"n": 0}

    async def flaky(self: FileDiscovery):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise TypeError("garbage the parser did not expect")
        async for update in real(self):
            yield update
            if calls["n"] == 1:
                raise RuntimeError("boom")

    monkeypatch.setattr(FileDiscovery, "updates", flaky)
    with meshlib.MeshClient(services={"svc": f"file://{path}"}) as client:
        assert client.get("http://svc/").headers["x-backend"] == b.addresses[0]
        _write(path, b, [1])
        assert _wait_for(lambda: _endpoints(client) == {b.addresses[1]})
    assert calls["n"] >= 3


def test_drained_endpoints_are_not_tracked_forever(tmp_path: Path,
                                                   backends: BackendFactory) -> None:
    """Endpoints that left and finished draining are forgotten at the next update."""
    b = backends(3)
    path = tmp_path / "svc.json"
    _write(path, b, [0])
    with meshlib.MeshClient(services={"svc": f"file://{path}"}) as client:
        runtime = client.mesh_transport.mesh.runtimes["svc"]
        with client.stream("GET", "http://svc/") as streamed:
            _write(path, b, [1])
            assert _wait_for(lambda: _endpoints(client) == {b.addresses[1]})
            assert len(runtime.draining) == 1
            streamed.read()
        _write(path, b, [2])
        assert _wait_for(lambda: _endpoints(client) == {b.addresses[2]})
        assert runtime.draining == set()
