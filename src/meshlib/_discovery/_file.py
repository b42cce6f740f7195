"""`file:///abs/path.json`: a JSON list of endpoints, re-read when the file changes.

The file holds a JSON list of objects ``{"host", "port", "weight"?, "zone"?,
"priority"?}``. It is polled cheaply every `FileDiscovery.POLL_INTERVAL`
seconds by `stat()` and re-read only when its `(mtime_ns, size, inode)`
changes, so replacing it by an atomic rename (write a temporary file, then
`os.replace`) is always seen, and a half-written file is never read twice.
A missing file, unreadable file, garbage JSON or a bad entry yields a
`DiscoveryFailure` (the mesh keeps the last good set).

Only regular files are read: a FIFO, a device (a symlink to `/dev/zero`), a
directory or a socket is a failure, found by `fstat` on a descriptor opened
with `O_NONBLOCK` (opening a FIFO for reading would otherwise wait for a
writer for ever). A file larger than `MAX_FILE_BYTES` is a failure too,
and at most that many bytes (plus one) are ever read.

The entry format is shared with `etcd://` and Consul (`_entries.parse_entry`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat as stat_module
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

from .._endpoint import Endpoint
from .._errors import ConfigError
from ._base import Discovery, DiscoveryFailure, DiscoveryOptions, Update
from ._entries import EntryError, parse_entry

__all__ = ["MAX_FILE_BYTES", "EntryError", "FileDiscovery", "parse_entry", "parse_entry_list"]

#: the largest endpoint file read (1 MiB, about 15,000 entries); a larger one is refused
MAX_FILE_BYTES = 1 << 20

logger = logging.getLogger("meshlib.discovery")

_Signature = tuple[int, int, int]


def parse_entry_list(text: str | bytes) -> tuple[Endpoint, ...]:
    """The endpoints of a JSON list; `EntryError` for garbage or any bad entry."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EntryError(f"not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[..." nested deeper than the interpreter's stack allows
        raise EntryError("not valid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise EntryError(f"expected a JSON list of endpoints, not {type(data).__name__}")
    endpoints: dict[tuple[str, int], Endpoint] = {}
    for position, entry in enumerate(data):
        try:
            endpoint = parse_entry(entry)
        except EntryError as exc:
            raise EntryError(f"entry {position}: {exc}") from None
        endpoints.setdefault((endpoint.host, endpoint.port), endpoint)
    return tuple(endpoints.values())


def _file_path(url: str) -> str:
    """The absolute path of a `file://` URL; `ConfigError` naming the URL if it is bad."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        raise ConfigError(f"discovery URL {url!r} is not a file:// URL")
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(
            f"discovery URL {url!r}: write an absolute path as file:///path/to/file.json"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"discovery URL {url!r}: a file URL takes no query or fragment")
    path = unquote(parts.path)
    if not path.startswith("/") or path.endswith("/"):
        raise ConfigError(f"discovery URL {url!r} does not name an absolute file path")
    return path


def _signature(stat: os.stat_result) -> _Signature:
    """What tells that a file changed: modification time, size and inode."""
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class NotReadable(OSError):
    """The path names something that is not a regular file, or one too large to read."""


def _kind(mode: int) -> str | None:
    """What a non-regular file is (`None` for a regular file)."""
    if stat_module.S_ISREG(mode):
        return None
    for test, name in ((stat_module.S_ISFIFO, "a FIFO"), (stat_module.S_ISCHR, "a device"),
                       (stat_module.S_ISBLK, "a device"), (stat_module.S_ISDIR, "a directory"),
                       (stat_module.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check(info: os.stat_result) -> None:
    """Raise `NotReadable` unless `info` is a regular file within the size cap."""
    kind = _kind(info.st_mode)
    if kind is not None:
        raise NotReadable(f"{kind}, not a regular file: refused")
    if info.st_size > MAX_FILE_BYTES:
        raise NotReadable(f"{info.st_size} bytes, larger than the {MAX_FILE_BYTES} byte limit")


def _read(path: str) -> tuple[_Signature, bytes]:
    """The file's content and the signature of exactly that content.

    Never blocks: opened with `O_NONBLOCK` and checked by `fstat` (a regular
    file within the size cap) before a single byte is read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        _check(info)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:  # it grew after the fstat
            raise NotReadable(f"larger than the {MAX_FILE_BYTES} byte limit")
        return _signature(info), b"".join(chunks)
    finally:
        os.close(fd)


class FileDiscovery(Discovery):
    """A JSON file of endpoints, polled for changes: `file:///etc/mesh/users.json`."""

    #: seconds between two ``stat()`` calls
    POLL_INTERVAL = 0.5

    def __init__(self, url: str, options: DiscoveryOptions | None = None,
                 *, poll_interval: float | None = None) -> None:
        super().__init__(url, options)
        self.path = _file_path(url)
        if poll_interval is not None:
            self.POLL_INTERVAL = poll_interval

    def _stat(self) -> _Signature | str:
        """The file's signature, or an error text if it cannot be stat'ed."""
        try:
            info = os.stat(self.path)
            _check(info)
        except OSError as exc:
            return f"cannot read {self.path}: {exc.strerror or exc}"
        return _signature(info)

    async def _load(self) -> tuple[_Signature | str, Update]:
        """Read and parse the file: its signature (or error text) and the update to yield."""
        try:
            signature, content = await asyncio.to_thread(_read, self.path)
        except OSError as exc:
            reason = f"cannot read {self.path}: {exc.strerror or exc}"
            return reason, DiscoveryFailure(reason)
        try:
            return signature, parse_entry_list(content)
        except EntryError as exc:
            return signature, DiscoveryFailure(f"{self.path}: {exc}")

    async def updates(self) -> AsyncIterator[Update]:
        """Yield the file's endpoints now and after each change; failures as they happen."""
        last: _Signature | str | None = None
        while True:
            current = self._stat()
            if current != last:
                update: Update
                if isinstance(current, str):
                    last, update = current, DiscoveryFailure(current)
                else:
                    last, update = await self._load()
                logger.debug("discovery %s: file changed: %s", self.url,
                             update if isinstance(update, DiscoveryFailure)
                             else f"{len(update)} endpoints")
                yield update
            await asyncio.sleep(self.POLL_INTERVAL)
