"""``file://`` discovery against hostile paths: a FIFO, a symlink to /dev/zero, a
directory, an oversized file. Discovery never blocks, never reads more than the cap,
keeps the last good set, and the client closes promptly."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

import meshlib
from conftest import BackendFactory
from meshlib import Policy
from meshlib._discovery._file import MAX_FILE_BYTES, FileDiscovery, _read

#: a close that takes longer than this would mean a discovery thread was stuck
CLOSE_LIMIT = 5.0


def _closed_promptly(client: meshlib.MeshClient) -> float:
    """Close ``client`` in a helper thread; fail if it hangs; return how long it took."""
    start = time.monotonic()
    closer = threading.Thread(target=client.close, daemon=True)
    closer.start()
    closer.join(CLOSE_LIMIT)
    assert not closer.is_alive(), "MeshClient.close() hung"
    return time.monotonic() - start


def _hostile(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "svc.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "huge":
        with open(path, "wb") as handle:  # sparse: costs no disk
            handle.truncate(MAX_FILE_BYTES * 64)
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "huge"])
def test_hostile_file_never_blocks_and_names_the_problem(tmp_path: Path, kind: str) -> None:
    """Through a real MeshClient: the request waits its deadline, NoEndpointsError says
    why the file was refused, and the client closes promptly."""
    path = _hostile(tmp_path, kind)
    client = meshlib.MeshClient(services={"svc": f"file://{path}"},
                                policy=Policy(timeout=0.5))
    try:
        with pytest.raises(meshlib.NoEndpointsError) as caught:
            client.get("http://svc/")
        message = str(caught.value)
        expected = {"fifo": "FIFO", "dev-zero": "device", "directory": "directory",
                    "huge": "byte limit"}[kind]
        assert expected in message
    finally:
        _closed_promptly(client)


def test_fifo_with_a_writer_still_refused(tmp_path: Path) -> None:
    """Even with a writer on the FIFO (so a blocking open would succeed), it is not read."""
    path = _hostile(tmp_path, "fifo")
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a writer that never writes
    try:
        with pytest.raises(OSError, match="FIFO"):
            _read(str(path))
    finally:
        os.close(fd)


def test_dev_zero_is_not_read_at_all(tmp_path: Path) -> None:
    """The symlink to /dev/zero is refused before a byte is read (no memory growth)."""
    path = _hostile(tmp_path, "dev-zero")
    with pytest.raises(OSError, match="device"):
        _read(str(path))


def test_file_at_the_cap_is_read(tmp_path: Path) -> None:
    """A file of exactly MAX_FILE_BYTES is accepted (padding after the JSON)."""
    path = tmp_path / "svc.json"
    body = json.dumps([{"host": "127.0.0.1", "port": 1}]).encode()
    path.write_bytes(body + b" " * (MAX_FILE_BYTES - len(body)))
    _, content = _read(str(path))
    assert len(content) == MAX_FILE_BYTES


def test_good_file_replaced_by_hostile_ones_keeps_last_good_set(
        tmp_path: Path, backends: BackendFactory, caplog: pytest.LogCaptureFixture) -> None:
    """A serving file swapped for a FIFO, then /dev/zero, then a huge file: the last good
    set keeps serving, one warning names the problem, and the client closes promptly."""
    caplog.set_level(logging.WARNING, "meshlib.discovery")
    b = backends(1)
    path = tmp_path / "svc.json"
    host, port = b.addresses[0].rsplit(":", 1)
    path.write_text(json.dumps([{"host": host, "port": int(port)}]))
    client = meshlib.MeshClient(services={"svc": f"file://{path}"})
    try:
        assert client.get("http://svc/").status_code == 200
        for kind in ("fifo", "dev-zero", "huge"):
            path.unlink()
            _hostile(tmp_path, kind)
            time.sleep(FileDiscovery.POLL_INTERVAL * 2.5)
            for _ in range(3):
                assert client.get("http://svc/").status_code == 200
        endpoints = client.snapshot()["services"]["svc"]["endpoints"]
        assert [e["endpoint"] for e in endpoints] == [b.addresses[0]]
    finally:
        _closed_promptly(client)
    warnings = [r.getMessage() for r in caplog.records if "failed, keeping 1" in r.getMessage()]
    assert warnings and "FIFO" in warnings[0]


async def test_async_client_with_a_fifo_closes_promptly(tmp_path: Path) -> None:
    """AsyncMeshClient: the FIFO neither blocks the event loop nor aclose()."""
    import asyncio

    path = _hostile(tmp_path, "fifo")
    client = meshlib.AsyncMeshClient(services={"svc": f"file://{path}"},
                                     policy=Policy(timeout=0.3))
    with pytest.raises(meshlib.NoEndpointsError, match="FIFO"):
        await client.get("http://svc/")
    await asyncio.wait_for(client.aclose(), CLOSE_LIMIT)
