"""The examples run end to end as their users would run them."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from servers import Etcd, require_binary

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


def _run_args(script: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=90, cwd=script.parent, check=False)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _one_line_hint(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 1, one line on stderr naming what is missing, no traceback."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_fastapi_example() -> None:
    """FastAPI: client in the lifespan, add_middleware, the deadline and the snapshot work."""
    out = _run_args(EXAMPLES / "fastapi_service.py").stdout
    assert re.search(r"^GET /profile/7 -> answered by 127\.0\.0\.1:\d+ after 1 attempt",
                     out, re.MULTILINE), out
    left = re.search(r"^handler time left: (\d+) ms$", out, re.MULTILINE)
    saw = re.search(r"^users saw x-mesh-timeout-ms: (\d+)$", out, re.MULTILINE)
    assert left and saw, out
    assert 0 < int(saw.group(1)) <= int(left.group(1)) <= 500
    # the lifespan's client is in the snapshot: both endpoints, one request in all
    endpoints = re.findall(r"^snapshot: users 127\.0\.0\.1:\d+ requests=(\d+) breaker=closed$",
                           out, re.MULTILINE)
    assert sorted(endpoints) == ["0", "1"], out
    assert "servers stopped" in out


def test_flask_example() -> None:
    """Flask under a threaded server: every request answered, spread over the backends."""
    out = _run_args(EXAMPLES / "flask_service.py").stdout
    assert "40 requests, all answered" in out, out
    counts = [int(n) for n in re.findall(r"127\.0\.0\.1:\d+ x(\d+)", out)]
    assert len(counts) == 3 and sum(counts) == 40, out
    deadline = re.search(r"^max deadline users saw: (\d+) ms$", out, re.MULTILINE)
    assert deadline and 0 < int(deadline.group(1)) < 1000, out
    assert "snapshot: users requests=40" in out and "servers stopped" in out


@pytest.mark.server
def test_dns_srv_example() -> None:
    """DNS SRV against a local dnsmasq: weights 3:1, standby unused, then a change followed."""
    dnsmasq = require_binary("dnsmasq", "/usr/sbin/dnsmasq")
    out = _run_args(EXAMPLES / "dns_srv.py", "--dnsmasq", dnsmasq).stdout
    first = re.search(r"^priority 10 \(weights 3, 1\): .* x(\d+), .* x(\d+), .* x(\d+)$",
                      out, re.MULTILINE)
    after = re.search(r"^after the change: .* x(\d+), .* x(\d+), .* x(\d+)$", out, re.MULTILINE)
    assert first and after, out
    heavy, light, standby = (int(n) for n in first.groups())
    assert heavy + light == 200 and standby == 0 and heavy > light > 0, out
    assert [int(n) for n in after.groups()] == [0, 0, 20], out
    assert "servers stopped" in out


def test_dns_srv_example_without_dnsmasq() -> None:
    """Without dnsmasq, the DNS example says so in one line."""
    proc = _run_args(EXAMPLES / "dns_srv.py", "--dnsmasq", "/nonexistent/dnsmasq", ok=False)
    _one_line_hint(proc, "dnsmasq", "apt-get install dnsmasq")


@pytest.mark.server
def test_etcd_example() -> None:
    """etcd: register, discover through etcd://, call, deregister: the key is gone after."""
    with Etcd() as etcd:
        out = _run_args(EXAMPLES / "etcd_register.py",
                        f"etcd://{etcd.address}/mesh/hello").stdout
        assert re.search(r"^registered /mesh/hello/\S+ \(lease \d+\)$", out, re.MULTILINE), out
        assert "GET http://hello/ -> 'hello from a registered instance'" in out, out
        assert "deregistered" in out
        assert etcd.keys("/mesh/hello/") == []


def test_etcd_example_without_etcd() -> None:
    """Without etcd, the etcd example ends in a one-line hint, not a traceback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    proc = _run_args(EXAMPLES / "etcd_register.py", f"etcd://127.0.0.1:{port}/mesh/hello",
                     ok=False)
    _one_line_hint(proc, f"no etcd at 127.0.0.1:{port}")


def test_xds_canary_example() -> None:
    """The xDS example follows each split the control plane pushes, losing no request."""
    pytest.importorskip("grpc")
    out = _run(EXAMPLES / "xds_canary.py")
    assert "split 100/0: 100 requests, all successful: {'xds:users-v1': 100}" in out, out
    assert out.count("all successful") == 3, out
    last = re.search(r"^split 0/100: .*'xds:users-v2': (\d+)", out, re.MULTILINE)
    assert last and int(last.group(1)) >= 90, out
    assert "with x-canary: 1 -> xds:users-v2 route canary-header" in out, out
    assert "servers stopped" in out
