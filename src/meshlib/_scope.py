"""Scoped deadlines and policy overrides, carried by contextvars.

``meshlib.deadline(0.5)`` and ``meshlib.policy(retries=0)`` work as decorators
on sync and async functions and as sync and async context managers. A deadline
is an absolute time fixed on entry; nested deadlines take the earliest (as
trio's ``current_effective_deadline``).
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

__all__ = ["current_deadline", "current_overrides", "deadline", "policy", "time_left"]

F = TypeVar("F", bound=Callable[..., Any])

_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar(
    "meshlib_deadline", default=math.inf
)
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_OVERRIDES: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "meshlib_policy", default=_EMPTY
)


def current_deadline() -> float:
    """The earliest scoped deadline as a ``time.monotonic()`` value, ``inf`` if none."""
    return _DEADLINE.get()


def time_left() -> float:
    """Seconds left before the scoped deadline (``inf`` without one; may be negative)."""
    return _DEADLINE.get() - time.monotonic()


def release_deadline(value: float) -> None:
    """Set the scoped deadline back to ``value`` for the rest of the current context.

    For server middleware: once the response has been sent, work that goes on
    in the same task (background tasks) is no longer bound by the caller's
    deadline. The enclosing ``meshlib.deadline`` still restores the outer value
    when it exits.
    """
    _DEADLINE.set(value)


def current_overrides() -> Mapping[str, Any]:
    """The policy fields set by enclosing ``meshlib.policy(...)`` scopes (inner wins)."""
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
    """Bound every mesh request made inside to ``seconds`` from entry.

    Use as ``@meshlib.deadline(0.5)`` on a sync or async function, or as
    ``with meshlib.deadline(0.5):`` / ``async with ...``. Nested deadlines take
    the earliest. Raises ``ConfigError`` for a negative, NaN or non-number value.

    .. versionadded:: 0.1
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or (
            math.isnan(seconds) or seconds < 0
        ):
            raise ConfigError(f"meshlib.deadline needs seconds >= 0, got {seconds!r}")
        self.seconds = float(seconds)

    def _enter_value(self) -> tuple[contextvars.ContextVar[Any], Any]:
        return _DEADLINE, min(_DEADLINE.get(), time.monotonic() + self.seconds)


class policy(_Scope):
    """Override policy fields for every mesh request made inside.

    ``@meshlib.policy(retries=0, idempotent=True)`` or ``with meshlib.policy(...)``.
    A scoped override beats the service's and the client's policy; nested
    scopes merge, the inner one winning. Raises ``ConfigError`` for an unknown
    field or a bad value.

    .. versionadded:: 0.1
    """

    def __init__(self, **changes: Any) -> None:
        Policy().replace(**changes)  # validate now, not at the first request
        self.changes: Mapping[str, Any] = MappingProxyType(dict(changes))

    def _enter_value(self) -> tuple[contextvars.ContextVar[Any], Any]:
        outer = _OVERRIDES.get()
        return _OVERRIDES, MappingProxyType({**outer, **self.changes}) if outer else self.changes


for _cls in (deadline, policy):
    _cls.__module__ = "meshlib"
