"""Reading `MESHLIB_*` environment variables into a default policy and services.

Every variable is validated when a client is built, even when explicit
arguments override it, and a bad one raises `ConfigError` naming it.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ._endpoint import format_address, parse_host_port
from ._errors import ConfigError, redact_url
from ._policy import BALANCERS, MAX_SECONDS, Breaker, Hedge, Policy, RetryBudget

__all__ = [
    "KNOWN_VARIABLES", "POOLS", "SERVICE_NAME", "EnvConfig", "parse_duration", "parse_host_port",
    "parse_services", "read_env", "warn_no_services",
]

logger = logging.getLogger("meshlib.config")

#: what may carry AsyncMeshClient's endpoint connections (``pool=``, ``MESHLIB_POOL``)
POOLS = ("httpcore", "aiohttp")

SERVICE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")

#: every ``MESHLIB_*`` variable meshlib reads (docs/configuration.md, "Environment
#: variables"); any other ``MESHLIB_*`` name is a typo and is warned about once per process
KNOWN_VARIABLES = frozenset({
    "MESHLIB_SERVICES", "MESHLIB_TIMEOUT", "MESHLIB_ATTEMPT_TIMEOUT", "MESHLIB_RETRIES",
    "MESHLIB_BALANCER", "MESHLIB_RETRY_BUDGET_RATIO", "MESHLIB_BREAKER_FAILURES",
    "MESHLIB_BREAKER_RESET_TIMEOUT", "MESHLIB_HEDGE_DELAY", "MESHLIB_DNS_NAMESERVER",
    "MESHLIB_ZONE", "MESHLIB_K8S_API", "MESHLIB_K8S_TOKEN_FILE", "MESHLIB_K8S_CA_FILE",
    "MESHLIB_POOL", "MESHLIB_ROUTES", "MESHLIB_XDS_BOOTSTRAP",
})

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str, *args: object) -> None:
    """Log `message` at WARNING the first time `key` is seen in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


def _float(var: str, raw: str, *, positive: bool = False,
           maximum: float = math.inf) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a number") from None
    if math.isnan(value) or math.isinf(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{var}={raw!r} must be a finite number {'>' if positive else '>='} 0")
    if value > maximum:
        raise ConfigError(f"{var}={raw!r} must be <= {maximum:g}")
    return value


_DURATION = re.compile(
    r"^\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*(ms|s|m|h)?\s*$",
    re.ASCII | re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(var: str, raw: str, *, positive: bool = True) -> float:
    """Seconds in a duration variable: `2`, `2.5`, `2s`, `250ms`, `1m`, `1h`.

    A plain number is seconds. Raises `ConfigError` naming the variable, the
    value and the accepted units; durations are at most one day (`MAX_SECONDS`).
    """
    match = _DURATION.match(raw)
    if match is None:
        raise ConfigError(f"{var}={raw!r} is not a duration: write seconds (2, 0.5, 2s) "
                          "or use a unit: ms, s, m, h (250ms, 1m)")
    value = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    if math.isinf(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{var}={raw!r} must be a finite duration {'>' if positive else '>='} 0")
    if value > MAX_SECONDS:
        raise ConfigError(f"{var}={raw!r} is too long: at most {MAX_SECONDS:g} s (one day)")
    return value


def _int(var: str, raw: str, *, minimum: int = 0, maximum: int = 1_000_000) -> int:
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,12}", text, re.ASCII):
        raise ConfigError(f"{var}={raw!r} is not a whole number")
    value = int(text)
    if not minimum <= value <= maximum:
        raise ConfigError(f"{var}={raw!r} must be from {minimum} to {maximum}")
    return value


def parse_services(raw: str, *, var: str = "MESHLIB_SERVICES") -> dict[str, str]:
    """Parse `name=URL` pairs separated by whitespace or `;`."""
    services: dict[str, str] = {}
    shown = redact_url(raw)
    for item in re.split(r"[\s;]+", raw.strip()):
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"{var}: {redact_url(item)!r} is not name=URL (in {shown!r})")
        if not SERVICE_NAME.match(name):
            raise ConfigError(f"{var}: {name!r} is not a valid service name (in {shown!r})")
        if "://" not in url:
            raise ConfigError(f"{var}: {redact_url(url)!r} for {name!r} is not a discovery URL")
        if name.lower() in (known.lower() for known in services):
            raise ConfigError(
                f"{var}: service {name!r} is named twice (names ignore case) in {shown!r}")
        services[name] = url
    return services


def _hedge(var: str, raw: str) -> Hedge | None:
    text = raw.strip().lower()
    if text in ("", "off", "none", "0"):
        return None
    if text == "p95":
        return Hedge(delay="p95")
    return Hedge(delay=parse_duration(var, raw))


def _balancer(var: str, raw: str) -> str:
    if raw.strip() not in BALANCERS:
        raise ConfigError(f"{var}={raw!r} must be one of {', '.join(BALANCERS)}")
    return raw.strip()


_POLICY_VARS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "MESHLIB_TIMEOUT": ("timeout", parse_duration),
    "MESHLIB_ATTEMPT_TIMEOUT": ("attempt_timeout", parse_duration),
    "MESHLIB_RETRIES": ("retries", lambda v, r: _int(v, r, maximum=100)),
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
    #: the Kubernetes API server (``MESHLIB_K8S_API``, else in-cluster), token and CA files
    k8s_api: str | None = None
    k8s_token_file: str | None = None
    k8s_ca_file: str | None = None
    pool: str = "httpcore"
    #: the routes file (``MESHLIB_ROUTES``), read and watched by the mesh
    routes_file: str | None = None


def read_env(environ: Mapping[str, str] | None = None) -> EnvConfig:
    """Read and validate every `MESHLIB_*` variable; raise `ConfigError` on a bad one."""
    env = os.environ if environ is None else environ
    _warn_unknown(env)
    changes: dict[str, Any] = {}
    for var, (field_name, parse) in _POLICY_VARS.items():
        raw = env.get(var)
        if raw is not None and raw.strip() != "":
            changes[field_name] = parse(var, raw)
    budget_ratio = env.get("MESHLIB_RETRY_BUDGET_RATIO", "").strip()
    if budget_ratio:
        try:
            changes["retry_budget"] = RetryBudget(
                ratio=_float("MESHLIB_RETRY_BUDGET_RATIO", budget_ratio, maximum=1000.0)
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
            reset_timeout=parse_duration("MESHLIB_BREAKER_RESET_TIMEOUT", reset, positive=False)
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
    pool = env.get("MESHLIB_POOL", "").strip() or "httpcore"
    if pool not in POOLS:
        raise ConfigError(f"MESHLIB_POOL={env['MESHLIB_POOL']!r} must be one of {', '.join(POOLS)}")
    routes_file = env.get("MESHLIB_ROUTES", "").strip() or None
    if routes_file is not None and not os.path.isabs(routes_file):
        raise ConfigError(f"MESHLIB_ROUTES={env['MESHLIB_ROUTES']!r} must be an absolute path "
                          "to a JSON file of routes")
    return EnvConfig(policy=policy, services=services, dns_nameserver=nameserver, zone=zone,
                     pool=pool, routes_file=routes_file, k8s_api=_k8s_api(env),
                     k8s_token_file=env.get("MESHLIB_K8S_TOKEN_FILE", "").strip() or None,
                     k8s_ca_file=env.get("MESHLIB_K8S_CA_FILE", "").strip() or None)


def _k8s_api(env: Mapping[str, str]) -> str | None:
    """`MESHLIB_K8S_API` (validated), else the in-cluster API server, else `None`."""
    raw = env.get("MESHLIB_K8S_API", "").strip()
    if raw:
        shown = redact_url(raw)  # a password in it must not reach logs through the error
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ConfigError(f"MESHLIB_K8S_API={shown!r}: bad host or port") from None
        if "@" in parts.netloc:
            raise ConfigError(f"MESHLIB_K8S_API={shown!r}: credentials in the URL are not "
                              "used; give a token with MESHLIB_K8S_TOKEN_FILE")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment:
            raise ConfigError(f"MESHLIB_K8S_API={shown!r}: expected http(s)://HOST[:PORT] "
                              "(e.g. http://127.0.0.1:8001 for kubectl proxy)")
        return raw
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    if not host:
        return None
    port = env.get("KUBERNETES_SERVICE_PORT", "").strip() or "443"
    return f"https://{format_address(host, int(port) if port.isdigit() else 443)}"


def _warn_unknown(env: Mapping[str, str]) -> None:
    """Warn once per process about each `MESHLIB_*` variable meshlib does not read."""
    for name in env:
        if name.startswith("MESHLIB_") and name not in KNOWN_VARIABLES and name not in _warned:
            close = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            _warn_once(name, "unknown environment variable %s is ignored%s (known: see the "
                             "Environment table of the meshlib docs)", name, hint)


def warn_no_services() -> None:
    """Warn once per process that a client was built with no services at all."""
    _warn_once(
        "<no services>",
        "meshlib client built with no services (none given and MESHLIB_SERVICES is unset or "
        "empty): every request passes through to plain httpx with no discovery, retries "
        "or breakers; set MESHLIB_SERVICES=name=URL or pass services={...}")


def warn_if_host_like(name: str) -> None:
    """Warn once per name when a service is named like a real host (`localhost`, an IP).

    Routing is by host name alone: such a service captures every request to
    that host, whatever its port, including calls meant for something else.
    """
    host = name.lower()
    looks_like = host == "localhost" or host.endswith(".localhost")
    if not looks_like:
        try:
            ipaddress.ip_address(host)
            looks_like = True
        except ValueError:
            looks_like = False
    if looks_like:
        _warn_once(
            f"<host-like:{host}>",
            "service %r is named like a real host: every request to %s, on any port, goes "
            "through the mesh to that service's endpoints; give the service a logical name "
            "(e.g. 'users') instead", name, name)
