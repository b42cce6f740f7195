"""meshlib.deadline and meshlib.policy as decorators and (async) context managers."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

import meshlib
from meshlib._scope import current_deadline, current_overrides, time_left


def test_deadline_context_manager_sets_and_restores() -> None:
    """Inside the block a deadline is set; outside there is none."""
    assert current_deadline() == math.inf
    with meshlib.deadline(0.5):
        assert 0.4 < time_left() <= 0.5
    assert current_deadline() == math.inf


def test_nested_deadlines_take_the_earliest() -> None:
    """An inner, later deadline does not extend an outer, earlier one."""
    with meshlib.deadline(0.2):
        outer = current_deadline()
        with meshlib.deadline(5):
            assert current_deadline() == outer
        with meshlib.deadline(0.1):
            assert current_deadline() < outer


def test_deadline_decorator_fixes_the_deadline_on_each_call() -> None:
    """As a decorator the deadline starts when the function is called, not defined."""
    @meshlib.deadline(1.0)
    def handler() -> float:
        return time_left()

    time.sleep(0.05)
    assert handler() > 0.97


async def test_async_decorator_and_async_with() -> None:
    """Both forms work on coroutines and follow the task."""
    @meshlib.deadline(0.3)
    async def handler() -> float:
        await asyncio.sleep(0)
        return time_left()

    assert 0.2 < await handler() <= 0.3
    async with meshlib.deadline(0.1):
        assert time_left() <= 0.1
    assert current_deadline() == math.inf


def test_policy_scopes_merge_with_the_inner_one_winning() -> None:
    """Nested meshlib.policy scopes merge their fields; the inner value wins."""
    with meshlib.policy(retries=0, idempotent=True):
        with meshlib.policy(retries=3):
            assert dict(current_overrides()) == {"retries": 3, "idempotent": True}
        assert dict(current_overrides()) == {"retries": 0, "idempotent": True}
    assert dict(current_overrides()) == {}


@pytest.mark.parametrize("seconds", [-1, math.nan, "1"])
def test_bad_deadline_raises_config_error(seconds: object) -> None:
    """Negative, NaN and non-number deadlines are rejected."""
    with pytest.raises(meshlib.ConfigError, match="deadline"):
        meshlib.deadline(seconds)  # type: ignore[arg-type]


def test_bad_policy_field_raises_config_error_at_once() -> None:
    """An unknown or invalid field fails when the scope is made, not at the request."""
    with pytest.raises(meshlib.ConfigError, match="retries"):
        meshlib.policy(retries=-2)
    with pytest.raises(meshlib.ConfigError, match="bogus"):
        meshlib.policy(bogus=1)


async def test_one_scope_object_entered_by_many_tasks_at_once() -> None:
    """A module-level scope (FAST = meshlib.policy(...)) can be used by concurrent tasks."""
    fast = meshlib.policy(retries=0)
    short = meshlib.deadline(5)

    async def worker(delay: float) -> tuple[int, bool]:
        async with fast, short:
            await asyncio.sleep(delay)
            return current_overrides()["retries"], math.isfinite(current_deadline())

    results = await asyncio.gather(worker(0.02), worker(0.01), worker(0.0))
    assert results == [(0, True)] * 3
    assert dict(current_overrides()) == {} and current_deadline() == math.inf


def test_one_scope_object_entered_by_many_threads_at_once() -> None:
    """The same holds across threads."""
    import threading

    shared = meshlib.deadline(5)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(200):
                with shared:
                    assert math.isfinite(current_deadline())
                assert current_deadline() == math.inf
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_decorating_a_generator_is_refused_with_a_clear_error() -> None:
    """A generator would not run inside the scope: say so instead of silently ignoring it."""
    with pytest.raises(meshlib.ConfigError, match="generator"):
        @meshlib.deadline(1)
        def numbers() -> object:
            yield 1
