"""A fleet of real endpoints on 127.0.0.1, misbehaving on demand."""

import httpx
import pytest

import meshlib
from meshlib.testing import FleetFactory


def test_a_dead_endpoint_is_failed_over(mesh_fleet: FleetFactory) -> None:
    fleet = mesh_fleet(3, latency=0.01)  # started now, closed after the test
    fleet.set(0, refuse=True)  # nothing listens there any more
    with meshlib.MeshClient(services={"users": fleet.url}) as client:
        for _ in range(10):
            assert client.get("http://users/v1/me").status_code == 200
    assert fleet.hits()[0] == []  # every request was answered by the others


def test_a_stalled_service_ends_at_the_deadline(mesh_fleet: FleetFactory) -> None:
    fleet = mesh_fleet(2, stall=True)
    with meshlib.MeshClient(services={"users": fleet.url}) as client, \
            meshlib.deadline(0.2), pytest.raises(meshlib.DeadlineExceeded):
        client.get("http://users/v1/me")


def test_a_post_is_never_sent_twice(mesh_fleet: FleetFactory, mesh_testing: object) -> None:
    fleet = mesh_fleet(2, drop=1.0)  # read the request, then close the connection
    with meshlib.MeshClient(services={"orders": fleet.url}) as client:
        with pytest.raises(httpx.TransportError):
            client.post("http://orders/v1/orders", json={"item": 42})
        assert sum(len(hits) for hits in fleet.hits()) == 1
        with pytest.raises(httpx.TransportError):
            client.get("http://orders/v1/orders/1")  # a GET is retried (2 retries by default)
        assert sum(len(hits) for hits in fleet.hits()) == 1 + 3
