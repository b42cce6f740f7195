"""A client built before ``os.fork()`` works in the child: discovery restarts, own connections.

Each test forks for real (``os.fork`` and multiprocessing's ``fork`` start
method) against loopback servers behind ``file://`` discovery. The parent
changes the endpoints after the fork; the child must follow the change, and
the servers must see the child on connections of its own (the parent's pooled
connection is neither reused nor closed by the child).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import meshlib
from meshlib.testing._backend import Backend
from servers import open_sockets, temp_dir

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

#: bounds of every wait in the child and in the parent
CHILD_SECONDS = 15.0


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A temporary directory, removed after the test."""
    with temp_dir() as path:
        yield path


def _write(path: Path, address: str) -> None:
    host, _, port = address.rpartition(":")
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps([{"host": host, "port": int(port)}]))
    os.replace(temp, path)


def _follow_in_child(get: Callable[[], str], report: Callable[[dict[str, Any]], None],
                     wait_go: Callable[[], None], wanted: str) -> None:
    """The child's part: one request, tell the parent, then request until ``wanted``
    answers (the endpoint the parent moves the service to), bounded in count and time."""
    first = get()
    report({"first": first})
    wait_go()
    seen = []
    deadline = time.monotonic() + CHILD_SECONDS
    for _ in range(2000):
        seen.append(get())
        if seen[-1] == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    report({"last": seen[-1], "requests": len(seen)})


def _sync_get(client: meshlib.MeshClient) -> str:
    response = client.get("http://users/x")
    response.raise_for_status()
    return str(response.extensions["meshlib"]["endpoint"])


class _Pipe:
    """Two pipes between the test and its child: reports up, a go signal down."""

    def __init__(self) -> None:
        self.up_r, self.up_w = os.pipe()
        self.down_r, self.down_w = os.pipe()

    def report(self, message: dict[str, Any]) -> None:
        os.write(self.up_w, (json.dumps(message) + "\n").encode())

    def read(self, buffer: bytearray) -> dict[str, Any]:
        deadline = time.monotonic() + CHILD_SECONDS
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.up_r], [], [], left)[0]:
                raise AssertionError("the child did not report in time")
            chunk = os.read(self.up_r, 4096)
            if not chunk:
                raise AssertionError(f"the child ended without reporting: {bytes(buffer)!r}")
            buffer += chunk
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        return dict(json.loads(line))

    def go(self) -> None:
        os.write(self.down_w, b"g")

    def wait_go(self) -> None:
        select.select([self.down_r], [], [], CHILD_SECONDS)

    def close(self) -> None:
        for fd in (self.up_r, self.up_w, self.down_r, self.down_w):
            os.close(fd)


def _reap(pid: int) -> int:
    """The child's exit status, killing it if it outlives the bound."""
    deadline = time.monotonic() + CHILD_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child did not exit in time")


def _fork_and_follow(child: Callable[[_Pipe], None], move: Callable[[], None],
                     meanwhile: Callable[[], None] = lambda: None,
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fork; let the child make its first request; run ``meanwhile`` in the parent;
    ``move`` the service; collect the child's reports."""
    pipe = _Pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            child(pipe)
            code = 0
        except BaseException as exc:  # reported to the parent
            pipe.report({"error": repr(exc)})
        finally:
            os._exit(code)
    try:
        buffer = bytearray()
        first = pipe.read(buffer)
        meanwhile()
        move()
        pipe.go()
        last = pipe.read(buffer)
        assert _reap(pid) == 0, (first, last)
    finally:
        pipe.close()
    return first, last


def test_sync_client_follows_discovery_and_opens_its_own_connections(
        backends: Any, tmp: Path) -> None:
    """A MeshClient used before os.fork(): the child follows an endpoint change made
    after the fork (its discovery runs again) on connections of its own, and the
    parent's pooled connection keeps serving the parent."""
    servers: Backend = backends(2)
    a, b = servers.servers
    path = tmp / "users.json"
    _write(path, a.address)
    with meshlib.MeshClient(services={"users": f"file://{path}"}) as client:
        assert _sync_get(client) == a.address
        assert a.connection_count == 1

        def child(pipe: _Pipe) -> None:
            _follow_in_child(lambda: _sync_get(client), pipe.report, pipe.wait_go, b.address)

        def meanwhile() -> None:
            # the child's request came on a connection of its own, and the parent's
            # pooled one still serves the parent
            assert a.connection_count == 2
            assert _sync_get(client) == a.address
            assert a.connection_count == 2

        first, last = _fork_and_follow(child, lambda: _write(path, b.address), meanwhile)
        assert first == {"first": a.address}
        assert last["last"] == b.address, last
        # the parent's discovery is intact too
        deadline = time.monotonic() + CHILD_SECONDS
        while _sync_get(client) != b.address and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _sync_get(client) == b.address


def test_a_client_forked_before_its_first_answer_starts_discovery_in_the_child(
        backends: Any, tmp: Path) -> None:
    """gunicorn --preload builds the client and forks at once, before discovery has
    answered: each child's first request waits for its own discovery's answer."""
    servers: Backend = backends(2)
    a, b = servers.servers
    path = tmp / "users.json"
    _write(path, a.address)
    with meshlib.MeshClient(services={"users": f"file://{path}"}) as client:
        def child(pipe: _Pipe) -> None:
            _follow_in_child(lambda: _sync_get(client), pipe.report, pipe.wait_go, b.address)

        first, last = _fork_and_follow(child, lambda: _write(path, b.address))
        assert first == {"first": a.address}
        assert last["last"] == b.address, last


def test_async_client_in_a_child_uses_its_own_connections(backends: Any, tmp: Path) -> None:
    """An AsyncMeshClient used on a loop that is still open at the fork: the child's
    own loop gets connections of its own (the parent's, bound to the parent's loop,
    are never touched) and follows the endpoint change made after the fork."""
    servers: Backend = backends(2)
    a, b = servers.servers
    path = tmp / "users.json"
    _write(path, a.address)
    client = meshlib.AsyncMeshClient(services={"users": f"file://{path}"})

    async def get() -> str:
        response = await client.get("http://users/x")
        response.raise_for_status()
        return str(response.extensions["meshlib"]["endpoint"])

    parent_loop = asyncio.new_event_loop()
    try:
        assert parent_loop.run_until_complete(get()) == a.address
        assert a.connection_count == 1

        def child(pipe: _Pipe) -> None:
            loop = asyncio.new_event_loop()
            _follow_in_child(lambda: loop.run_until_complete(
                asyncio.wait_for(get(), CHILD_SECONDS)), pipe.report, pipe.wait_go, b.address)

        def meanwhile() -> None:
            assert a.connection_count == 2
            assert parent_loop.run_until_complete(get()) == a.address
            assert a.connection_count == 2

        first, last = _fork_and_follow(child, lambda: _write(path, b.address), meanwhile)
        assert first == {"first": a.address}
        assert last["last"] == b.address, last
        deadline = time.monotonic() + CHILD_SECONDS
        while parent_loop.run_until_complete(get()) != b.address \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert parent_loop.run_until_complete(get()) == b.address
    finally:
        parent_loop.run_until_complete(client.aclose())
        parent_loop.close()


def _connected_to(port: int) -> int:
    """How many of this process's sockets are connected to ``port`` on loopback."""
    return sum(isinstance(peer, tuple) and peer[1] == port for _, _, peer in open_sockets())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_child_does_not_hold_the_parent_s_connections_open(
        kind: str, backends: Any, tmp: Path) -> None:
    """When the parent closes its pooled connection while the child lives, the server
    sees it close: the child let go of its copy at the fork (and keeps its own)."""
    servers: Backend = backends(1)
    a = servers.servers[0]
    path = tmp / "users.json"
    _write(path, a.address)
    loop = asyncio.new_event_loop()
    if kind == "sync":
        client: Any = meshlib.MeshClient(services={"users": f"file://{path}"})
        get: Callable[[], str] = lambda: _sync_get(client)  # noqa: E731
        close: Callable[[], None] = client.close
    else:
        client = meshlib.AsyncMeshClient(services={"users": f"file://{path}"})

        async def aget() -> str:
            return str((await client.get("http://users/x")).extensions["meshlib"]["endpoint"])

        get = lambda: loop.run_until_complete(aget())  # noqa: E731
        close = lambda: loop.run_until_complete(client.aclose())  # noqa: E731
    try:
        assert get() == a.address
        assert a.connection_count == 1

        def child(pipe: _Pipe) -> None:
            own = asyncio.new_event_loop()

            def one() -> str:
                if kind == "sync":
                    return _sync_get(client)
                response = own.run_until_complete(client.get("http://users/x"))
                return str(response.extensions["meshlib"]["endpoint"])

            assert one() == a.address
            pipe.report({"first": _connected_to(a.port)})
            pipe.wait_go()
            pipe.report({"last": one()})

        def meanwhile() -> None:
            assert a.connection_count == 2  # the parent's and the child's own
            close()  # the parent closes its connection, the child still lives
            deadline = time.monotonic() + CHILD_SECONDS
            while a.connection_count > 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert a.connection_count == 1

        first, last = _fork_and_follow(child, lambda: None, meanwhile)
        assert first == {"first": 1}  # the child's sockets to the endpoint: its own only
        assert last["last"] == a.address, last
    finally:
        close()
        loop.close()


def test_routes_file_is_followed_in_the_child(backends: Any, tmp: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The MESHLIB_ROUTES watch runs again in the child: a route changed after the
    fork sends the child's requests to the new service."""
    servers: Backend = backends(2)
    a, b = servers.servers
    routes = tmp / "routes.json"

    def route_to(service: str) -> None:
        temp = routes.with_suffix(".tmp")
        temp.write_text(json.dumps({"api": [{"to": service}]}))
        os.replace(temp, routes)

    route_to("users-a")
    monkeypatch.setenv("MESHLIB_ROUTES", str(routes))
    services = {"users-a": f"static://{a.address}", "users-b": f"static://{b.address}"}
    with meshlib.MeshClient(services=services) as client:
        def get() -> str:
            response = client.get("http://api/x")
            response.raise_for_status()
            return str(response.extensions["meshlib"]["endpoint"])

        assert get() == a.address

        def child(pipe: _Pipe) -> None:
            _follow_in_child(get, pipe.report, pipe.wait_go, b.address)

        first, last = _fork_and_follow(child, lambda: route_to("users-b"))
        assert first == {"first": a.address}
        assert last["last"] == b.address, last


def test_a_lock_held_by_a_parent_thread_at_the_fork_is_not_inherited(
        backends: Any, tmp: Path) -> None:
    """The fork happens while another thread of the parent holds the transport's lock
    (it builds a pool): the child's requests do not wait for a thread it does not have."""
    servers: Backend = backends(1)
    path = tmp / "users.json"
    _write(path, servers.servers[0].address)
    with meshlib.MeshClient(services={"users": f"file://{path}"}) as client:
        assert _sync_get(client) == servers.servers[0].address
        lock = client.mesh_transport._lock
        held, release = threading.Event(), threading.Event()

        def holder() -> None:
            with lock:
                held.set()
                release.wait(CHILD_SECONDS)

        thread = threading.Thread(target=holder, daemon=True)
        thread.start()
        held.wait(CHILD_SECONDS)
        try:
            def child(pipe: _Pipe) -> None:
                signal.alarm(int(CHILD_SECONDS))  # a deadlocked child must end
                _follow_in_child(lambda: _sync_get(client), pipe.report, pipe.wait_go,
                                 servers.servers[0].address)

            first, last = _fork_and_follow(child, lambda: None)
        finally:
            release.set()
            thread.join(CHILD_SECONDS)
        assert first == {"first": servers.servers[0].address}
        assert last["last"] == servers.servers[0].address, last


def test_a_client_built_in_the_child_while_a_parent_thread_held_meshlib_s_locks(
        backends: Any, tmp: Path) -> None:
    """The fork happens while other threads of the parent hold meshlib's process-wide
    locks (a client being built registers itself): the child builds a client and
    sends a request without waiting for them."""
    servers: Backend = backends(1)
    address = servers.servers[0].address
    path = tmp / "users.json"
    _write(path, address)
    from meshlib import _registry, _telemetry

    held, release = threading.Event(), threading.Event()
    locks = [_registry._lock, _telemetry._meshes_lock]

    def holder() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(CHILD_SECONDS)
        for lock in locks:
            lock.release()

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    held.wait(CHILD_SECONDS)
    try:
        def child(pipe: _Pipe) -> None:
            signal.alarm(int(CHILD_SECONDS))  # a deadlocked child must end
            with meshlib.MeshClient(services={"users": f"file://{path}"}) as client:
                _follow_in_child(lambda: _sync_get(client), pipe.report, pipe.wait_go,
                                 address)

        first, last = _fork_and_follow(child, lambda: None)
    finally:
        release.set()
        thread.join(CHILD_SECONDS)
    assert first == {"first": address}
    assert last["last"] == address, last


def _mp_child(client: meshlib.MeshClient, path: str, wanted: str,
              queue: Any, go: Any) -> None:
    """multiprocessing target: first request, then follow the move (bounded)."""
    _follow_in_child(lambda: _sync_get(client), queue.put, lambda: go.wait(CHILD_SECONDS),
                     wanted)


def test_multiprocessing_fork_child_follows_discovery(backends: Any, tmp: Path) -> None:
    """multiprocessing's 'fork' start method: the child process serves traffic with
    the client inherited from the parent and follows a change made after the fork."""
    servers: Backend = backends(2)
    a, b = servers.servers
    path = tmp / "users.json"
    _write(path, a.address)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    go = context.Event()
    with meshlib.MeshClient(services={"users": f"file://{path}"}) as client:
        assert _sync_get(client) == a.address
        process = context.Process(target=_mp_child,
                                  args=(client, str(path), b.address, queue, go))
        process.start()
        try:
            assert queue.get(timeout=CHILD_SECONDS) == {"first": a.address}
            assert a.connection_count == 2  # the child's own connection
            assert _sync_get(client) == a.address
            assert a.connection_count == 2
            _write(path, b.address)
            go.set()
            last = queue.get(timeout=CHILD_SECONDS)
            process.join(CHILD_SECONDS)
            assert process.exitcode == 0
        finally:
            if process.is_alive():
                process.kill()
                process.join()
            queue.close()
            queue.join_thread()
        assert last["last"] == b.address, last
