"""The pytest plugin ``meshlib`` (entry point pytest11), run as a user's test suite would."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = '''
import httpx
import pytest

import meshlib
import meshlib.testing

FLEETS = []


def test_one_dead_endpoint(mesh_fleet, mesh_testing):
    fleet = mesh_fleet(3, latency=0.01)
    FLEETS.append(fleet)
    fleet.set(0, refuse=True)
    with meshlib.MeshClient(services={"users": fleet.url}) as client:
        for _ in range(6):
            assert client.get("http://users/me").status_code == 200
    assert fleet.hits()[0] == []
    assert meshlib.testing.is_testing()


def test_narrowed_testing_mode(mesh_fleet, mesh_testing):
    fleet = mesh_fleet(error_rate=1.0, retry_after="30")
    FLEETS.append(fleet)
    mesh_testing(attempts=1)
    with meshlib.MeshClient(services={"users": fleet.url}) as client:
        assert client.get("http://users/me").status_code == 503
    assert len(fleet.hits()[0]) == 1


async def test_async_user(mesh_fleet, mesh_testing):
    fleet = mesh_fleet(2, stall=True)
    FLEETS.append(fleet)
    fleet.set(1, stall=False)
    policy = meshlib.Policy(attempt_timeout=0.05, hedge=meshlib.Hedge(delay=0.01))
    async with meshlib.AsyncMeshClient(services={"users": fleet.url}, policy=policy) as client:
        response = await client.get("http://users/me")
    assert response.json()["endpoint"] == fleet.endpoints[1]


def test_after_teardown():
    assert FLEETS and not any(fleet.running for fleet in FLEETS)
    assert not meshlib.testing.is_testing()
'''

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


def test_a_users_suite_uses_both_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)


def test_the_plugin_is_registered_and_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_user="def test_x(mesh_fleet):\n    pass\n")
    listed = pytester.runpytest("--fixtures")
    listed.stdout.fnmatch_lines(["*mesh_fleet*", "*mesh_testing*"])
    off = pytester.runpytest("-p", "no:meshlib")
    off.stdout.fnmatch_lines(["*fixture 'mesh_fleet' not found*"])
