"""``MeshTransport``, the sync transport: generated into ``_sync/transport.py``.

Kept so that ``meshlib._transport`` stays importable.
"""

from __future__ import annotations

from ._sync.transport import MeshTransport

__all__ = ["MeshTransport"]
