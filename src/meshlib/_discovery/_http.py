"""Reading a registry's HTTP answers with bounds on their size and their time.

httpx's timeouts are per operation: a registry (or anything listening on its
port) that trickles its answer a byte at a time, inside the read timeout, would
hold a discovery read for ever, and one that sends an endless body would grow
memory until `MemoryError`. Every answer etcd, Consul and Kubernetes
discovery read goes through `fetch()` (one whole answer: at most
`MAX_ANSWER_BYTES`, within a total time) or `lines()` (a watch
stream: each line at most `MAX_ANSWER_BYTES`), and is decoded by
`json_value()` or `json_object()`: whatever does not parse (not JSON,
nested deeper than the parser goes, not the expected shape) is a
`BadAnswer` naming what was read, never another exception.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = ["MAX_ANSWER_BYTES", "BadAnswer", "fetch", "json_object", "json_value", "lines",
           "read_whole"]

#: the largest registry answer (or watch line) read: 32 MiB holds well over
#: 100,000 endpoints in any of the registries' formats
MAX_ANSWER_BYTES = 32 * 1024 * 1024

#: response headers that describe the encoded body, dropped from the rebuilt answer
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class BadAnswer(httpx.HTTPError):
    """A registry answer that was too large or too slow to read, or does not parse."""


def json_value(text: str | bytes, what: str) -> Any:
    """The JSON value of `text` (`what` names it in the error); `BadAnswer`
    for anything that does not parse, nesting too deep for the parser included."""
    try:
        return json.loads(text)
    except RecursionError:
        raise BadAnswer(f"{what} is nested too deeply to read") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        shown = text[:200] if isinstance(text, str) else text[:200].decode("utf-8", "replace")
        raise BadAnswer(f"{what} is not JSON: {shown!r}") from None


def json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """The JSON object of `text`; `BadAnswer` for anything else (see
    `json_value()`)."""
    value = json_value(text, what)
    if not isinstance(value, dict):
        raise BadAnswer(f"{what} is not a JSON object: {str(value)[:200]}")
    return value


def _too_large(limit: int) -> BadAnswer:
    return BadAnswer(f"answer larger than the {limit} byte limit")


async def fetch(client: httpx.AsyncClient, method: str, url: str, *, total: float,
                limit: int | None = None, **kwargs: Any) -> httpx.Response:
    """`client.request(...)` whose whole answer (headers and body) arrives within
    `total` seconds and is at most `limit` bytes (`MAX_ANSWER_BYTES`);
    `BadAnswer` otherwise. The returned response has been read."""
    async def read() -> httpx.Response:
        async with client.stream(method, url, **kwargs) as response:
            return await read_whole(response, limit)

    try:
        return await asyncio.wait_for(read(), total)
    except asyncio.TimeoutError:
        raise BadAnswer(f"no complete answer within {total:g} s") from None


async def read_whole(response: httpx.Response, limit: int | None = None) -> httpx.Response:
    """Read a streamed answer of at most `limit` bytes (`MAX_ANSWER_BYTES`), else
    `BadAnswer`; a read copy of it (what `response.aread()` would give)."""
    cap = MAX_ANSWER_BYTES if limit is None else limit
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > cap:
        raise _too_large(cap)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        chunks.append(chunk)
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in _BODY_HEADERS]
    return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks),
                          request=response.request)


async def lines(response: httpx.Response, limit: int | None = None) -> AsyncIterator[str]:
    """The lines of a streamed answer (a watch), as `aiter_lines` gives them, but
    `BadAnswer` for a line longer than `limit` characters (`MAX_ANSWER_BYTES`)."""
    cap = MAX_ANSWER_BYTES if limit is None else limit
    parts: list[str] = []  # the line read so far, in pieces (no quadratic joining)
    size = 0
    async for text in response.aiter_text():
        if "\n" in text:
            *complete, rest = "".join((*parts, text)).split("\n")
            for line in complete:
                yield line.rstrip("\r")
            parts, size = [rest], len(rest)
        else:
            parts.append(text)
            size += len(text)
        if size > cap:
            raise BadAnswer(f"a line of the stream is longer than {cap} characters")
    if size:
        yield "".join(parts).rstrip("\r")
