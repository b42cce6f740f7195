"""The errors meshlib raises, all inside httpx's hierarchy except ConfigError.

::

    httpx.HTTPError
    └── httpx.TransportError
        ├── MeshError                 the mesh's own transport errors
        │   ├── NoEndpointsError      discovery knows no endpoint
        │   └── CircuitOpenError      every endpoint's breaker is open
        └── httpx.TimeoutException
            └── DeadlineExceeded      the logical request's deadline passed
    ValueError
    └── ConfigError                   bad configuration
"""

from __future__ import annotations

import httpx

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "MeshError",
    "NoEndpointsError",
]


class MeshError(httpx.TransportError):
    """Base of the mesh's own transport errors.

    .. versionadded:: 0.1
    """


class NoEndpointsError(MeshError):
    """Discovery knows no endpoint for the service (yet, or any more).

    .. versionadded:: 0.1
    """


class CircuitOpenError(MeshError):
    """Every endpoint's circuit breaker is open: the request failed fast, nothing was sent.

    .. versionadded:: 0.1
    """


class DeadlineExceeded(httpx.TimeoutException):
    """The logical request's deadline passed (across all attempts and backoff).

    .. versionadded:: 0.1
    """


class ConfigError(ValueError):
    """Bad configuration: names the argument or environment variable and its value.

    .. versionadded:: 0.1
    """


for _cls in (MeshError, NoEndpointsError, CircuitOpenError, DeadlineExceeded, ConfigError):
    _cls.__module__ = "meshlib"
