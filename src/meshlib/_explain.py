"""The message of an error that ends a logical request: what happened, where, how often.

A caller that sees `ConnectError: [Errno 111] Connection refused` cannot tell
which service failed, whether retries ran, or which endpoints refused. The
error a mesh request raises therefore names the request, the service, the
route (when one is configured), the attempts made and the endpoints tried,
and the last cause:

```
GET http://users/v1/me failed after 3 attempts on service 'users'
(endpoints tried: 127.0.0.1:8001, 127.0.0.1:8002); last cause: ConnectError:
[Errno 111] Connection refused
```

The error keeps its type (`except httpx.ConnectError` still works) and the
original exception is its `__cause__`. Built once, when the request ends:
nothing here runs on a request that succeeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from ._errors import DeadlineExceeded, MeshError, TooSlow, redact_url

if TYPE_CHECKING:
    from ._call import Call

__all__ = ["cause_text", "context", "explain"]


def context(call: Call) -> str:
    """`after N attempts on service 'S' (route 'R'; endpoints tried: a, b)`."""
    attempts = call.attempts
    noun = "attempt" if attempts == 1 else "attempts"
    details = []
    if call.route is not None:
        details.append(f"route {call.route!r}")
    tried = ", ".join(sorted(call.tried)) if call.tried else "none"
    details.append(f"endpoints tried: {tried}")
    return (f"after {attempts} {noun} on service {call.runtime.name!r} "
            f"({'; '.join(details)})")


def cause_text(cause: BaseException) -> str:
    """A cause as the message shows it: the mesh's own causes by their text, others
    with their type's name (`ConnectError: [Errno 111] Connection refused`)."""
    if isinstance(cause, (MeshError, TooSlow)):
        return str(cause)
    text = str(cause)
    name = type(cause).__name__
    return f"{name}: {text}" if text else name


def explain(call: Call, error: BaseException) -> BaseException:
    """`error` with a message that explains it, of the same type, the original as
    its `__cause__` (a mesh error keeps its own cause).

    A `DeadlineExceeded` from `Call.deadline_error()` says how the deadline was
    set; its `__cause__` (if any) is the last cause. An error that is not an
    httpx transport error, or whose type cannot be built from a message, is
    returned unchanged.
    """
    if not isinstance(error, httpx.RequestError):
        return error
    request = call.request
    where = f"{request.method} {redact_url(request.url)}"
    if isinstance(error, DeadlineExceeded):
        last = error.__cause__
        message = f"{where}: {error} {context(call)}"
        original: BaseException | None = last
    elif isinstance(error, MeshError):
        last = error
        message = f"{where} failed {context(call)}"
        original = error.__cause__
    else:
        last = error
        message = f"{where} failed {context(call)}"
        original = error
    if last is not None:
        message = f"{message}; last cause: {cause_text(last)}"
    try:
        explained = type(error)(message, request=request)
    except TypeError:  # an error type of someone else's with another signature
        return error
    explained.__cause__ = original
    return explained
