"""``meshlib status URL`` against live servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

import meshlib
from meshlib._tools.status import format_snapshot
from meshlib.cli import main
from meshlib.testing._backend import Backend
from meshlib.wsgi import MeshMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

BackendFactory = Callable[..., Backend]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wsgi(app: WSGIApplication) -> Iterator[str]:
    """Run ``app`` under wsgiref on 127.0.0.1 in a thread; yield its base URL; stop it."""
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10.0)
        server.server_close()
        assert not thread.is_alive(), "wsgiref server did not stop"


def _plain_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/json":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"hello": "world"}']
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"not json"]


@pytest.fixture
def snapshot_url(backends: BackendFactory) -> Iterator[tuple[str, list[str]]]:
    """A live WSGI server exposing the snapshot of a client that has sent 3 requests."""
    backend = backends(2, status=[200, 503])
    addresses = [s.address for s in backend.servers]
    with meshlib.MeshClient(services={"users": f"static://{','.join(addresses)}"},
                            policy=meshlib.Policy(retries=0, balancer="round-robin")) as client:
        for _ in range(3):
            client.get("http://users/x")
        app = MeshMiddleware(_plain_app, snapshot_path="/_mesh", clients=[client])
        with serve_wsgi(app) as url:
            yield f"{url}/_mesh", addresses


def test_status_prints_a_table(snapshot_url: tuple[str, list[str]],
                               capsys: pytest.CaptureFixture[str]) -> None:
    url, addresses = snapshot_url
    assert main(["status", url]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("service users")
    assert "retry budget balance" in out
    header = next(line for line in lines if "endpoint" in line and "score_ms" in line)
    assert header.split() == ["endpoint", "req_60s", "success", "rps", "p50_ms", "p95_ms",
                              "p99_ms", "score_ms", "inflight", "breaker", "requests",
                              "failures"]
    rows = {address: next(line for line in lines if line.startswith(f"  {address} ")).split()
            for address in addresses}
    assert all(row[9] == "closed" for row in rows.values())
    requests = {address: (int(row[10]), int(row[11])) for address, row in rows.items()}
    assert sum(r for r, _ in requests.values()) == 3
    assert requests[addresses[0]][1] == 0 and requests[addresses[1]][1] >= 1
    healthy, failing = rows[addresses[0]], rows[addresses[1]]
    # the last 60 s: the healthy endpoint answered every request, the other none well
    assert healthy[2] == "100.00%" and failing[2] == "0.00%"
    assert int(healthy[1]) + int(failing[1]) == 3
    assert float(healthy[4]) > 0 and failing[4] == "-"  # no successful answer, no latency
    # the endpoint answering 503 fast: a ~1000 ms penalty score
    assert float(failing[7]) >= 900 and float(healthy[7]) < 900
    assert "a penalty, not a latency" in out
    # the route table: the service's requests and its one implicit route
    route_header = next(line for line in lines if line.split()[:1] == ["route"])
    assert route_header.split() == ["route", "req_60s", "success", "rps", "p50_ms", "p95_ms",
                                    "p99_ms", "breaker"]
    everything = next(line for line in lines if line.startswith("  (all) ")).split()
    get_x = next(line for line in lines if line.startswith("  GET /x ")).split()
    assert everything[1] == "3" and get_x[2] == "3" and get_x[-1] == "closed"


def test_status_watch_refreshes(snapshot_url: tuple[str, list[str]],
                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--watch` fetches again each round (three rounds here, then it returns)."""
    from meshlib._tools.status import run_status

    url, _ = snapshot_url
    assert run_status(url, watch=0.05, rounds=3) == 0
    out = capsys.readouterr().out
    assert out.count("service users") == 3 and out.count("Ctrl-C stops") == 3


def test_status_watch_interval_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["status", "http://127.0.0.1:1/_mesh", "--watch", "0"])
    assert "--watch needs 0.1 to 3600 seconds" in capsys.readouterr().err


def test_status_json(snapshot_url: tuple[str, list[str]],
                     capsys: pytest.CaptureFixture[str]) -> None:
    url, addresses = snapshot_url
    assert main(["status", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(e["endpoint"] for e in data["services"]["users"]["endpoints"]) == sorted(
        addresses)


def test_status_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["status", f"http://127.0.0.1:{port}/_mesh"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot reach http://127.0.0.1:{port}/_mesh" in captured.err


@pytest.mark.parametrize(("path", "message"), [
    ("/text", "did not answer JSON"),
    ("/json", 'without a "services" object'),
])
def test_status_not_a_snapshot(path: str, message: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    with serve_wsgi(_plain_app) as url:
        assert main(["status", f"{url}{path}"]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_status_http_error(capsys: pytest.CaptureFixture[str]) -> None:
    app = MeshMiddleware(_plain_app, snapshot_path="/_mesh", clients=[])
    with serve_wsgi(app) as url:
        # no clients: the empty snapshot is printed, but the exit status says something is off
        assert main(["status", f"{url}/_mesh", "--json"]) == 1
        captured = capsys.readouterr()
        assert json.loads(captured.out) == {"services": {}}
        assert "lists no services" in captured.err
        with serve_wsgi(lambda e, s: (s("404 Not Found", []), [b""])[1]) as url404:
            assert main(["status", f"{url404}/_mesh"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_status_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "ftp://127.0.0.1/_mesh"]) == 1
    assert "meshlib status:" in capsys.readouterr().err


def test_format_snapshot_tolerates_odd_shapes() -> None:
    assert format_snapshot({"services": {}}) == "(no services)"
    text = format_snapshot({"services": {"x": {"endpoints": []}, "y": {
        "ready": False, "endpoints": [{"endpoint": "[::1]:80", "ewma_ms": None}]}}})
    assert "service x\n  (no endpoints)" in text
    assert "discovery not ready" in text and "[::1]:80" in text


def test_status_into_a_closed_pipe_exits_quietly(snapshot_url: tuple[str, list[str]]) -> None:
    """meshlib status URL | head: no BrokenPipeError traceback, status 141 as for SIGPIPE."""
    url, _ = snapshot_url
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the table is written
    try:
        done = subprocess.run([sys.executable, "-m", "meshlib", "status", url],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
