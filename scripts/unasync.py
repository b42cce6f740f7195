#!/usr/bin/env python3
"""Generate the sync twins from the async sources (httpcore's ``unasync`` approach).

    python scripts/unasync.py          # rewrite src/meshlib/_sync/{pool,transport}.py
    python scripts/unasync.py --check  # exit 1 if a generated file is stale

Each rule renames whole words (``AsyncFoo`` -> ``Foo``, ``aclose`` -> ``close``)
and drops ``async``/``await``; the result's imports are re-sorted with ruff so
that it passes ``ruff check`` like hand-written code. Only files that differ by
``await`` alone are generated: what threads and tasks do differently lives in
the hand-written ``_async/runner.py`` and ``_sync/runner.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "meshlib"
FILES = ("pool.py", "transport.py")

#: (pattern, replacement), applied in order to every line
RULES: tuple[tuple[str, str], ...] = (
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aiter__\b", "__iter__"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAwaitable\[([\w.]+)\]", r"\1"),
    (r"\bAwaitable, ", ""),
    (r"\bAsyncByteStream\b", "SyncByteStream"),
    (r"\bhandle_async_request\b", "handle_request"),
    (r"\bhttpcore\._backends\.auto\b", "httpcore._backends.sync"),
    (r"\bAutoBackend\b", "SyncBackend"),
    (r"\b_Async([A-Z]\w*)", r"_\1"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r"\basync_attempt_limit\b", "attempt_limit"),
    (r"\bwait_ready_async\b", "wait_ready"),
    (r"\baclose\b", "close"),
    (r"\badiscard\b", "discard"),
    (r"\basleep\b", "sleep"),
)
_COMPILED = tuple((re.compile(pattern), replacement) for pattern, replacement in RULES)


def unasync_line(line: str) -> str:
    """One line of async source as its sync twin."""
    for pattern, replacement in _COMPILED:
        line = pattern.sub(replacement, line)
    return line


def generate(source: Path) -> str:
    """The sync twin of ``source``: renamed, marked as generated, imports sorted."""
    relative = source.relative_to(ROOT).as_posix()
    lines = [unasync_line(line) for line in source.read_text().splitlines(keepends=True)]
    text = (f"# Generated from {relative} by scripts/unasync.py: do not edit.\n"
            + "".join(lines))
    return _sort_imports(text, source.name)


def _sort_imports(text: str, name: str) -> str:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        sys.exit("scripts/unasync.py needs ruff (make venv installs it)")
    result = subprocess.run(
        [ruff, "check", "--quiet", "--select", "I", "--fix-only", "--exit-zero",
         "--stdin-filename", str(PACKAGE / "_sync" / name), "-"],
        input=text, capture_output=True, text=True, check=True, cwd=ROOT)
    return result.stdout


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in FILES:
        source, target = PACKAGE / "_async" / name, PACKAGE / "_sync" / name
        wanted = generate(source)
        current = target.read_text() if target.exists() else None
        if current == wanted:
            continue
        if check:
            stale.append(target.relative_to(ROOT).as_posix())
        else:
            target.write_text(wanted)
            print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print(f"stale generated file(s): {', '.join(stale)}; run `make unasync`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
