"""The idempotency gate: which failures may be retried, for which requests.

The one distinction it rests on (urllib3's `_is_connection_error` versus
`_is_read_error`): a failure *before* the request was sent can be retried
for any method; a failure *after* it may have reached the server only for an
idempotent request with a replayable body.
"""

from __future__ import annotations

import email.utils
import math
import re
import time

import httpx
from httpx._multipart import MultipartStream  # what files= gives; httpx exports no name

from ._errors import CircuitOpenError

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_AFTER_MAX",
    "is_bytes_body",
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
    """Whether `request` may be sent more than once (method, `Idempotency-Key`, policy)."""
    if override is not None:
        return override
    return request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers


def is_replayable(request: httpx.Request) -> bool:
    """Whether the body can be sent again: bytes and multipart uploads (`files=`,
    which httpx renders anew each time, as for a redirect) are, a one-shot stream is not."""
    return isinstance(request.stream, (httpx.ByteStream, MultipartStream))


def is_bytes_body(request: httpx.Request) -> bool:
    """Whether the body is bytes in memory, which concurrent attempts (hedges) may share;
    a multipart upload reads its files, one attempt at a time."""
    return isinstance(request.stream, httpx.ByteStream)


def stream_refused_locally(error: BaseException) -> bool:
    """Whether an HTTP/2 connection of the client's own pool refused to open one more
    stream (h2's "Max outbound streams"): nothing was sent.

    httpcore's count of open streams can drift from h2's when requests are cancelled
    (encode/httpcore#1022), so a connection may refuse a stream although fewer are
    in flight. That is the client's own state, never the endpoint's fault.
    """
    return isinstance(error, httpx.LocalProtocolError) and "Max outbound streams" in str(error)


def sent_before_failure(error: BaseException) -> bool:
    """`False` if `error` proves the request never left (refused, connect or pool timeout,
    a stream the client's own HTTP/2 connection would not open)."""
    return not isinstance(error, _NOT_SENT) and not stream_refused_locally(error)


#: ``Retry-After`` in seconds: ASCII digits only, as urllib3 (``str.isdigit`` takes ``²``)
_RETRY_AFTER_SECONDS = re.compile(r"^\s*([0-9]+)\s*$", re.ASCII)

#: a ``Retry-After`` longer than this is read as this (a day; any deadline is shorter)
RETRY_AFTER_MAX = 86400.0


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Seconds to wait for a `Retry-After` value; `None` if it is absent or malformed.

    Total: never raises, whatever the server sent. Accepted are ASCII digits
    (delta-seconds, as urllib3) and HTTP dates (a date in the past means 0).
    Values are clamped to `RETRY_AFTER_MAX`.
    """
    if not isinstance(value, str):
        return None
    match = _RETRY_AFTER_SECONDS.match(value)
    if match is not None:
        digits = match.group(1).lstrip("0")
        if len(digits) > 6:  # int() of a huge string is slow and has a length limit
            return RETRY_AFTER_MAX
        return min(float(int(digits or "0")), RETRY_AFTER_MAX)
    if len(value) > 64 or not value.isascii():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
        seconds = when.timestamp() - (time.time() if now_wall is None else now_wall)
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)
