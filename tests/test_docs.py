"""The documentation site covers the public API and every page (the build is `make docs`)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import meshlib
import meshlib.asgi
import meshlib.etcd
import meshlib.testing
import meshlib.wsgi

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC_MODULES = (meshlib.asgi, meshlib.wsgi, meshlib.etcd, meshlib.testing)


def _reference() -> str:
    return (DOCS / "reference.md").read_text()


def test_reference_lists_every_public_name() -> None:
    """Each name in meshlib.__all__ and each public submodule has its `::: ` entry."""
    documented = set(re.findall(r"^::: (\S+)$", _reference(), re.MULTILINE))
    names = {f"meshlib.{name}" for name in meshlib.__all__ if not name.startswith("__")}
    names |= {module.__name__ for module in PUBLIC_MODULES}
    assert sorted(names - documented) == []


def test_every_public_name_has_a_docstring() -> None:
    """mkdocstrings renders docstrings: none may be missing."""
    missing = []
    for name in meshlib.__all__:
        obj = getattr(meshlib, name)
        if not name.startswith("__") and not inspect.getdoc(obj):
            missing.append(f"meshlib.{name}")
    for module in PUBLIC_MODULES:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
    assert missing == []


def test_every_page_is_in_the_nav() -> None:
    """No page is left out of mkdocs.yml's nav, and the nav names no missing page."""
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r"^\s+- [^:]+: (\S+\.md)$", config, re.MULTILINE))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")
             if not p.name.startswith("_")}  # partials, excluded in mkdocs.yml
    assert pages - nav == set(), "pages missing from the nav"
    assert nav - pages == set(), "nav entries without a page"
