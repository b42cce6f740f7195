"""The idempotency gate: which failures may be retried, for which requests.

The one distinction it rests on (urllib3's ``_is_connection_error`` versus
``_is_read_error``): a failure *before* the request was sent can be retried
for any method; a failure *after* it may have reached the server only for an
idempotent request with a replayable body.
"""

from __future__ import annotations

import email.utils
import math
import time

import httpx

from ._errors import CircuitOpenError

__all__ = [
    "IDEMPOTENT_METHODS",
    "is_idempotent",
    "is_replayable",
    "parse_retry_after",
    "sent_before_failure",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: failures that prove nothing reached the server
_NOT_SENT: tuple[type[BaseException], ...] = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
    CircuitOpenError,
)


def is_idempotent(request: httpx.Request, override: bool | None) -> bool:
    """Whether ``request`` may be sent more than once (method, ``Idempotency-Key``, policy)."""
    if override is not None:
        return override
    return request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers


def is_replayable(request: httpx.Request) -> bool:
    """Whether the body can be sent again: bytes are, a one-shot stream is not."""
    return isinstance(request.stream, httpx.ByteStream)


def sent_before_failure(error: BaseException) -> bool:
    """``False`` if ``error`` proves the request never left (refused, connect or pool timeout)."""
    return not isinstance(error, _NOT_SENT)


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Seconds to wait for a ``Retry-After`` value (seconds or HTTP date); ``None`` if bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    seconds = when.timestamp() - (time.time() if now_wall is None else now_wall)
    return max(seconds, 0.0) if math.isfinite(seconds) else None
