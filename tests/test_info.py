"""meshlib.MeshInfo is the type of response.extensions["meshlib"]: same keys, same types."""

from __future__ import annotations

import typing

import meshlib
from meshlib.testing import Fleet


def test_extensions_hold_exactly_the_typed_keys() -> None:
    """A real response's extensions["meshlib"] has MeshInfo's keys, of its types."""
    hints = typing.get_type_hints(meshlib.MeshInfo)
    with Fleet(1) as fleet, meshlib.MeshClient(services={"users": fleet.url}) as client:
        info: meshlib.MeshInfo = client.get("http://users/x").extensions["meshlib"]
    assert set(info) == set(hints) == {"service", "route", "endpoint", "attempts", "hedged"}
    assert info["service"] == "users" and info["route"] is None
    assert isinstance(info["endpoint"], str) and info["attempts"] == 1
    assert info["hedged"] is False
    assert meshlib.MeshInfo.__module__ == "meshlib"
