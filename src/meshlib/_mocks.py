"""Whether an active respx mock answers a request, so it need not wait for discovery.

A test that mocks `http://users/...` with respx, for a service whose
discovery is production's (`dns+srv://...`, `k8s://...`), must not wait
out the deadline for a discovery answer that will never come: the mock
answers. meshlib never imports respx: the check runs only when respx is
already imported, and only for a service whose discovery has not answered
yet, so it costs nothing on the path of a request to a ready service.
"""

from __future__ import annotations

import sys

import httpx

__all__ = ["mocked"]


def mocked(request: httpx.Request) -> bool:
    """Whether a started respx router has a route (not a pass-through) whose pattern
    matches `request`. Patterns are matched without running side effects."""
    module = sys.modules.get("respx.mocks")
    if module is None:
        return False
    try:
        for mocker in module.Mocker.registry.values():
            for router in mocker.routers:
                for route in router.routes:
                    if route.is_pass_through:
                        continue
                    pattern = route.pattern
                    if pattern is None or pattern.match(request):
                        return True
    except Exception:  # another respx version's internals: behave as without a mock
        return False
    return False
