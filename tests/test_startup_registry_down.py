"""Start-up against a registry that is down (issue 8): a failing first answer does not
make a service ready with no endpoints; requests wait within their deadline for the
first good answer, and the NoEndpointsError names the discovery failure."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import meshlib
from conftest import BackendFactory
from meshlib import Policy
from servers import Etcd, free_port

PREFIX = "/mesh/users/"


@pytest.mark.parametrize("kind", ["etcd", "consul"])
def test_registry_down_request_waits_its_deadline_and_names_the_failure(kind: str) -> None:
    """A closed loopback port: the request with timeout=1 waits (most of) its second, not
    0.00 s, and the error names the discovery URL and its last error."""
    url = f"{kind}://127.0.0.1:{free_port()}" + (PREFIX if kind == "etcd" else "/users")
    with meshlib.MeshClient(services={"users": url}, policy=Policy(timeout=1)) as client:
        start = time.monotonic()
        with pytest.raises(meshlib.NoEndpointsError) as caught:
            client.get("http://users/")
        waited = time.monotonic() - start
        assert client.snapshot()["services"]["users"]["ready"] is False
    message = str(caught.value)
    assert waited >= 0.8, f"failed after {waited:.2f} s instead of waiting for discovery"
    assert url in message
    assert "last error" in message
    assert "onnect" in message  # ConnectError / connection refused, as the kind words it


async def test_registry_down_async_client_waits_too() -> None:
    """The same rule for AsyncMeshClient."""
    url = f"consul://127.0.0.1:{free_port()}/users"
    async with meshlib.AsyncMeshClient(services={"users": url},
                                       policy=Policy(timeout=1)) as client:
        start = time.monotonic()
        with pytest.raises(meshlib.NoEndpointsError, match="last error"):
            await client.get("http://users/")
        assert time.monotonic() - start >= 0.8


def test_registry_that_comes_up_within_the_deadline_serves_the_request(
        backends: BackendFactory) -> None:
    """etcd is down when the request starts and comes up while it waits: the request
    succeeds within its deadline instead of failing at once."""
    b = backends(1)
    host, port = b.addresses[0].rsplit(":", 1)
    etcd = Etcd()
    try:
        etcd.put(f"{PREFIX}a", {"host": host, "port": int(port)})
        etcd.kill_process()  # down, with the registration kept in its data directory
        result: dict[str, Any] = {}
        with meshlib.MeshClient(services={"users": f"etcd://{etcd.address}{PREFIX}"},
                                policy=Policy(timeout=15)) as client:

            def request() -> None:
                start = time.monotonic()
                try:
                    result["status"] = client.get("http://users/").status_code
                except Exception as exc:  # reported by the assertion below
                    result["error"] = exc
                result["waited"] = time.monotonic() - start

            caller = threading.Thread(target=request)
            caller.start()
            time.sleep(0.3)  # the request is waiting; discovery has failed at least once
            assert caller.is_alive()
            assert client.snapshot()["services"]["users"]["ready"] is False
            etcd.start()
            caller.join(20)
            assert not caller.is_alive()
        assert result.get("status") == 200, result
        assert result["waited"] >= 0.3
    finally:
        etcd.stop()


async def test_waiting_requests_leave_nothing_behind_during_an_outage() -> None:
    """Many requests that wait out their deadline while the registry is down: each one's
    waiter is removed again (a long outage must not pile up one future per request)."""
    import asyncio

    url = f"consul://127.0.0.1:{free_port()}/users"
    async with meshlib.AsyncMeshClient(services={"users": url},
                                       policy=Policy(timeout=0.2)) as client:
        results = await asyncio.gather(*(client.get("http://users/") for _ in range(20)),
                                       return_exceptions=True)
        assert all(isinstance(r, meshlib.NoEndpointsError) for r in results)
        runtime = client.mesh_transport.mesh.runtimes["users"]
        assert runtime._waiters == []
