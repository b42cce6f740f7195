"""Requests that a respx mock answers never wait for discovery (meshlib._mocks)."""

from __future__ import annotations

import httpx
import pytest
import respx

import meshlib

#: production-style discovery that never answers here (nothing listens on that port)
SRV = "dns+srv://_http._tcp.users.example.com?nameserver=127.0.0.1:9"
POLICY = meshlib.Policy(timeout=3.0)


def test_mocked_request_to_undiscovered_service_is_answered() -> None:
    """With dns+srv:// discovery that never answers, the respx mock answers anyway."""
    with respx.mock() as mock:
        route = mock.get("http://users/v1/me").respond(json={"name": "ada"})
        with meshlib.MeshClient(services={"users": SRV}, policy=POLICY) as client:
            response = client.get("http://users/v1/me")
    assert response.json() == {"name": "ada"}
    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.url == "http://users/v1/me"
    assert "x-mesh-timeout-ms" in sent.headers
    assert response.extensions["meshlib"]["service"] == "users"
    assert response.extensions["meshlib"]["endpoint"] is None
    assert response.extensions["meshlib"]["attempts"] == 1


async def test_async_mocked_request_is_answered() -> None:
    """The async client too."""
    with respx.mock() as mock:
        mock.post("http://users/v1/orders").respond(201)
        async with meshlib.AsyncMeshClient(services={"users": SRV}, policy=POLICY) as client:
            response = await client.post("http://users/v1/orders", json={})
    assert response.status_code == 201


def test_unmatched_request_still_waits_for_discovery() -> None:
    """A request no mock matches waits within its deadline, then NoEndpointsError."""
    with respx.mock(assert_all_called=False) as mock:
        mock.get("http://users/other").respond(200)
        with meshlib.MeshClient(services={"users": SRV},
                                policy=meshlib.Policy(timeout=0.3)) as client:
            with pytest.raises(meshlib.NoEndpointsError):
                client.get("http://users/v1/me")


def test_pass_through_route_is_not_a_mock() -> None:
    """A respx route marked pass-through does not answer: discovery is awaited."""
    with respx.mock(assert_all_called=False) as mock:
        mock.get("http://users/v1/me").pass_through()
        with meshlib.MeshClient(services={"users": SRV},
                                policy=meshlib.Policy(timeout=0.3)) as client:
            with pytest.raises(meshlib.NoEndpointsError):
                client.get("http://users/v1/me")


def test_side_effect_error_is_raised_as_httpx_raises_it() -> None:
    """A mocked ConnectError surfaces as such."""
    with respx.mock() as mock:
        mock.get("http://users/v1/me").mock(side_effect=httpx.ConnectError("refused"))
        with meshlib.MeshClient(services={"users": SRV}, policy=POLICY) as client:
            with pytest.raises(httpx.ConnectError):
                client.get("http://users/v1/me")
