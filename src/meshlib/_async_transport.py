"""``AsyncMeshTransport``, the async transport: written in ``_async/transport.py``.

Kept so that ``meshlib._async_transport`` stays importable.
"""

from __future__ import annotations

from ._async.transport import AsyncMeshTransport

__all__ = ["AsyncMeshTransport"]
