"""The errors meshlib raises, all inside httpx's hierarchy except ConfigError.

```
httpx.HTTPError
└── httpx.TransportError
    ├── MeshError                 the mesh's own transport errors
    │   ├── NoEndpointsError      discovery knows no endpoint
    │   ├── CircuitOpenError      every endpoint's (or the route's) breaker is open
    │   └── NoRouteError          the host has routes, none matched, no service has its name
    └── httpx.TimeoutException
        └── DeadlineExceeded      the logical request's deadline passed
ValueError
└── ConfigError                   bad configuration
```

`TooSlow` is internal: it never reaches a caller (it becomes a retry refusal).
"""

from __future__ import annotations

import re

import httpx

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "MeshError",
    "NoEndpointsError",
    "NoRouteError",
    "TooSlow",
    "redact_url",
]

#: ``scheme://`` followed by an authority holding ``user[:password]@`` (up to its last ``@``)
_USERINFO = re.compile(r"(://)[^/?#\s]*@", re.ASCII)
#: a query parameter whose name suggests a secret
_SECRET_PARAM = re.compile(
    r"([?&][^=&#\s]*(?:token|pass|secret|key|auth|sig)[^=&#\s]*=)[^&#\s;]*", re.IGNORECASE)


def redact_url(url: object) -> str:
    """`url` (or any text holding URLs) with credentials replaced by `***`.

    Userinfo (`user:password@`) and the values of query parameters named like
    secrets (`token`, `password`, `key`...) are hidden. Every error
    message and log line that shows a URL goes through this.
    """
    text = str(url)
    if "@" in text:
        text = _USERINFO.sub(r"\1***@", text)
    if "=" in text:
        text = _SECRET_PARAM.sub(r"\1***", text)
    return text


class MeshError(httpx.TransportError):
    """Base of the mesh's own transport errors.

    Added in version 0.1.
    """


class NoEndpointsError(MeshError):
    """Discovery knows no endpoint for the service (yet, or any more).

    Added in version 0.1.
    """


class CircuitOpenError(MeshError):
    """Every endpoint's circuit breaker is open: the request failed fast, nothing was sent.

    Added in version 0.1.
    """


class NoRouteError(MeshError):
    """The request's host has routes, none of them matched, and no service has the
    host's name: nothing was sent.

    Added in version 0.3.
    """


class DeadlineExceeded(httpx.TimeoutException):
    """The logical request's deadline passed (across all attempts and backoff).

    Added in version 0.1.
    """


class ConfigError(ValueError):
    """Bad configuration: names the argument or environment variable and its value.

    The message never shows a secret: credentials in any URL it quotes
    (`user:password@`, `?token=`...) read `***`.

    Added in version 0.1.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(redact_url(message) if isinstance(message, str) else message, *args)



class TooSlow(Exception):
    """No available endpoint is expected to answer within the time left."""
