"""Mock a service with respx: routes keyed on the service URL match MeshClient's requests."""

import httpx
import pytest
import respx

import meshlib
import meshlib.testing


def user_name(client: httpx.Client) -> str:
    """The code under test: it calls the `users` service through the mesh."""
    response = client.get("http://users/v1/me")
    response.raise_for_status()
    return str(response.json()["name"])


def test_user_name() -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.get("http://users/v1/me").respond(json={"name": "ada"})
        with meshlib.MeshClient(services={"users": "static://127.0.0.1:9"}) as client:
            assert user_name(client) == "ada"


def test_a_503_is_retried_without_sleeping() -> None:
    with meshlib.testing.set_testing(), respx.mock() as mock:
        route = mock.get("http://users/v1/me").mock(
            side_effect=[httpx.Response(503, headers={"Retry-After": "5"}),
                         httpx.Response(200, json={"name": "ada"})])
        with meshlib.MeshClient(services={"users": "static://127.0.0.1:9"}) as client:
            assert user_name(client) == "ada"  # at once, despite Retry-After: 5
        assert route.call_count == 2


def test_one_attempt_sees_the_mocked_failure() -> None:
    with meshlib.testing.set_testing(attempts=1), respx.mock() as mock:
        route = mock.get("http://users/v1/me").respond(503)
        with meshlib.MeshClient(services={"users": "static://127.0.0.1:9"}) as client, \
                pytest.raises(httpx.HTTPStatusError):
            user_name(client)
        assert route.call_count == 1


def test_production_discovery_does_not_wait() -> None:
    # the service's real discovery never answers here; the mock answers at once
    users = "dns+srv://_http._tcp.users.example.com?nameserver=127.0.0.1:9"
    with respx.mock() as mock:
        mock.get("http://users/v1/me").respond(json={"name": "ada"})
        with meshlib.MeshClient(services={"users": users}) as client:
            assert user_name(client) == "ada"
