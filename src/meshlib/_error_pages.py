"""What a server-side middleware answers for a mesh error that escaped the handler.

A sidecar proxy answers its application's caller 504 when an upstream
request ran out of time and 503 when no upstream could serve it; an
embedded mesh gives the same answers instead of a 500 with a traceback:

* `DeadlineExceeded` → `504 Gateway Timeout`;
* any other `MeshError` (no endpoints, circuit open, no
  route) → `503 Service Unavailable`;
* anything else is not the mesh's to answer: it propagates.

The body is a short `text/plain` line that names the kind of failure,
never the endpoints or the message (the caller is outside the mesh). The
full error is logged at WARNING once per cause (the error type, its cause's
type and the service), later repeats at DEBUG, so an outage does not flood
the log.
"""

from __future__ import annotations

import logging
import threading

from ._errors import DeadlineExceeded, MeshError

__all__ = ["ErrorLog", "ErrorPage", "error_page"]

#: distinct causes remembered for "logged once"; past this, every cause logs at DEBUG
_MAX_CAUSES = 256


class ErrorPage:
    """The status line and body answered for one kind of mesh error."""

    __slots__ = ("body", "reason", "status")

    def __init__(self, status: int, reason: str, body: str) -> None:
        self.status = status
        self.reason = reason
        self.body = body.encode()

    @property
    def status_line(self) -> str:
        """`"504 Gateway Timeout"` (for WSGI's `start_response`)."""
        return f"{self.status} {self.reason}"


_TIMEOUT = ErrorPage(504, "Gateway Timeout", "upstream request timeout: the deadline passed\n")
_UNAVAILABLE = {
    "NoEndpointsError": ErrorPage(503, "Service Unavailable",
                                  "upstream unavailable: no endpoints\n"),
    "CircuitOpenError": ErrorPage(503, "Service Unavailable",
                                  "upstream unavailable: circuit open\n"),
    "NoRouteError": ErrorPage(503, "Service Unavailable", "upstream unavailable: no route\n"),
}
_OTHER = ErrorPage(503, "Service Unavailable", "upstream unavailable\n")


def error_page(exc: BaseException) -> ErrorPage | None:
    """The answer for `exc`, or `None` when it is not a mesh error (let it propagate)."""
    if isinstance(exc, DeadlineExceeded):
        return _TIMEOUT
    if isinstance(exc, MeshError):
        for kind in type(exc).__mro__:
            page = _UNAVAILABLE.get(kind.__name__)
            if page is not None:
                return page
        return _OTHER
    return None


class ErrorLog:
    """Logs each mapped error at WARNING the first time its cause is seen, then at DEBUG."""

    __slots__ = ("_lock", "_logger", "_seen")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def log(self, exc: BaseException, page: ErrorPage) -> None:
        """Record that `exc` was answered with `page`."""
        key = _cause_key(exc)
        with self._lock:
            first = key not in self._seen and len(self._seen) < _MAX_CAUSES
            if first:
                self._seen.add(key)
        level = logging.WARNING if first else logging.DEBUG
        if self._logger.isEnabledFor(level):
            suffix = "" if not first else " (repeats of this cause are logged at DEBUG)"
            self._logger.log(level, "answered %d for %s: %s%s", page.status,
                             type(exc).__name__, exc, suffix)


def _cause_key(exc: BaseException) -> tuple[str, str, str]:
    """What makes two errors the same cause: their type, their cause's type, the host."""
    cause = exc.__cause__
    host = ""
    try:
        request = getattr(exc, "request", None)
    except RuntimeError:  # httpx raises when the error carries no request
        request = None
    if request is not None:
        host = str(request.url.host)
    return type(exc).__name__, type(cause).__name__ if cause is not None else "", host
