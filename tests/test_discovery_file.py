"""``file://`` discovery: a JSON file of endpoints, polled and re-read on change."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlib._discovery import DiscoveryFailure, discovery_from_url
from meshlib._discovery._file import FileDiscovery, parse_entry_list
from meshlib._endpoint import Endpoint
from meshlib._errors import ConfigError
from servers import next_update, temp_dir

POLL = 0.02


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A temporary directory, removed after the test."""
    with temp_dir() as path:
        yield path


@pytest.fixture
async def watch(tmp: Path) -> AsyncIterator[Any]:
    """``updates()`` of a fast-polling FileDiscovery on ``tmp/users.json``, closed afterwards."""
    discovery = FileDiscovery(f"file://{tmp}/users.json", poll_interval=POLL)
    updates = discovery.updates()
    yield updates
    await updates.aclose()


def write_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON (or a str as it is) by writing a temp file and renaming it."""
    temp = path.with_suffix(".tmp")
    temp.write_text(data if isinstance(data, str) else json.dumps(data))
    os.replace(temp, path)


@pytest.mark.parametrize("url", [
    "file://relative/users.json",
    "file:///",
    "file:///etc/mesh/",
    "file:///etc/mesh/users.json?x=1",
    "file:///etc/mesh/users.json#frag",
])
def test_bad_urls_raise_config_error_naming_the_url(url: str) -> None:
    """A file URL that is not an absolute file path raises ConfigError naming the URL."""
    with pytest.raises(ConfigError) as info:
        discovery_from_url(url)
    assert repr(url) in str(info.value)


def test_url_forms() -> None:
    """file:///path and file://localhost/path are accepted; %-escapes are decoded."""
    assert FileDiscovery("file:///a/b%20c.json").path == "/a/b c.json"
    assert FileDiscovery("file://localhost/a/b.json").path == "/a/b.json"
    assert isinstance(discovery_from_url("file:///a/b.json"), FileDiscovery)


def test_entry_fields() -> None:
    """host, port, weight, zone and priority are read; IPv6 brackets are dropped."""
    text = json.dumps([
        {"host": "127.0.0.1", "port": 8001},
        {"host": "[::1]", "port": 8002, "weight": 2.5, "zone": "a", "priority": 1},
        {"host": "127.0.0.1", "port": 8001, "weight": 9},
    ])
    assert parse_entry_list(text) == (
        Endpoint("127.0.0.1", 8001),
        Endpoint("::1", 8002, 2.5, "a", 1),
    )


@pytest.mark.parametrize("text", [
    "not json", "{}", '[{"host": "a"}]', '[{"port": 1}]', '[{"host": "a", "port": 0}]',
    '[{"host": "a", "port": "80"}]', '[{"host": "a", "port": true}]',
    '[{"host": "", "port": 80}]', '[{"host": "a b", "port": 80}]',
    '[{"host": "a", "port": 80, "weight": 0}]', '[{"host": "a", "port": 80, "weight": "x"}]',
    '[{"host": "a", "port": 80, "zone": 3}]', '[1]', '[{"host": "a:b", "port": 80}]',
])
def test_bad_content_is_rejected(text: str) -> None:
    """Garbage JSON or any bad entry is rejected with a reason."""
    with pytest.raises(ValueError):
        parse_entry_list(text)


async def test_initial_read_and_atomic_rename(tmp: Path, watch: Any) -> None:
    """The file is read at start and again after it is replaced by an atomic rename."""
    write_atomic(tmp / "users.json", [{"host": "127.0.0.1", "port": 8001}])
    assert await next_update(watch) == (Endpoint("127.0.0.1", 8001),)
    write_atomic(tmp / "users.json", [{"host": "127.0.0.1", "port": 8001},
                                      {"host": "::1", "port": 8002, "zone": "b"}])
    update = await next_update(watch, timeout=2)
    assert update == (Endpoint("127.0.0.1", 8001), Endpoint("::1", 8002, 1.0, "b"))


async def test_in_place_rewrite_is_seen(tmp: Path, watch: Any) -> None:
    """A file rewritten in place (same inode) is re-read when its size or mtime changes."""
    path = tmp / "users.json"
    path.write_text(json.dumps([{"host": "127.0.0.1", "port": 8001}]))
    assert len(await next_update(watch)) == 1
    path.write_text(json.dumps([{"host": "127.0.0.1", "port": 8001, "weight": 20}]))
    assert (await next_update(watch, timeout=2))[0].weight == 20.0


async def test_unchanged_file_is_not_re_yielded(tmp: Path, watch: Any) -> None:
    """Without a change nothing new is yielded (polling is only a stat)."""
    write_atomic(tmp / "users.json", [{"host": "127.0.0.1", "port": 8001}])
    assert await next_update(watch)
    with pytest.raises(asyncio.TimeoutError):
        await next_update(watch, lambda _: True, timeout=POLL * 10)


async def test_missing_file_is_a_failure_until_it_appears(tmp: Path, watch: Any) -> None:
    """A missing file yields DiscoveryFailure; the set arrives once the file is created."""
    failure = await next_update(watch, lambda _: True)
    assert isinstance(failure, DiscoveryFailure)
    assert "users.json" in failure.reason
    write_atomic(tmp / "users.json", [{"host": "127.0.0.1", "port": 8001}])
    assert await next_update(watch, timeout=2) == (Endpoint("127.0.0.1", 8001),)


async def test_garbage_is_a_failure_then_recovers(tmp: Path, watch: Any) -> None:
    """Garbage JSON or a bad entry yields DiscoveryFailure; a fixed file is read again."""
    path = tmp / "users.json"
    write_atomic(path, [{"host": "127.0.0.1", "port": 8001}])
    assert await next_update(watch)
    write_atomic(path, '[{"host": "127.0.0.1", "port": 80')
    failure = await next_update(watch, lambda _: True, timeout=2)
    assert isinstance(failure, DiscoveryFailure) and "JSON" in failure.reason
    write_atomic(path, [{"host": "127.0.0.1", "port": 99999}])
    failure = await next_update(watch, lambda _: True, timeout=2)
    assert isinstance(failure, DiscoveryFailure) and "entry 0" in failure.reason
    write_atomic(path, [{"host": "127.0.0.2", "port": 8002}])
    assert await next_update(watch, timeout=2) == (Endpoint("127.0.0.2", 8002),)


async def test_deleted_file_is_a_failure(tmp: Path, watch: Any) -> None:
    """Deleting the file yields DiscoveryFailure (the mesh keeps the last good set)."""
    path = tmp / "users.json"
    write_atomic(path, [{"host": "127.0.0.1", "port": 8001}])
    assert await next_update(watch)
    path.unlink()
    assert isinstance(await next_update(watch, lambda _: True, timeout=2), DiscoveryFailure)


async def test_empty_list_is_an_empty_set(tmp: Path, watch: Any) -> None:
    """An empty JSON list is an empty endpoint set, not a failure."""
    write_atomic(tmp / "users.json", [])
    assert await next_update(watch, lambda _: True) == ()
