"""The `Discovery` interface every discovery kind implements, and the rules
that turn its raw answers into the endpoint set a service uses.

A discovery kind is an object with an async generator `updates()` that
yields, for as long as it runs, either a tuple of `Endpoint`
(the whole current set) or a `DiscoveryFailure` (the refresh failed or
returned garbage). It does its own I/O and timing (TTL, watches, blocking
queries, file polling). The mesh runs it in the background (a task for the
async client, a thread with its own event loop for the sync client) and
pushes each accepted set to the balancer; nothing is polled per request.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._endpoint import Endpoint
from .._errors import redact_url
from .._reconnect import Reconnect

if TYPE_CHECKING:
    from .._config import EnvConfig

__all__ = [
    "EMPTY_GRACE_SECONDS",
    "Discovery",
    "DiscoveryFailure",
    "DiscoveryOptions",
    "EndpointSetTracker",
    "Update",
]

logger = logging.getLogger("meshlib.discovery")

#: an empty answer replaces a non-empty set only once it has persisted this long
EMPTY_GRACE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class DiscoveryFailure:
    """A refresh that failed or returned garbage; the last good set is kept."""

    reason: str


Update = tuple[Endpoint, ...] | DiscoveryFailure


@dataclass(frozen=True, slots=True)
class DiscoveryOptions:
    """Settings from the environment that discovery kinds may use.

    `zone` is the client's zone (`MESHLIB_ZONE`, for topology hints);
    `k8s_api`, `k8s_token_file` and `k8s_ca_file` locate the Kubernetes API
    server (see `meshlib._config.read_env()`).
    """

    dns_nameserver: tuple[str, int] | None = None
    zone: str | None = None
    k8s_api: str | None = None
    k8s_token_file: str | None = None
    k8s_ca_file: str | None = None

    @classmethod
    def from_env(cls, env: EnvConfig) -> DiscoveryOptions:
        """The options an environment reading (`read_env`) gives."""
        return cls(dns_nameserver=env.dns_nameserver, zone=env.zone, k8s_api=env.k8s_api,
                   k8s_token_file=env.k8s_token_file, k8s_ca_file=env.k8s_ca_file)


class Discovery(abc.ABC):
    """Where a service's endpoints come from.

    Subclasses (registered by URL scheme in `_discovery._KINDS`) parse and
    validate their URL in `__init__` (raising `ConfigError` naming the URL),
    and implement `updates()`.

    Added in version 0.1.
    """

    #: first delay after a failed refresh or a broken watch; it doubles on each
    #: further failure
    BACKOFF_INITIAL = 0.5
    #: the longest delay between two attempts
    BACKOFF_MAX = 30.0

    def __init__(self, url: str, options: DiscoveryOptions | None = None) -> None:
        self.url = url
        self.options = options or DiscoveryOptions()

    def reconnect(self) -> Reconnect:
        """A fresh reconnect decision for one run of `updates()`: doubling from
        `BACKOFF_INITIAL` up to `BACKOFF_MAX`."""
        return Reconnect(base=self.BACKOFF_INITIAL, cap=self.BACKOFF_MAX, multiplier=2.0,
                         jitter=0.0)

    def initial(self) -> tuple[Endpoint, ...] | None:
        """The endpoint set if known without I/O (static lists), else `None`."""
        return None

    @abc.abstractmethod
    def updates(self) -> AsyncIterator[Update]:
        """Yield the whole endpoint set, or a failure, each time it may have changed.

        Runs until cancelled; must not raise for an ordinary failure (yield a
        `DiscoveryFailure` and retry with backoff instead).
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release what the discovery holds (clients, sockets)."""


class EndpointSetTracker:
    """Decides which answers replace the current endpoint set, and logs changes.

    Rules:

    - a `DiscoveryFailure` keeps the last good set; it is logged at
      WARNING once when the state turns failing, not on every attempt, and
      the recovery is logged at INFO;
    - an empty answer after a non-empty set is treated as a failure until it
      has persisted for `EMPTY_GRACE_SECONDS` with no non-empty answer and
      no failure in between (a service scaled to zero is real, a flapping
      registry is not); `due()` tells when a pending empty set takes effect;
    - the first answer is taken as it is, empty or not.
    """

    def __init__(self, service: str, url: str, grace: float = EMPTY_GRACE_SECONDS) -> None:
        self.service = service
        self.url = redact_url(url)
        self.grace = grace
        self.current: tuple[Endpoint, ...] | None = None
        self.failing: str | None = None
        self.empty_since: float | None = None

    def accept(self, update: Update, now: float) -> tuple[Endpoint, ...] | None:
        """The new set to apply for `update` at `now`, or `None` to keep the current one."""
        if isinstance(update, DiscoveryFailure):
            self.empty_since = None  # a pending empty answer must persist without failures
            if self.failing is None:
                logger.warning(
                    "discovery for %r (%s) failed, keeping %d last known endpoints: %s",
                    self.service, self.url, len(self.current or ()), update.reason,
                )
            self.failing = update.reason
            return None
        if not update and self.current:
            if self.empty_since is None:
                self.empty_since = now
                logger.warning(
                    "discovery for %r (%s) answered no endpoints; keeping %d for %.0f s "
                    "unless it persists", self.service, self.url, len(self.current), self.grace,
                )
            return self.due(now)
        self.empty_since = None
        if self.failing is not None:
            logger.info("discovery for %r (%s) recovered", self.service, self.url)
            self.failing = None
        if update != self.current:
            logger.info(
                "discovery for %r: %d endpoints: %s", self.service, len(update),
                ", ".join(e.address for e in update) or "(none)",
            )
            self.current = update
            return update
        return None

    def due(self, now: float) -> tuple[Endpoint, ...] | None:
        """The empty set if a pending empty answer has persisted past the grace, else `None`."""
        if self.empty_since is not None and now - self.empty_since >= self.grace:
            self.empty_since = None
            self.current = ()
            logger.warning("discovery for %r: no endpoints (empty answer persisted)",
                           self.service)
            return ()
        return None
