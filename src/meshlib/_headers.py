"""The headers meshlib sends and reads, named once (the client core and both middlewares)."""

from __future__ import annotations

import httpx

__all__ = ["DEADLINE_HEADER", "ENVOY_TIMEOUT_HEADER", "GRPC_TIMEOUT_HEADER", "copy_headers",
           "set_ascii_header"]

DEADLINE_HEADER = "x-mesh-timeout-ms"
"""Whole milliseconds left of the caller's deadline: sent on every attempt, read by
`meshlib.asgi` and `meshlib.wsgi`."""

GRPC_TIMEOUT_HEADER = "grpc-timeout"
"""The gRPC deadline header, read by both middlewares (and sent when a policy sets
`propagate_grpc_timeout`)."""

ENVOY_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
"""Envoy's expected request timeout (whole milliseconds), read by both middlewares."""


# -- the attempt's own headers, cheaply ------------------------------------------------
#
# Every attempt sends a copy of the caller's headers with the deadline header set.
# `httpx.Headers.copy()` re-normalises every header and `__setitem__` re-encodes,
# which together cost more than the rest of stamping an attempt. httpx (0.27 and
# 0.28) keeps its headers as `_list`, a list of (raw key, lowercase key, value)
# bytes, and `_encoding`; both helpers use them when present and fall back to the
# public API otherwise.

_Headers = httpx.Headers


def copy_headers(headers: httpx.Headers) -> httpx.Headers:
    """A copy of `headers` that shares nothing mutable with them."""
    items = getattr(headers, "_list", None)
    if type(items) is not list:
        return headers.copy()
    copy = _Headers.__new__(_Headers)
    copy._list = list(items)
    copy._encoding = headers._encoding
    return copy


def set_ascii_header(headers: httpx.Headers, name: str, value: str) -> None:
    """`headers[name] = value` for a lowercase ASCII `name` and an ASCII `value`:
    replaces every header of that name (in place of the first) or appends one."""
    items = getattr(headers, "_list", None)
    if type(items) is not list:
        headers[name] = value
        return
    key = name.encode("ascii")
    entry = (key, key, value.encode("ascii"))
    for index, item in enumerate(items):
        if item[1] == key:
            items[index] = entry
            # later duplicates go, as `__setitem__` removes them
            items[index + 1:] = [rest for rest in items[index + 1:] if rest[1] != key]
            return
    items.append(entry)
