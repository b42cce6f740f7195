"""The sync twins are generated from the async sources, and kept so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "unasync.py"


def test_generated_sync_twins_are_up_to_date() -> None:
    """`scripts/unasync.py --check` passes: nobody edited a generated file or forgot to
    regenerate it (`make unasync`)."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_rules_rename_async_words_only() -> None:
    """Whole words are renamed; words that merely contain them are left alone."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import unasync  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(SCRIPT.parent))
    line = "    async def aclose(self) -> AsyncEndpointPool:  # await x; acloser\n"
    assert unasync.unasync_line(line) == "    def close(self) -> EndpointPool:  # x; acloser\n"
    assert unasync.unasync_line("await self._pool.handle_async_request(r)") == \
        "self._pool.handle_request(r)"
