"""HTTP/1.1 wire format of the loopback backend: request heads, bodies, reason phrases.

Pure functions over a byte buffer; no sockets, no event loop.
"""

from __future__ import annotations

import http
from collections.abc import Callable

__all__ = ["MAX_HEAD", "NO_BODY_STATUSES", "REASONS", "BadRequest", "Request", "parse_chunked",
           "parse_request", "reason"]

MAX_HEAD = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})


def reason(status: int) -> str:
    """The reason phrase of `status` (`"Unknown"` for an unregistered code)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in http.HTTPStatus}


def parse_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Parse a complete chunked body in `buf` from `start`.

    Return `(body, end)` with `end` just after the final CRLF, or
    `None` if the body is not complete yet.  Raise `ValueError` when
    the framing is invalid.
    """
    pos = start
    spans: list[tuple[int, int]] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 1024:
                raise ValueError("chunk size line too long")
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        size = int(size_text, 16)  # ValueError on garbage
        if size < 0:
            raise ValueError("negative chunk size")
        pos = eol + 2
        if size == 0:
            # Trailers, ending with an empty line.
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    body = b"".join(bytes(buf[a:b]) for a, b in spans)
                    return body, eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        spans.append((pos, pos + size))
        pos += size
        if buf[pos : pos + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        pos += 2


class Request:
    """One parsed request."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class BadRequest(Exception):
    """The bytes received are not a valid HTTP/1.x request (answered with 400)."""


def parse_request(
    buf: bytearray, expect_continue: Callable[[dict[str, str]], None]
) -> Request | None:
    """Take one complete request off the front of `buf`, or return `None` if incomplete.

    `expect_continue(headers)` is called while the body is still awaited, so that
    the caller may answer `Expect: 100-continue`. Raises `BadRequest`.
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest("request head too large")
        return None
    lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    body_start = head_end + 4
    te = headers.get("transfer-encoding")
    if te is not None and "chunked" in te.lower():
        expect_continue(headers)
        try:
            parsed = parse_chunked(buf, body_start)
        except ValueError as exc:
            raise BadRequest(f"bad chunked body: {exc}") from None
        if parsed is None:
            return None
        body, end = parsed
    else:
        cl_text = headers.get("content-length")
        length = 0
        if cl_text is not None:
            try:
                length = int(cl_text)
            except ValueError:
                raise BadRequest(f"bad content-length {cl_text!r}") from None
            if length < 0:
                raise BadRequest("negative content-length")
        end = body_start + length
        if len(buf) < end:
            if length:
                expect_continue(headers)
            return None
        body = bytes(buf[body_start:end])
    del buf[:end]
    path, _, query = target.partition("?")
    conn = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in conn if version == "HTTP/1.0" else "close" not in conn
    return Request(method, path, query, headers, body, keep_alive)
