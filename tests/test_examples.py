"""The examples run end to end as their users would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_two_services() -> None:
    run = EXAMPLES / "two_services" / "run.py"
    proc = subprocess.run([sys.executable, str(run)], capture_output=True, text=True,
                          timeout=60, cwd=run.parent, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    a_saw = re.search(r"^A saw x-mesh-timeout-ms: (\d+)$", out, re.MULTILINE)
    b_saw = re.search(r"^B saw x-mesh-timeout-ms: (\d+)$", out, re.MULTILINE)
    b_left = re.search(r"^B time left in its handler: ([\d.]+) ms$", out, re.MULTILINE)
    assert a_saw and b_saw and b_left, out
    # a bit less than 800 at each hop, never more than what the hop before sent
    assert 0 < int(b_saw.group(1)) <= int(a_saw.group(1)) < 800
    assert 0 < float(b_left.group(1)) <= int(b_saw.group(1))
    assert "servers stopped" in out


def _run(script: Path) -> str:
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=script.parent, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_quickstart() -> None:
    """The quick start succeeds on every request and mostly avoids the bad instances."""
    out = _run(EXAMPLES / "quickstart.py")
    assert "200 GETs, all successful" in out
    healthy = re.search(r"'healthy': (\d+)", out)
    assert healthy and int(healthy.group(1)) > 150, out


def test_telemetry_console_example() -> None:
    """The telemetry example prints the spans of a hedged and retried request."""
    out = _run(EXAMPLES / "telemetry_console.py")
    assert "hedge" in out.lower() and "retry" in out.lower(), out
