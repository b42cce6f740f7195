"""Policy values: defaults from docs/configuration.md, immutability, replace(), clear errors."""

from __future__ import annotations

import dataclasses
import math

import pytest

import meshlib
from meshlib import Backoff, Breaker, ConfigError, Hedge, Policy, RetryBudget


def test_defaults_match_the_contract() -> None:
    """The defaults are the ones docs/configuration.md lists."""
    policy = Policy()
    assert policy.timeout == 10.0
    assert policy.attempt_timeout is None
    assert policy.retries == 2
    assert policy.retry_on == (502, 503, 504)
    assert policy.retry_budget == RetryBudget(ratio=0.2, min_per_second=10, ttl=10.0)
    assert policy.backoff == Backoff(base=0.025, max=1.0)
    assert policy.balancer == "p2c-ewma"
    assert policy.breaker == Breaker(failures=5, reset_timeout=30.0)
    assert policy.hedge is None
    assert policy.idempotent is None


def test_policy_is_immutable_and_replace_returns_a_new_one() -> None:
    """Fields cannot be assigned; replace() makes a changed copy."""
    policy = Policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retries = 5  # type: ignore[misc]
    changed = policy.replace(retries=5, hedge=Hedge(delay="p95"))
    assert changed.retries == 5 and policy.retries == 2
    assert changed.hedge == Hedge(delay="p95")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"timeout": 0}, "Policy.timeout"),
        ({"timeout": math.nan}, "Policy.timeout"),
        ({"retries": -1}, "Policy.retries"),
        ({"retries": 1.5}, "Policy.retries"),
        ({"balancer": "fastest"}, "'fastest'"),
        ({"retry_on": (700,)}, "700"),
        ({"hedge": 0.05}, "Policy.hedge"),
        ({"idempotent": "yes"}, "'yes'"),
        ({"idempotent": 1}, "idempotent"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_bad_values_raise_config_error_naming_them(changes: dict[str, object],
                                                   needle: str) -> None:
    """A bad field raises ConfigError naming the field or the value."""
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        Policy().replace(**changes)


def test_parts_validate_their_fields() -> None:
    """RetryBudget, Backoff, Breaker and Hedge reject nonsense."""
    with pytest.raises(ConfigError, match="ratio"):
        RetryBudget(ratio=-1)
    with pytest.raises(ConfigError, match="base"):
        Backoff(base=-0.1)
    with pytest.raises(ConfigError, match="failures"):
        Breaker(failures=0)
    with pytest.raises(ConfigError, match="delay"):
        Hedge(delay="p99")  # type: ignore[arg-type]


def test_config_error_is_a_value_error_and_mesh_errors_are_httpx_errors() -> None:
    """The error tree stays inside httpx's hierarchy (ConfigError is a ValueError)."""
    import httpx

    assert issubclass(meshlib.ConfigError, ValueError)
    assert issubclass(meshlib.MeshError, httpx.TransportError)
    assert issubclass(meshlib.NoEndpointsError, meshlib.MeshError)
    assert issubclass(meshlib.CircuitOpenError, meshlib.MeshError)
    assert issubclass(meshlib.DeadlineExceeded, httpx.TimeoutException)


def test_public_names_are_exported_under_meshlib() -> None:
    """Every public name (docs/reference.md) is importable from meshlib and shows the
    public module."""
    for name in ["MeshClient", "AsyncMeshClient", "MeshTransport", "AsyncMeshTransport",
                 "Service", "Policy", "RetryBudget", "Backoff", "Breaker", "Hedge", "SlowStart",
                 "deadline", "policy", "MeshError", "NoEndpointsError", "CircuitOpenError",
                 "DeadlineExceeded", "ConfigError"]:
        assert name in meshlib.__all__
        assert getattr(meshlib, name).__module__ == "meshlib"
    assert sorted(meshlib.__all__) == meshlib.__all__
