"""Immutable policy values: what a request may do when things go wrong."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import ConfigError

__all__ = [
    "BALANCERS", "CLUSTER_FIELDS", "MAX_RETRIES", "MAX_SECONDS", "Backoff", "Breaker", "Hedge",
    "Policy", "RetryBudget", "SlowStart", "layered",
]

#: the longest duration any policy field may hold: one day. Every time a policy
#: sets is finite and small enough that ``monotonic() + t``, a conversion to
#: milliseconds, ``asyncio.wait_for`` and ``threading.Event.wait`` cannot overflow.
MAX_SECONDS = 86400.0
#: the most retries a policy may allow (each one also draws from the retry budget)
MAX_RETRIES = 100
#: the most values ``Policy.retry_on`` may hold (there are 500 status codes)
_MAX_STATUS_CODES = 500

BALANCERS = ("p2c-ewma", "least-request", "round-robin", "random")
BalancerName = Literal["p2c-ewma", "least-request", "round-robin", "random"]


def _check_number(
    owner: str, name: str, value: object, *, minimum: float = 0.0, allow_none: bool = False,
    strict: bool = False, maximum: float = MAX_SECONDS,
) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{owner}.{name} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum) or math.isinf(value) or value > maximum:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ConfigError(
            f"{owner}.{name} must be finite, {bound} and <= {maximum:g}, got {value!r}")


def not_a_policy(where: str, value: object) -> ConfigError:
    """The error for `where` (`"policy"`, `"Service policy"`...) given something
    that is not a `Policy`; the scoped `meshlib.policy(...)` (lower case) gets
    a pointer to `meshlib.Policy`."""
    changes = getattr(value, "changes", None)
    if type(value).__name__ == "policy" and isinstance(changes, Mapping):
        fields = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        return ConfigError(
            f"{where} must be a meshlib.Policy, got meshlib.policy({fields}), the scoped "
            f"override (a decorator or context manager); use meshlib.Policy({fields}) "
            "(capital P) here")
    return ConfigError(f"{where} must be a meshlib.Policy, got {value!r}")


def _check_int(owner: str, name: str, value: object, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(
            f"{owner}.{name} must be an int from {minimum} to {maximum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How many retries and hedges a service may add on top of its requests.

    Each logical request deposits `ratio` of a token, each retry or hedge
    withdraws one; deposits expire after `ttl` seconds; `min_per_second`
    extra attempts per second are always allowed (Finagle's `RetryBudget`).

    Added in version 0.1.
    """

    ratio: float = 0.2
    min_per_second: float = 10
    ttl: float = 10.0

    def __post_init__(self) -> None:
        _check_number("RetryBudget", "ratio", self.ratio, maximum=1000.0)
        _check_number("RetryBudget", "min_per_second", self.min_per_second, maximum=1e6)
        _check_number("RetryBudget", "ttl", self.ttl, minimum=1.0)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: sleep `uniform(0, min(max, base * 2**n))`.

    Added in version 0.1.
    """

    base: float = 0.025
    max: float = 1.0

    def __post_init__(self) -> None:
        _check_number("Backoff", "base", self.base)
        _check_number("Backoff", "max", self.max)


@dataclass(frozen=True, slots=True)
class Breaker:
    """Per-endpoint circuit breaker: `failures` consecutive failures open it
    for `reset_timeout` seconds, then one trial request closes or reopens it.

    Added in version 0.1.
    """

    failures: int = 5
    reset_timeout: float = 30.0
    #: at most this share (0..100) of a service's endpoints may be ejected for failed
    #: *answers* (5xx, timeouts); connection failures (refused, reset) can eject every
    #: endpoint. Envoy's ``max_ejection_percent``; see docs/reliability.md.
    max_ejection_percent: float = 50.0
    #: each failed half-open trial doubles the next open period, up to this many
    #: seconds (``None``: no backoff, every open period is ``reset_timeout``)
    max_reset_timeout: float | None = None

    def __post_init__(self) -> None:
        _check_int("Breaker", "failures", self.failures, 1, 1_000_000)
        _check_number("Breaker", "reset_timeout", self.reset_timeout)
        _check_number("Breaker", "max_ejection_percent", self.max_ejection_percent)
        _check_number("Breaker", "max_reset_timeout", self.max_reset_timeout, allow_none=True)
        if self.max_reset_timeout is not None and (
                self.max_reset_timeout < self.reset_timeout or self.max_reset_timeout > 86400):
            raise ConfigError(f"Breaker.max_reset_timeout must be between reset_timeout and "
                              f"86400 s, got {self.max_reset_timeout!r}")
        if self.max_ejection_percent > 100:
            raise ConfigError(f"Breaker.max_ejection_percent must be <= 100, "
                              f"got {self.max_ejection_percent!r}")


@dataclass(frozen=True, slots=True)
class SlowStart:
    """Ramp a new or recovered endpoint's share of traffic up over `window` seconds
    (Envoy's `slow_start_config`), so a cold instance is not flooded at once.

    During the window the endpoint's share is scaled by
    `max(min_weight_percent / 100, (elapsed / window) ** (1 / aggression))`:
    `aggression=1` ramps linearly, larger values ramp faster at first.
    Applies to endpoints discovery adds after its first answer, and to an endpoint
    whose breaker closes again after being open.

    Added in version 0.2.
    """

    window: float = 30.0
    aggression: float = 1.0
    min_weight_percent: float = 10.0

    def __post_init__(self) -> None:
        _check_number("SlowStart", "window", self.window, strict=True)
        _check_number("SlowStart", "aggression", self.aggression, strict=True)
        _check_number("SlowStart", "min_weight_percent", self.min_weight_percent)
        if self.window > 86400:
            raise ConfigError(f"SlowStart.window must be <= 86400 s, got {self.window!r}")
        if self.aggression > 100 or self.aggression < 0.01:
            raise ConfigError(f"SlowStart.aggression must be between 0.01 and 100, "
                              f"got {self.aggression!r}")
        if self.min_weight_percent > 100:
            raise ConfigError(f"SlowStart.min_weight_percent must be <= 100, "
                              f"got {self.min_weight_percent!r}")

    def factor(self, elapsed: float) -> float:
        """The share multiplier (0..1] for an endpoint `elapsed` seconds into its ramp."""
        if elapsed >= self.window:
            return 1.0
        floor = self.min_weight_percent / 100.0
        if elapsed <= 0:
            return max(floor, 1e-9) if floor > 0 else 1e-9
        ramp: float = (elapsed / self.window) ** (1.0 / self.aggression)
        return max(floor, ramp)


@dataclass(frozen=True, slots=True)
class Hedge:
    """Send a second attempt to another endpoint if the first has not answered
    after `delay` seconds, or after the service's 95th percentile latency
    with `delay="p95"`. Only idempotent requests are hedged.

    `max_attempts` counts the attempts in flight at once, the first included
    (`2`: the first and one hedge); every hedge is also one of the policy's
    `retries`.

    Added in version 0.1.
    """

    delay: float | Literal["p95"] = 0.05
    #: delay used by ``"p95"`` until enough latency samples exist
    fallback: float = 0.05
    #: at most this many attempts in flight at once for one request, the first included
    max_attempts: int = 2

    def __post_init__(self) -> None:
        if self.delay != "p95":
            if isinstance(self.delay, str):
                raise ConfigError(f'Hedge.delay must be a number of seconds or "p95" (the '
                                  f"service's 95th percentile latency), got {self.delay!r}")
            _check_number("Hedge", "delay", self.delay)
        _check_number("Hedge", "fallback", self.fallback)
        _check_int("Hedge", "max_attempts", self.max_attempts, 2, 10)


@dataclass(frozen=True, slots=True)
class Policy:
    """What a mesh request may do: deadline, retries, budget, backoff, balancer,
    breaker, hedging and idempotency. Immutable; use `replace()`.

    `retries` counts the attempts after the first (retries and hedges
    together): `retries=2` allows three attempts in all. Names with
    *attempts* (`Hedge.max_attempts`, `set_testing(attempts=...)`,
    `extensions["meshlib"]["attempts"]`) count every attempt, the first
    included. `breaker=None` turns circuit breaking off for the service.

    Every duration (`timeout`, `attempt_timeout`, and those of `backoff`,
    `breaker`, `hedge` and `retry_budget`) must be finite and at most
    one day (`MAX_SECONDS`); `retries` at most 100. A value outside its
    bounds, NaN or infinity raises `ConfigError` naming the field and value.

    Added in version 0.1.
    """

    timeout: float = 10.0
    attempt_timeout: float | None = None
    retries: int = 2
    retry_on: tuple[int, ...] = (502, 503, 504)
    retry_budget: RetryBudget = field(default_factory=RetryBudget)
    backoff: Backoff = field(default_factory=Backoff)
    balancer: BalancerName = "p2c-ewma"
    #: ``None``: no circuit breaking at all (no endpoint ejected, no route failing fast)
    breaker: Breaker | None = field(default_factory=Breaker)
    hedge: Hedge | None = None
    idempotent: bool | None = None
    #: ramp new and recovered endpoints up over a window (opt-in); see :class:`SlowStart`
    slow_start: SlowStart | None = None
    #: also send ``grpc-timeout`` (gRPC format) besides ``x-mesh-timeout-ms``
    propagate_grpc_timeout: bool = False
    #: the names of the fields this policy was given explicitly (see ``given``)
    _given: frozenset[str] = field(default=frozenset(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_number("Policy", "timeout", self.timeout, strict=True)
        _check_number("Policy", "attempt_timeout", self.attempt_timeout, allow_none=True,
                      strict=True)
        _check_int("Policy", "retries", self.retries, 0, MAX_RETRIES)
        try:
            if isinstance(self.retry_on, (str, bytes)):
                raise TypeError
            values = iter(self.retry_on)
        except TypeError:
            raise ConfigError(
                f"Policy.retry_on must be status codes, got {self.retry_on!r}") from None
        codes: list[int] = []
        for code in values:  # checked as they come: range(10**9) must not be built first
            if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                raise ConfigError(f"Policy.retry_on must hold status codes, got {code!r}")
            codes.append(code)
            if len(codes) > _MAX_STATUS_CODES:
                raise ConfigError(f"Policy.retry_on holds more than {_MAX_STATUS_CODES} "
                                  "status codes")
        object.__setattr__(self, "retry_on", tuple(codes))
        if self.balancer not in BALANCERS:
            raise ConfigError(
                f"Policy.balancer must be one of {', '.join(BALANCERS)}, got {self.balancer!r}"
            )
        for name, kind in (("retry_budget", RetryBudget), ("backoff", Backoff),
                           ("breaker", Breaker)):
            if name == "breaker" and self.breaker is None:
                continue
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(
                    f"Policy.{name} must be a meshlib.{kind.__name__}, got {getattr(self, name)!r}"
                )
        if self.hedge is not None and not isinstance(self.hedge, Hedge):
            raise ConfigError(f"Policy.hedge must be a meshlib.Hedge or None, got {self.hedge!r}")
        if not (self.idempotent is None or self.idempotent is True or self.idempotent is False):
            raise ConfigError(f"Policy.idempotent must be None, True or False, "
                              f"got {self.idempotent!r}")
        if self.slow_start is not None and not isinstance(self.slow_start, SlowStart):
            raise ConfigError(f"Policy.slow_start must be a meshlib.SlowStart or None, "
                              f"got {self.slow_start!r}")
        if not isinstance(self.propagate_grpc_timeout, bool):
            raise ConfigError(f"Policy.propagate_grpc_timeout must be True or False, "
                              f"got {self.propagate_grpc_timeout!r}")

    @property
    def given(self) -> frozenset[str]:
        """The fields set explicitly: `Policy(hedge=Hedge(0.05)).given == {"hedge"}`.

        When policies are layered (scoped, route, service, client, environment),
        each field comes from the most specific layer that gave it.
        """
        return self._given

    def replace(self, **changes: Any) -> Policy:
        """Return a new policy with `changes` applied; raises `ConfigError` on a bad field.

        The new policy's given fields are this policy's plus the changed ones.
        """
        unknown = set(changes) - _FIELD_NAMES
        if unknown:
            raise ConfigError(f"Policy has no field {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self, **changes)
        object.__setattr__(new, "_given", self._given | frozenset(changes))
        return new


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Policy) if f.init)
_ORDER = tuple(f.name for f in dataclasses.fields(Policy) if f.init)
#: fields that configure a whole cluster (its breakers, budget, balancer and ramp),
#: not one request: a route's policy may not set them
CLUSTER_FIELDS = frozenset({"breaker", "retry_budget", "balancer", "slow_start"})
_generated_init = Policy.__init__


def _init_recording_given(self: Policy, *args: Any, **kwargs: Any) -> None:
    _generated_init(self, *args, **kwargs)
    object.__setattr__(self, "_given", frozenset(_ORDER[:len(args)]) | frozenset(kwargs))


_init_recording_given.__doc__ = _generated_init.__doc__
_init_recording_given.__signature__ = inspect.signature(_generated_init)  # type: ignore[attr-defined]
Policy.__init__ = _init_recording_given  # type: ignore[method-assign]


def layered(*policies: Policy | None) -> Policy:
    """One policy from layers, most specific first: each field from the first layer
    that gave it, else the default. `None` layers are skipped.

    `layered(Policy(hedge=Hedge(0.05)), Policy(timeout=0.5))` has the hedge of
    the first and the 0.5 s timeout of the second.
    """
    layers = [p for p in policies if p is not None]
    if not layers:
        return Policy()
    if len(layers) == 1 or not any(p._given for p in layers[1:]):
        return layers[0]
    changes: dict[str, Any] = {}
    for policy in reversed(layers):
        for name in policy._given:
            changes[name] = getattr(policy, name)
    return _DEFAULT.replace(**changes)


_DEFAULT = Policy()
