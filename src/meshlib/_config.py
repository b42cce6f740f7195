"""Reading ``MESHLIB_*`` environment variables into a default policy and services.

Every variable is validated when a client is built, even when explicit
arguments override it, and a bad one raises ``ConfigError`` naming it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError
from ._policy import BALANCERS, Breaker, Hedge, Policy, RetryBudget

__all__ = ["SERVICE_NAME", "EnvConfig", "parse_host_port", "parse_services", "read_env"]

SERVICE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")


def _float(var: str, raw: str, *, positive: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a number") from None
    if math.isnan(value) or math.isinf(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{var}={raw!r} must be a finite number {'>' if positive else '>='} 0")
    return value


def _int(var: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{var}={raw!r} must be >= {minimum}")
    return value


def parse_host_port(text: str, *, what: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:53``); raise ``ConfigError`` naming ``what``."""
    text = text.strip()
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{what}: {text!r} has an unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{what}: {text!r} is not [host]:port")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ConfigError(f"{what}: {text!r}: write an IPv6 address as [addr]:port")
    if not host:
        raise ConfigError(f"{what}: {text!r} has no host")
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{what}: {text!r} has no port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what}: {text!r} has a bad port {port_text!r}")
    return host, int(port_text)


def parse_services(raw: str, *, var: str = "MESHLIB_SERVICES") -> dict[str, str]:
    """Parse ``name=URL`` pairs separated by whitespace or ``;``."""
    services: dict[str, str] = {}
    for item in re.split(r"[\s;]+", raw.strip()):
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"{var}: {item!r} is not name=URL (in {raw!r})")
        if not SERVICE_NAME.match(name):
            raise ConfigError(f"{var}: {name!r} is not a valid service name (in {raw!r})")
        if "://" not in url:
            raise ConfigError(f"{var}: {url!r} for {name!r} is not a discovery URL")
        if name.lower() in (known.lower() for known in services):
            raise ConfigError(
                f"{var}: service {name!r} is named twice (names ignore case) in {raw!r}")
        services[name] = url
    return services


def _hedge(var: str, raw: str) -> Hedge | None:
    text = raw.strip().lower()
    if text in ("", "off", "none", "0"):
        return None
    if text == "p95":
        return Hedge(delay="p95")
    return Hedge(delay=_float(var, raw, positive=True))


def _balancer(var: str, raw: str) -> str:
    if raw.strip() not in BALANCERS:
        raise ConfigError(f"{var}={raw!r} must be one of {', '.join(BALANCERS)}")
    return raw.strip()


_POLICY_VARS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "MESHLIB_TIMEOUT": ("timeout", lambda v, r: _float(v, r, positive=True)),
    "MESHLIB_ATTEMPT_TIMEOUT": ("attempt_timeout", lambda v, r: _float(v, r, positive=True)),
    "MESHLIB_RETRIES": ("retries", _int),
    "MESHLIB_BALANCER": ("balancer", _balancer),
    "MESHLIB_HEDGE_DELAY": ("hedge", _hedge),
}


@dataclass(frozen=True)
class EnvConfig:
    """What the environment says: default policy, services, DNS nameserver and zone."""

    policy: Policy
    services: dict[str, str]
    dns_nameserver: tuple[str, int] | None
    zone: str | None


def read_env(environ: Mapping[str, str] | None = None) -> EnvConfig:
    """Read and validate every ``MESHLIB_*`` variable; raise ``ConfigError`` on a bad one."""
    env = os.environ if environ is None else environ
    changes: dict[str, Any] = {}
    for var, (field_name, parse) in _POLICY_VARS.items():
        raw = env.get(var)
        if raw is not None and raw.strip() != "":
            changes[field_name] = parse(var, raw)
    budget_ratio = env.get("MESHLIB_RETRY_BUDGET_RATIO", "").strip()
    if budget_ratio:
        try:
            changes["retry_budget"] = RetryBudget(
                ratio=_float("MESHLIB_RETRY_BUDGET_RATIO", budget_ratio)
            )
        except ConfigError as exc:
            if "MESHLIB_" in str(exc):
                raise
            raise ConfigError(f"MESHLIB_RETRY_BUDGET_RATIO={budget_ratio!r}: {exc}") from None
    failures = env.get("MESHLIB_BREAKER_FAILURES", "").strip()
    reset = env.get("MESHLIB_BREAKER_RESET_TIMEOUT", "").strip()
    if failures or reset:
        defaults = Breaker()
        changes["breaker"] = Breaker(
            failures=_int("MESHLIB_BREAKER_FAILURES", failures, minimum=1)
            if failures else defaults.failures,
            reset_timeout=_float("MESHLIB_BREAKER_RESET_TIMEOUT", reset)
            if reset else defaults.reset_timeout,
        )
    try:
        policy = Policy().replace(**changes)
    except ConfigError as exc:  # pragma: no cover - the parsers above catch these first
        raise ConfigError(f"MESHLIB_* environment: {exc}") from None
    services_raw = env.get("MESHLIB_SERVICES", "")
    services = parse_services(services_raw) if services_raw.strip() else {}
    ns_raw = env.get("MESHLIB_DNS_NAMESERVER", "").strip()
    nameserver = (
        parse_host_port(ns_raw, what="MESHLIB_DNS_NAMESERVER", default_port=53) if ns_raw else None
    )
    if nameserver is not None:
        try:
            ipaddress.ip_address(nameserver[0])
        except ValueError:
            raise ConfigError(f"MESHLIB_DNS_NAMESERVER={ns_raw!r}: the nameserver must be an "
                              "IP address") from None
    zone = env.get("MESHLIB_ZONE", "").strip() or None
    return EnvConfig(policy=policy, services=services, dns_nameserver=nameserver, zone=zone)
