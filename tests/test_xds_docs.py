"""The XdsServer example of docs/xds.md runs, and a client gets its configuration from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("grpc")

DOC = Path(__file__).resolve().parent.parent / "docs" / "xds.md"

CLIENT = """\
import asyncio
from meshlib._xds.bootstrap import parse_bootstrap
from meshlib._xds.client import XdsClient

async def _follow():
    client = XdsClient(parse_bootstrap(server.bootstrap), "users.shop.svc.cluster.local:80")
    task = asyncio.create_task(client.run())
    try:
        return await client.wait_ready_async(10)
    finally:
        task.cancel()

CONFIG.append(asyncio.run(_follow()))
"""


def test_the_xds_server_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The page's example, with a client where it says "run the code under test"."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    (example,) = [b for b in blocks if "XdsServer()" in b]
    marker = "    ...                              # run the code under test\n"
    assert marker in example
    code = example.replace(marker, "".join(f"    {line}\n" for line in CLIENT.splitlines()))
    found: list[object] = []
    exec(compile(code, str(DOC), "exec"), {"CONFIG": found})
    (config,) = found
    assert list(config.clusters) == ["users"]  # type: ignore[attr-defined]
    assert config.endpoints["users"].endpoints[0].port == 8001  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert '"server_uri": "127.0.0.1:' in out and "kind='ack'" in out and out.endswith("[]\n")
