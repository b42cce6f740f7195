"""What the sync and async transports share: configuration, services, routing.

Layers, top to bottom, written down once (Finagle's stack, for a client):

1. routing: a request whose host is a configured service goes through the
   mesh; any other host passes through to plain httpx untouched;
2. policy: scoped ``meshlib.policy`` > the Service's policy > the client's
   policy > ``MESHLIB_*`` variables > defaults;
3. deadline: fixed on entry, spans every attempt and backoff;
4. retries and hedges (above the balancer, so each picks a fresh endpoint),
   gated by idempotency and the retry budget;
5. balancer: picks among available endpoints of the best priority group;
6. per endpoint: breaker admission, timeouts clamped to the deadline,
   latency and outcome recorded, a connection pool pinned to the address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from . import _testmode
from ._config import SERVICE_NAME, EnvConfig, read_env, warn_if_host_like, warn_no_services
from ._discovery import DiscoveryOptions, discovery_from_url
from ._errors import ConfigError
from ._policy import Policy
from ._scope import current_overrides
from ._service import Service, ServiceRuntime
from ._telemetry import register_mesh, telemetry

__all__ = ["Mesh", "ServicesArg"]

ServicesArg = Mapping[str, "str | Service"] | None


class Mesh:
    """Services, their runtimes and the policy layering of one transport."""

    def __init__(self, services: ServicesArg, policy: Policy | None, *,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        env: EnvConfig = read_env(environ)  # always validated, even when overridden
        if policy is not None and not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a meshlib.Policy, got {policy!r}")
        self.env = env
        self.clock = clock
        self.policy = policy if policy is not None else env.policy
        raw = env.services if services is None else services
        if not isinstance(raw, Mapping):
            raise ConfigError(f"services must map names to discovery URLs, got {raw!r}")
        options = DiscoveryOptions.from_env(env)
        for env_name, env_url in env.services.items():  # validated even when overridden
            try:
                discovery_from_url(env_url, options)
            except ConfigError as exc:
                raise ConfigError(f"MESHLIB_SERVICES: service {env_name!r}: {exc}") from None
        self.runtimes: dict[str, ServiceRuntime] = {}
        for name, spec in raw.items():
            if not isinstance(name, str) or not SERVICE_NAME.match(name):
                raise ConfigError(
                    f"service name {name!r} is not a host name (letters, digits, '.', '-', '_')")
            if name.lower() in self.runtimes:
                raise ConfigError(f"service {name!r} is configured twice (names ignore case)")
            service = Service(spec) if isinstance(spec, str) else spec
            if not isinstance(service, Service):
                raise ConfigError(
                    f"service {name!r} must be a discovery URL or meshlib.Service, got {spec!r}")
            discovery = discovery_from_url(service.discovery, options)
            warn_if_host_like(name)
            self.runtimes[name.lower()] = ServiceRuntime(
                name, service, discovery, service.policy or self.policy, zone=env.zone,
                on_transition=telemetry.breaker_transition, clock=clock,
            )
        if not self.runtimes:
            warn_no_services()
        self._scoped: dict[int, tuple[Mapping[str, Any], Policy, Policy]] = {}
        register_mesh(self)  # for the meshlib.endpoints gauge (weakly held)

    def route(self, request: httpx.Request) -> ServiceRuntime | None:
        """The service a request goes to, or ``None`` to pass it through."""
        return self.runtimes.get(request.url.host)

    def policy_for(self, runtime: ServiceRuntime) -> Policy:
        """The effective policy of a request to ``runtime`` in the current scope."""
        return _testmode.capped(self._scoped_policy(runtime))  # set_testing(attempts=N)

    def _scoped_policy(self, runtime: ServiceRuntime) -> Policy:
        overrides = current_overrides()
        if not overrides:
            return runtime.policy
        key = id(overrides)
        cached = self._scoped.get(key)
        if cached is not None and cached[0] is overrides and cached[1] is runtime.policy:
            return cached[2]
        policy = runtime.policy.replace(**overrides)
        if len(self._scoped) > 256:
            self._scoped.clear()
        self._scoped[key] = (overrides, runtime.policy, policy)
        return policy

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state of every service (docs/configuration.md, "Reading a
        snapshot")."""
        now = self.clock()
        return {"services": {rt.name: rt.snapshot(now) for rt in self.runtimes.values()}}

    @property
    def dynamic(self) -> list[ServiceRuntime]:
        """Services whose discovery must run in the background."""
        return [rt for rt in self.runtimes.values() if rt.discovery.initial() is None]


