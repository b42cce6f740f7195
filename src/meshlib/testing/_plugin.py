"""meshlib's pytest plugin (entry point `pytest11`, name `meshlib`): fleets, testing mode.

Loaded automatically when meshlib is installed; disable with `-p no:meshlib`.

* `mesh_fleet`: a factory. `mesh_fleet(3, latency=0.01)` returns a
  started `meshlib.testing.Fleet` (arguments as `Fleet`); every
  fleet it started is closed at the end of the test.
* `mesh_testing`: testing mode on for the test (no backoff or
  `Retry-After` sleeps), the previous state restored afterwards. It gives
  `meshlib.testing.set_testing()`, so a test may narrow it further:
  `mesh_testing(attempts=1)`.

A user's integration test under faults:

```
def test_survives_one_dead_endpoint(mesh_fleet, mesh_testing):
    fleet = mesh_fleet(3)
    fleet.set(0, refuse=True)
    with meshlib.MeshClient(services={"users": fleet.url}) as client:
        assert client.get("http://users/me").status_code == 200
```
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from . import set_testing
    from ._fleet import Fleet, FleetFactory

__all__ = ["mesh_fleet", "mesh_testing"]


@pytest.fixture
def mesh_fleet() -> Iterator[FleetFactory]:
    """Factory of started `meshlib.testing.Fleet` s, each closed at teardown."""
    from ._fleet import Fleet

    started: list[Fleet] = []

    def factory(n: int = 1, **behaviour: Any) -> Fleet:
        fleet = Fleet(n, **behaviour)
        fleet.start()
        started.append(fleet)
        return fleet

    yield factory
    for fleet in reversed(started):
        fleet.close()


@pytest.fixture
def mesh_testing() -> Iterator[type[set_testing]]:
    """meshlib's testing mode for the test; yields `set_testing` to narrow it further."""
    from . import set_testing

    with set_testing(True):
        yield set_testing
