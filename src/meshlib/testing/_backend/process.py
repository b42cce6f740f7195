"""The loopback backend in a child process: `BackendProcess` and its child's `main`.

The child (`python -m meshlib.testing._backend`) runs a `Backend`
and obeys one JSON command per stdin line, answering one JSON line on stdout:
`{"index": i|null, "set": {...}}`, `{"index": i|null, "refuse": bool}`,
`{"requests": true}` (every server's recorded requests) and `{"reset": true}`.
Closing its stdin stops it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .runner import Backend
from .settings import RecordedRequest

__all__ = ["BackendProcess", "main"]


class BackendProcess:
    """The servers of a `Backend` in a child Python process.

    Used by benchmarks so that client and servers do not share one
    interpreter lock. Keyword arguments as `Backend` (JSON
    values), plus `cpu`: pin the child to that CPU. Behaviour changes go
    through `set()` and `refuse()`; `requests()` fetches what the
    servers recorded.
    """

    def __init__(self, n: int = 1, *, cpu: int | None = None, **backend: Any) -> None:
        self._config: dict[str, Any] = {"n": n, "cpu": cpu, "backend": backend}
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.addresses: list[str] = []

    @property
    def urls(self) -> list[str]:
        """`http://host:port` of every server."""
        return [f"http://{a}" for a in self.addresses]

    @property
    def static_url(self) -> str:
        """A `static://` discovery URL naming every server."""
        return "static://" + ",".join(self.addresses)

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> BackendProcess:
        """Spawn the child and wait until it listens; return `self`."""
        # Make sure the child imports this very meshlib (installed or not).
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "meshlib.testing._backend", json.dumps(self._config)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("backend process failed to start")
        reply = json.loads(line)
        if "error" in reply:
            self.stop()
            raise ValueError(reply["error"])
        self.addresses = list(reply["addresses"])
        return self

    def _command(self, command: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None or proc.stdout is None:
                raise RuntimeError("backend process is not running")
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        if not line:
            raise RuntimeError("backend process ended")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    def set(self, index: int | None = None, **changes: Any) -> None:
        """`set()` in the child (`index=None`: every server)."""
        self._command({"index": index, "set": changes})

    def refuse(self, index: int | None = None, refuse: bool = True) -> None:
        """Stop listening (`refuse=True`) or listen again, in the child."""
        self._command({"index": index, "refuse": refuse})

    def requests(self) -> list[list[RecordedRequest]]:
        """Every server's recorded requests, oldest first, one list per server."""
        reply = self._command({"requests": True})
        return [[_request_from_json(r) for r in server] for server in reply["requests"]]

    def reset_counts(self) -> None:
        """Forget the requests every server recorded."""
        self._command({"reset": True})

    def stop(self) -> None:
        """Ask the child to stop (closing its stdin) and reap it."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> BackendProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _request_to_json(r: RecordedRequest) -> dict[str, Any]:
    return {"backend": r.backend, "method": r.method, "path": r.path, "query": r.query,
            "headers": r.headers, "body": base64.b64encode(r.body).decode(), "time": r.time,
            "n": r.n}


def _request_from_json(d: dict[str, Any]) -> RecordedRequest:
    return RecordedRequest(backend=d["backend"], method=d["method"], path=d["path"],
                           query=d["query"], headers=d["headers"],
                           body=base64.b64decode(d["body"]), time=d["time"], n=d["n"])


def _obey(backend: Backend, cmd: dict[str, Any]) -> dict[str, Any]:
    if cmd.get("requests"):
        return {"requests": [[_request_to_json(r) for r in s.requests] for s in backend]}
    if cmd.get("reset"):
        backend.reset_counts()
        return {"ok": True}
    index = cmd.get("index")
    targets = backend.servers if index is None else [backend.servers[int(index)]]
    for server in targets:
        if "set" in cmd:
            server.set(**cmd["set"])
        elif cmd.get("refuse"):
            if server.listening:
                server.refuse()
        elif not server.listening:
            server.restore()
    return {"ok": True}


def _serve_child(config: dict[str, Any]) -> int:
    cpu = config.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(cpu)})
    try:
        backend = Backend(int(config["n"]), **config.get("backend", {}))
    except (ValueError, TypeError) as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    with backend:
        print(json.dumps({"addresses": backend.addresses}), flush=True)
        for line in sys.stdin:
            try:
                reply = _obey(backend, json.loads(line))
            except (ValueError, KeyError, IndexError, TypeError, OSError) as exc:
                reply = {"error": str(exc)}
            print(json.dumps(reply), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run backend servers until stdin closes (`python -m meshlib.testing._backend`).

    With one JSON argument (as `BackendProcess` passes), serve that
    configuration.  Otherwise parse options, print the URLs, and serve.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1 and args[0].startswith("{"):
        return _serve_child(json.loads(args[0]))
    parser = argparse.ArgumentParser(prog="python -m meshlib.testing._backend")
    parser.add_argument("-n", type=int, default=1, help="number of servers")
    parser.add_argument("--delay-ms", type=float, nargs="*", default=[0.0])
    parser.add_argument("--fail-pct", type=float, nargs="*", default=[0.0])
    ns = parser.parse_args(args)

    def fit(values: list[float]) -> float | list[float]:
        return values[0] if len(values) == 1 else values

    with Backend(ns.n, delay_ms=fit(ns.delay_ms), fail_pct=fit(ns.fail_pct)) as backend:
        for url in backend.urls:
            print(url, flush=True)
        print(backend.static_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0

