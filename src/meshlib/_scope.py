"""Scoped deadlines and policy overrides, carried by contextvars.

`meshlib.deadline(0.5)` and `meshlib.policy(retries=0)` work as decorators
on sync and async functions and as sync and async context managers. A deadline
is an absolute time fixed on entry; nested deadlines take the earliest (as
trio's `current_effective_deadline`).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar, cast

from ._errors import ConfigError
from ._policy import Policy

__all__ = [
    "Deadline", "current_deadline", "current_overrides", "deadline", "describe_deadline",
    "header_source", "policy", "time_left",
]

F = TypeVar("F", bound=Callable[..., Any])

class Deadline(float):
    """An absolute deadline (a `time.monotonic()` value) that remembers where it came from.

    It is a `float` everywhere a time is computed; `seconds` and `source`
    only serve error messages: `DeadlineExceeded` names the budget that won.
    """

    __slots__ = ("seconds", "source")
    seconds: float
    source: str

    def __new__(cls, at: float, seconds: float, source: str) -> Deadline:
        self = super().__new__(cls, at)
        self.seconds = seconds
        self.source = source
        return self


def describe_deadline(at: float, timeout: float) -> str:
    """`"deadline 0.3 s from meshlib.deadline"` or `"timeout 2 s from Policy.timeout"`:
    which budget a request's deadline `at` came from (`timeout` is its policy's)."""
    if isinstance(at, Deadline):
        return f"deadline {at.seconds:g} s from {at.source}"
    return f"timeout {timeout:g} s from Policy.timeout"


def header_source(mesh_header: bool, grpc_header: bool, envoy_header: bool = False) -> str:
    """The `source` a server middleware gives the deadline it read from headers."""
    names = [name for name, present in (("x-mesh-timeout-ms", mesh_header),
                                        ("grpc-timeout", grpc_header),
                                        ("x-envoy-expected-rq-timeout-ms", envoy_header))
             if present]
    return "/".join(names or ["x-mesh-timeout-ms"]) + " header"


_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar(
    "meshlib_deadline", default=math.inf
)
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_OVERRIDES: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "meshlib_policy", default=_EMPTY
)


def current_deadline() -> float:
    """The earliest scoped deadline as a `time.monotonic()` value, `inf` if none."""
    return _DEADLINE.get()


def time_left() -> float:
    """Seconds left before the scoped deadline (`inf` without one; may be negative)."""
    return _DEADLINE.get() - time.monotonic()


def release_deadline(value: float) -> None:
    """Set the scoped deadline back to `value` for the rest of the current context.

    For server middleware: once the response has been sent, work that goes on
    in the same task (background tasks) is no longer bound by the caller's
    deadline. The enclosing `meshlib.deadline` still restores the outer value
    when it exits.
    """
    _DEADLINE.set(value)


def current_overrides() -> Mapping[str, Any]:
    """The policy fields set by enclosing `meshlib.policy(...)` scopes (inner wins)."""
    return _OVERRIDES.get()


_DEFAULTS: dict[contextvars.ContextVar[Any], Any] = {_DEADLINE: math.inf, _OVERRIDES: _EMPTY}

#: the tokens of the scopes entered as context managers in this context, innermost last,
#: keyed by scope object: one scope object may be entered by many threads and tasks at once
_ENTERED: contextvars.ContextVar[tuple[tuple[int, contextvars.Token[Any]], ...]] = (
    contextvars.ContextVar("meshlib_scopes_entered", default=()))


class _Scope:
    """A decorator and (async) context manager that sets a contextvar for its body."""

    def _enter_value(self) -> tuple[contextvars.ContextVar[Any], Any]:
        raise NotImplementedError

    def __enter__(self) -> _Scope:
        var, value = self._enter_value()
        _ENTERED.set((*_ENTERED.get(), (id(self), var.set(value))))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entered = _ENTERED.get()
        for index in range(len(entered) - 1, -1, -1):
            if entered[index][0] == id(self):
                token = entered[index][1]
                _ENTERED.set(entered[:index] + entered[index + 1:])
                try:
                    token.var.reset(token)
                except ValueError:  # exited in a copy of the context it was entered in
                    # (an async generator finalised by the event loop): restore by value
                    old = token.old_value
                    token.var.set(_DEFAULTS[token.var] if old is contextvars.Token.MISSING
                                  else old)
                return
        raise RuntimeError("meshlib scope exited in a context where it was not entered")

    async def __aenter__(self) -> _Scope:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise ConfigError(
                f"meshlib.{type(self).__name__} cannot decorate the generator {func.__name__!r}: "
                "a generator runs in its caller's context, step by step; open the scope "
                "around the code that consumes it instead")
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                var, value = self._enter_value()
                token = var.set(value)
                try:
                    return await func(*args, **kwargs)
                finally:
                    var.reset(token)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            var, value = self._enter_value()
            token = var.set(value)
            try:
                return func(*args, **kwargs)
            finally:
                var.reset(token)

        return cast(F, wrapper)


class deadline(_Scope):
    """Bound every mesh request made inside to `seconds` from entry.

    Use as `@meshlib.deadline(0.5)` on a sync or async function, or as
    `with meshlib.deadline(0.5):` / `async with ...`. Nested deadlines take
    the earliest. Raises `ConfigError` for a negative, NaN or non-number value.

    `source` is what a `DeadlineExceeded` message names when this deadline
    is the one that ran out (the server middlewares say which header set it).

    Added in version 0.1.
    """

    def __init__(self, seconds: float, *, source: str = "meshlib.deadline") -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or (
            math.isnan(seconds) or seconds < 0
        ):
            raise ConfigError(f"meshlib.deadline needs seconds >= 0, got {seconds!r}")
        self.seconds = float(seconds)
        self.source = source

    def _enter_value(self) -> tuple[contextvars.ContextVar[Any], Any]:
        outer = _DEADLINE.get()
        at = time.monotonic() + self.seconds
        return _DEADLINE, outer if outer <= at else Deadline(at, self.seconds, self.source)


#: policy fields that configure per-service state, which a scope cannot change
_PER_SERVICE = ("retry_budget", "breaker")


class policy(_Scope):
    """Override policy fields for every mesh request made inside.

    `@meshlib.policy(retries=0, idempotent=True)` or `with meshlib.policy(...)`.
    A scoped override beats the service's and the client's policy; nested
    scopes merge, the inner one winning. Raises `ConfigError` for an unknown
    field or a bad value, and for `retry_budget` and `breaker`: those
    are state shared by every request to a service, so they cannot be
    scoped (set them on the client's or the `Service`'s policy).

    Added in version 0.1.
    """

    def __init__(self, **changes: Any) -> None:
        Policy().replace(**changes)  # validate now, not at the first request
        for name in _PER_SERVICE:
            if name in changes:
                raise ConfigError(
                    f"meshlib.policy({name}=...) cannot be scoped: {name} is state kept per "
                    "service (one for every request to it), not a per-request setting; set it "
                    "on the client's or the Service's Policy instead")
        self.changes: Mapping[str, Any] = MappingProxyType(dict(changes))

    def _enter_value(self) -> tuple[contextvars.ContextVar[Any], Any]:
        outer = _OVERRIDES.get()
        return _OVERRIDES, MappingProxyType({**outer, **self.changes}) if outer else self.changes
