"""Request header bytes on aiohttp's wire exactly as httpx holds them.

aiohttp takes header names and values as `str` and writes them as UTF-8,
so a value httpx holds as the bytes `b"Zo\\xeb"` (Latin-1, as HTTP allows)
would leave as `b"Zo\\xc3\\xab"`. The aiohttp pool hands aiohttp every
header decoded as Latin-1 (one character per byte, any byte) and writes the
request head back as Latin-1 here, so each byte goes out as it came, as with
httpcore. aiohttp's own headers (`Host`, `Content-Length`, ...) are ASCII
and come out the same either way.

Only the pool's own requests use this: `RawHeaderRequest` is passed
to its `ClientSession` as `request_class`. Its `send` is aiohttp's own,
run with this module's writer in place of `StreamWriter`: nothing of
aiohttp's is changed for anyone else.
"""

from __future__ import annotations

import re
import types
from typing import Any

from aiohttp import client_reqrep, http_writer

__all__ = ["RawHeaderRequest", "header_text"]

#: control characters a header must not hold (RFC 9110 section 5.5), as aiohttp refuses them
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_text(raw: bytes) -> str:
    """A header name or value as aiohttp takes it: one character per byte."""
    return raw.decode("latin-1")


def _head_bytes(status_line: str, headers: Any) -> bytes:
    """The request head, each character one byte (the inverse of `header_text()`)."""
    lines = [status_line]
    for name, value in headers.items():
        lines.append(f"{name}: {value}")
    for line in lines:
        if _FORBIDDEN.search(line) is not None:
            raise ValueError("Forbidden control character detected in headers. "
                             "Potential header injection attack.")
    text = "\r\n".join(lines) + "\r\n\r\n"
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # not from httpx's bytes: written as aiohttp would
        return text.encode("utf-8")


class _RawHeaderWriter(http_writer.StreamWriter):
    """aiohttp's writer, with the request head written byte for byte."""

    async def write_headers(self, status_line: str, headers: Any) -> None:
        await super().write_headers(status_line, headers)
        self._headers_buf = _head_bytes(status_line, headers)


def _send_with_raw_headers() -> Any:
    """aiohttp's `ClientRequest.send`, looking up `StreamWriter` as our writer."""
    send = client_reqrep.ClientRequest.send
    names = dict(send.__globals__, StreamWriter=_RawHeaderWriter)
    function = types.FunctionType(send.__code__, names, send.__name__, send.__defaults__,
                                  send.__closure__)
    function.__kwdefaults__ = send.__kwdefaults__
    function.__qualname__ = send.__qualname__
    return function


class RawHeaderRequest(client_reqrep.ClientRequest):
    """aiohttp's request, sending its head's bytes as given (see the module docstring)."""

    send = _send_with_raw_headers()
