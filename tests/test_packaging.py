"""The wheel and the sdist build, and the wheel installs and runs in a fresh virtualenv."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import meshlib

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str], cwd: Path, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.timeout(300)
def test_wheel_and_sdist_build_and_install_in_a_fresh_venv(tmp_path: Path) -> None:
    """python -m build (wheel from the sdist); pip install it; import; meshlib --version."""
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], tmp_path, 240)
    version = meshlib.__version__
    wheel = dist / f"meshlib-{version}-py3-none-any.whl"
    sdist = dist / f"meshlib-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"meshlib-{version}.dist-info/METADATA").decode()
    assert {"meshlib/__init__.py", "meshlib/py.typed", "meshlib/cli.py"} <= names
    assert not any(n.startswith(("tests/", "examples/", "docs/")) for n in names)
    assert "Project-URL: Documentation" in metadata and "Classifier: Typing :: Typed" in metadata
    assert "Requires-Dist: httpx" in metadata
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md",
            "src/meshlib/__init__.py"} <= members

    venv = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    python, script = venv / "bin" / "python", venv / "bin" / "meshlib"
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], tmp_path, 240)
    where = _run([str(python), "-c", "import meshlib; print(meshlib.__file__)"], tmp_path, 60)
    assert where.strip().startswith(str(venv)), where  # the installed copy, not the checkout
    assert _run([str(script), "--version"], tmp_path, 60).strip() == f"meshlib {version}"
