"""scripts/docstrings_md.py turns reST in docstrings into the Markdown mkdocstrings
renders, and the built site holds no raw reST roles or version directives."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAW = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj|const):`"
                 r"|\.\. (?:versionadded|versionchanged|deprecated)::")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docstrings_md",
                                                  ROOT / "scripts" / "docstrings_md.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roles_literals_and_versions_become_markdown() -> None:
    """Each reST construct meshlib's docstrings used, converted."""
    convert = _script().convert_docstring
    text = '''Use :class:`~meshlib.Policy` or :meth:`Call.stamp`, :mod:`meshlib.asgi`,
    :func:`time_left`, :class:`the client <meshlib.MeshClient>` and ``x-mesh-timeout-ms``.

    Example::

        client = meshlib.MeshClient()

        client.get("http://users/")

    :param host: the address.
    :param ttl: seconds
        to live.

    .. versionadded:: 0.1
    .. versionchanged:: 0.3
       Mesh errors are answered
       504 or 503.
    '''
    assert convert(text) == '''Use `Policy` or `Call.stamp()`, `meshlib.asgi`,
    `time_left()`, `the client` and `x-mesh-timeout-ms`.

    Example:

    ```
    client = meshlib.MeshClient()

    client.get("http://users/")
    ```

    Args:
        host: the address.
        ttl: seconds
            to live.

    Added in version 0.1.
    Changed in version 0.3: Mesh errors are answered 504 or 503.
    '''


def test_only_docstrings_change_and_twice_is_once() -> None:
    """Code and comments stay as they are; a second run changes nothing."""
    module = _script()
    source = '''"""Module ``doc``."""

X = "``not a docstring``"  # :class:`comment`


def f() -> None:
    """Call :func:`g`.

    .. versionadded:: 0.2
    """
    y = """``kept``"""
'''
    once = module.convert_source(source)
    assert once == source.replace('"""Module ``doc``."""', '"""Module `doc`."""').replace(
        "Call :func:`g`.", "Call `g()`.").replace(".. versionadded:: 0.2", "Added in version 0.2.")
    assert module.convert_source(once) == once


def test_the_source_holds_nothing_left_to_convert() -> None:
    """Every docstring under src/ is Markdown already (run the script to fix this)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "docstrings_md.py"),
                           "--check"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(300)
def test_built_site_has_no_raw_rest(tmp_path: Path) -> None:
    """mkdocs build --strict; no page of the site shows a raw role or version directive."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    pages = sorted(site.rglob("*.html"))
    assert any(p.parent.name == "reference" for p in pages)
    raw = {str(p.relative_to(site)): RAW.findall(p.read_text()) for p in pages}
    assert {k: v for k, v in raw.items() if v} == {}
    reference = (site / "reference" / "index.html").read_text()
    assert "Added in version 0.1." in reference
