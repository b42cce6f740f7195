"""The wheel and the sdist build, and the wheel installs and runs in a fresh virtualenv."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
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


def _offline_venv(venv: Path, tmp_path: Path) -> Path:
    """A fresh virtualenv that sees this interpreter's installed packages (meshlib's
    dependencies) through a ``.pth`` line, so the wheel installs with ``--no-index
    --no-deps``: no package index is needed. A path line in a ``.pth`` file does not
    process that folder's own ``.pth`` files, so this checkout's editable install
    stays invisible there."""
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                tmp_path, 60).strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(site, "_meshlib_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


@pytest.mark.timeout(300)
def test_wheel_and_sdist_build_and_install_in_a_fresh_venv(tmp_path: Path) -> None:
    """python -m build (wheel from the sdist) as httpx-mesh; pip installs the wheel by
    that name into a fresh venv, offline; import meshlib, the meshlib command and the
    meshlib pytest plugin work there."""
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
         tmp_path, 240)
    version = meshlib.__version__
    wheel = dist / f"httpx_mesh-{version}-py3-none-any.whl"
    sdist = dist / f"httpx_mesh-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"httpx_mesh-{version}.dist-info/METADATA").decode()
        entry_points = zf.read(f"httpx_mesh-{version}.dist-info/entry_points.txt").decode()
    assert {"meshlib/__init__.py", "meshlib/py.typed", "meshlib/cli.py"} <= names
    assert not any(n.startswith(("tests/", "examples/", "docs/")) for n in names)
    assert "\nName: httpx-mesh\n" in metadata
    assert "Project-URL: Documentation" in metadata and "Classifier: Typing :: Typed" in metadata
    assert "Requires-Dist: httpx" in metadata
    for extra in ("aiohttp", "http2", "xds"):
        assert f"Provides-Extra: {extra}\n" in metadata
    assert "meshlib = meshlib.cli:main" in entry_points
    assert "meshlib = meshlib.testing._plugin" in entry_points
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md",
            "src/meshlib/__init__.py"} <= members

    venv = tmp_path / "fresh"
    python = _offline_venv(venv, tmp_path)
    script = venv / "bin" / "meshlib"
    _run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
         tmp_path, 240)
    shown = _run([str(python), "-m", "pip", "show", "httpx-mesh"], tmp_path, 60)
    assert f"Name: httpx-mesh\nVersion: {version}\n" in shown
    where = _run([str(python), "-c",
                  "import importlib.metadata as m, meshlib; print(meshlib.__file__); "
                  "print(m.version('httpx-mesh')); print(meshlib.MeshClient.__name__)"],
                 tmp_path, 60).split()
    assert where[0].startswith(str(venv)), where  # the installed copy, not the checkout
    assert where[1:] == [version, "MeshClient"]
    assert _run([str(script), "--version"], tmp_path, 60).strip() == f"meshlib {version}"
    plugins = _run([str(python), "-c",
                    "import importlib.metadata as m; "
                    "print([e.value for e in m.entry_points(group='pytest11') "
                    "if e.name == 'meshlib'])"], tmp_path, 60)
    assert "meshlib.testing._plugin" in plugins
