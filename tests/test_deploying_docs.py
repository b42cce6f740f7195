"""docs/deploying.md: its FastAPI and Flask examples are the files in examples/deploying,
verbatim, and they serve real requests (uvicorn, wsgiref) through the mesh."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from meshlib.testing import Fleet
from test_asgi import serve_asgi
from test_wsgi import serve_wsgi

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "deploying"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_deploying_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def users(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """Two `users` endpoints, configured the way a deployment does it: MESHLIB_SERVICES."""
    with Fleet(2) as fleet:
        monkeypatch.setenv("MESHLIB_SERVICES", f"users={fleet.url}")
        yield fleet


def test_examples_are_in_the_doc_verbatim() -> None:
    doc = (ROOT / "docs" / "deploying.md").read_text()
    for name in ("fastapi_app", "flask_app"):
        text = (EXAMPLES / f"{name}.py").read_text().rstrip()
        assert f"```python\n{text}\n```" in doc, name


def test_fastapi_example_serves_through_the_mesh(users: Fleet) -> None:
    """Under uvicorn: the lifespan's client answers, the middleware adds the snapshot."""
    app = _load("fastapi_app").app
    endpoints = users.endpoints
    with serve_asgi(app) as url:
        answer = httpx.get(f"{url}/profile/7", headers={"x-mesh-timeout-ms": "2000"},
                           timeout=10)
        snapshot = httpx.get(f"{url}/_mesh", timeout=10).json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["served_by"] in endpoints
    assert body["user"]["path"] == "/v1/users/7"
    assert 0 < int(body["user"]["headers"]["x-mesh-timeout-ms"]) <= 2000
    assert "users" in snapshot["services"]


def test_flask_example_serves_through_the_mesh(users: Fleet) -> None:
    """Under wsgiref: the module's client answers; a stalled service gives 504."""
    module = _load("flask_app")
    try:
        endpoints = users.endpoints
        with serve_wsgi(module.application) as url:
            answer = httpx.get(f"{url}/profile/3", timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.json()["served_by"] in endpoints
            users.set(stall=True)
            late = httpx.get(f"{url}/profile/3", headers={"x-mesh-timeout-ms": "300"},
                             timeout=10)
            assert late.status_code == 504
    finally:
        module.mesh.close()
        sys.modules.pop(module.__name__, None)
