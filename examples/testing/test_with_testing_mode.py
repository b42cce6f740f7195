"""Testing mode: retries without sleeping, and a cap on attempts, as a fixture or a block."""

import meshlib
import meshlib.testing
from meshlib.testing import Fleet


def test_the_fixture_turns_testing_mode_on(mesh_testing: object) -> None:
    assert meshlib.testing.is_testing()  # off again after the test
    with Fleet(1, error_rate=1.0, retry_after="3") as fleet:
        with meshlib.MeshClient(services={"users": fleet.url},
                                policy=meshlib.Policy(retries=2)) as client:
            assert client.get("http://users/v1/me").status_code == 503  # no 2 x 3 s wait
        assert len(fleet.hits()[0]) == 3


def test_a_cap_on_attempts_for_one_block() -> None:
    hedged = meshlib.Policy(retries=2, hedge=meshlib.Hedge(delay=0.01))
    with Fleet(3, latency=0.2) as fleet, \
            meshlib.MeshClient(services={"users": fleet.url}, policy=hedged) as client:
        with meshlib.testing.set_testing(attempts=1):  # no retry, no hedge
            response = client.get("http://users/v1/me")
        assert response.extensions["meshlib"]["attempts"] == 1
        assert sum(len(hits) for hits in fleet.hits()) == 1
    assert not meshlib.testing.is_testing()  # the previous state is back
