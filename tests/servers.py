"""Real servers on loopback for the discovery tests: dnsmasq, BIND (named), etcd,
and a fake Consul that serves Consul's documented health-API JSON.

Every server picks free loopback ports, runs from its own temporary directory,
and is stopped (``terminate(); wait()``) and cleaned up by ``stop()`` or on
leaving its ``with`` block. :func:`require_binary` skips a test when a binary is
missing, or fails it when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.update
import httpx
import pytest

LOOPBACK = "127.0.0.1"


def require_binary(name: str, *candidates: str) -> str:
    """The path of ``name``; skip the test if missing, or fail it when ``CI=true``."""
    for path in (*candidates, shutil.which(name)):
        if path and os.access(path, os.X_OK):
            return path
    message = f"{name} is not installed (run scripts/install-servers.sh)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port(*, udp: bool = False) -> int:
    """A loopback port free for TCP (and for UDP too when ``udp``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
                try:
                    datagram.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port")


def wait_until(check: Any, *, timeout: float, what: str) -> None:
    """Call ``check()`` until it returns true; raise ``RuntimeError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not become ready within {timeout} s")


class _Process:
    """A server process with a temporary directory, stopped on exit."""

    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"meshlib-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        """Start ``argv`` with its output going to the log file."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.dir,
            )

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def kill_process(self) -> None:
        """Stop the process (``terminate(); wait()``, ``kill()`` if it lingers)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self) -> str:
        """What the server printed, for error messages."""
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the process and remove the temporary directory."""
        self.kill_process()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> _Process:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _dns_answers(port: int, name: str, rdtype: str) -> bool:
    """Whether a DNS server on ``port`` answers a query for ``name``."""
    try:
        dns.query.udp(dns.message.make_query(name, rdtype), LOOPBACK, port=port, timeout=0.2)
    except (dns.exception.DNSException, OSError):
        return False
    return True


class Dnsmasq(_Process):
    """dnsmasq serving a static zone given as dnsmasq options (``srv-host=...``).

    ``records`` are option lines without the leading ``--``, for example
    ``"srv-host=_http._tcp.svc.mesh.test,node1.mesh.test,18081,10,60"`` and
    ``"host-record=node1.mesh.test,127.0.0.1"``. Restart with new records to change them.
    """

    name = "dnsmasq"

    def __init__(self, records: Sequence[str], *, ttl: int = 5, domain: str = "mesh.test") -> None:
        self.binary = require_binary("dnsmasq", "/usr/sbin/dnsmasq")
        super().__init__()
        self.port = free_port(udp=True)
        self.domain = domain
        self.start(records, ttl=ttl)

    def start(self, records: Sequence[str], *, ttl: int) -> None:
        """(Re)start dnsmasq with ``records`` and ``local-ttl=ttl`` on the same port."""
        self.kill_process()
        lines = [
            "keep-in-foreground",
            "pid-file=",
            "user=root",
            f"port={self.port}",
            f"listen-address={LOOPBACK}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            f"local-ttl={ttl}",
            f"local=/{self.domain}/",
            *records,
        ]
        conf = self.dir / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.spawn([self.binary, f"--conf-file={conf}"])
        try:
            wait_until(
                lambda: _dns_answers(self.port, f"probe.{self.domain}", "A"),
                timeout=10,
                what="dnsmasq",
            )
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"dnsmasq did not start: {self.log_text()}") from None

    @property
    def nameserver(self) -> str:
        """``HOST:PORT`` for ``?nameserver=``."""
        return f"{LOOPBACK}:{self.port}"


_NAMED_CONF = """\
options {{ directory "{dir}"; pid-file "{dir}/named.pid"; session-keyfile "{dir}/session.key";
  managed-keys-directory "{dir}"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
  recursion no; allow-query {{ 127.0.0.1; }}; allow-transfer {{ none; }};
  dnssec-validation no; notify no; }};
controls {{ }};
zone "{zone}" {{ type primary; file "{zone}.db"; allow-update {{ 127.0.0.1; }}; }};
"""

_ZONE = """\
$TTL {ttl}
@ IN SOA ns.{zone}. admin.{zone}. ( 1 60 60 3600 1 )
  IN NS ns.{zone}.
ns IN A 127.0.0.1
"""


class Bind(_Process):
    """BIND ``named`` serving a primary zone that accepts dynamic updates from loopback."""

    name = "named"

    def __init__(
        self, records: Sequence[str] = (), *, zone: str = "mesh.test", ttl: int = 5
    ) -> None:
        self.binary = require_binary("named", "/usr/sbin/named")
        super().__init__()
        self.zone = zone
        self.port = free_port(udp=True)
        (self.dir / "named.conf").write_text(
            _NAMED_CONF.format(dir=self.dir, port=self.port, zone=zone)
        )
        zone_text = _ZONE.format(ttl=ttl, zone=zone) + "".join(f"{r}\n" for r in records)
        (self.dir / f"{zone}.db").write_text(zone_text)
        self.spawn([self.binary, "-g", "-c", str(self.dir / "named.conf")])
        try:
            wait_until(lambda: _dns_answers(self.port, f"ns.{zone}", "A"), timeout=15, what="named")
        except RuntimeError:
            log = self.log_text()
            self.stop()
            raise RuntimeError(f"named did not start: {log}") from None

    @property
    def nameserver(self) -> str:
        """``HOST:PORT`` for ``?nameserver=``."""
        return f"{LOOPBACK}:{self.port}"

    def update(
        self,
        *,
        add: Sequence[tuple[str, int, str, str]] = (),
        delete: Sequence[tuple[str, str, str | None]] = (),
    ) -> None:
        """Apply a dynamic update: ``add`` (name, ttl, type, rdata), ``delete`` (name, type,
        rdata or ``None`` for the whole rrset); names are relative to the zone."""
        message = dns.update.UpdateMessage(self.zone)
        for name, rdtype, rdata in delete:
            if rdata is None:
                message.delete(name, rdtype)
            else:
                message.delete(name, rdtype, rdata)
        for name, ttl, rdtype, rdata in add:
            message.add(name, ttl, rdtype, rdata)
        response = dns.query.tcp(message, LOOPBACK, port=self.port, timeout=5)
        if response.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"dynamic update refused: {dns.rcode.to_text(response.rcode())}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def prefix_end(prefix: str) -> str:
    """The etcd ``range_end`` for a key prefix: its last byte plus one."""
    raw = prefix.encode()
    return raw[:-1].decode() + chr(raw[-1] + 1)


class Etcd(_Process):
    """A single-member etcd (v3 JSON gateway on plain HTTP), restartable on the same ports
    and data directory, plus a small sync client for puts, deletes and leases."""

    name = "etcd"

    def __init__(self) -> None:
        self.binary = require_binary("etcd", "/usr/bin/etcd")
        super().__init__()
        self.port = free_port()
        self.peer_port = free_port()
        self.client = httpx.Client(base_url=self.url, timeout=5)
        self.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, for ``etcd://`` URLs."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Start etcd (again) and wait until ``/health`` says so."""
        client_url, peer_url = self.url, f"http://{LOOPBACK}:{self.peer_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        self.spawn(
            [
                self.binary,
                "--name",
                "mesh-test",
                "--data-dir",
                str(self.dir / "data"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"mesh-test={peer_url}",
                "--initial-cluster-state",
                "new",
                "--log-level",
                "warn",
                "--logger",
                "zap",
                "--unsafe-no-fsync",
                "--heartbeat-interval",
                "10",
                "--election-timeout",
                "100",
            ],
            env=env,
        )
        try:
            wait_until(self._healthy, timeout=20, what="etcd")
        except RuntimeError:
            log = self.log_text()
            self.stop()
            raise RuntimeError(f"etcd did not start: {log}") from None

    def _healthy(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"etcd exited: {self.log_text()}")
        try:
            return bool(self.client.get("/health").json().get("health") == "true")
        except (httpx.HTTPError, ValueError):
            return False

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the v3 gateway at ``path``; the decoded answer."""
        response = self.client.post(path, json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def put(self, key: str, value: str | dict[str, Any], lease: str | None = None) -> None:
        """Put ``value`` (a dict is written as JSON) at ``key``, on ``lease`` if given."""
        text = value if isinstance(value, str) else json.dumps(value)
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(text)}
        if lease is not None:
            body["lease"] = lease
        self.call("/v3/kv/put", body)

    def delete(self, key: str) -> None:
        """Delete ``key``."""
        self.call("/v3/kv/deleterange", {"key": _b64(key)})

    def grant(self, ttl: int) -> str:
        """A new lease of ``ttl`` seconds; its ID."""
        return str(self.call("/v3/lease/grant", {"TTL": ttl})["ID"])

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix``."""
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "keys_only": True}
        kvs = self.call("/v3/kv/range", body).get("kvs", [])
        return [base64.b64decode(kv["key"]).decode() for kv in kvs]

    def stop(self) -> None:
        """Stop etcd, close the client and remove the data directory."""
        self.client.close()
        super().stop()


class FakeConsul:
    """A loopback HTTP server answering ``GET /v1/health/service/NAME`` like Consul.

    It serves Consul's documented JSON shape for the instances set with
    :meth:`set_instances`, filters on ``passing=true``, returns ``X-Consul-Index``,
    and honours blocking queries: a request with ``index`` equal to the current
    index waits until the index changes or ``wait`` (e.g. ``30s``) passes.
    ``force_index`` lets a test make the index go backwards; ``fail_next`` makes
    the next requests answer 500.
    """

    def __init__(self) -> None:
        self.services: dict[str, list[dict[str, Any]]] = {}
        self.index = 1
        self.fail_next = 0
        self.requests: list[dict[str, str]] = []
        self.closed = False
        self.changed = threading.Condition()
        self.server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, for ``consul://`` URLs."""
        return f"{LOOPBACK}:{self.port}"

    @staticmethod
    def entry(
        node_address: str,
        port: int,
        *,
        service_address: str = "",
        passing: bool = True,
        weight: int = 1,
        zone: str | None = None,
        node: str = "node1",
        service: str = "users",
    ) -> dict[str, Any]:
        """One health-API entry in Consul's documented shape."""
        meta = {"zone": zone} if zone is not None else {}
        status = "passing" if passing else "critical"
        return {
            "Node": {
                "ID": "",
                "Node": node,
                "Address": node_address,
                "Datacenter": "dc1",
                "TaggedAddresses": {"lan": node_address, "wan": node_address},
                "Meta": {},
            },
            "Service": {
                "ID": f"{service}-{node}-{port}",
                "Service": service,
                "Tags": [],
                "Address": service_address,
                "Meta": meta,
                "Port": port,
                "Weights": {"Passing": weight, "Warning": 1},
                "EnableTagOverride": False,
            },
            "Checks": [
                {
                    "Node": node,
                    "CheckID": "serfHealth",
                    "Name": "Serf Health Status",
                    "Status": "passing",
                    "ServiceID": "",
                    "ServiceName": "",
                },
                {
                    "Node": node,
                    "CheckID": f"service:{service}",
                    "Name": "Service check",
                    "Status": status,
                    "ServiceID": f"{service}-{node}-{port}",
                    "ServiceName": service,
                },
            ],
        }

    def set_instances(
        self, service: str, entries: list[dict[str, Any]], *, force_index: int | None = None
    ) -> None:
        """Replace ``service``'s instances and bump the index (or set it to ``force_index``)."""
        with self.changed:
            self.services[service] = entries
            self.index = force_index if force_index is not None else self.index + 1
            self.changed.notify_all()

    def _answer(
        self, service: str, query: dict[str, list[str]]
    ) -> tuple[int, list[dict[str, Any]]]:
        """Wait as a blocking query asks, then the index and the (filtered) entries."""
        wanted = int(query.get("index", ["0"])[0] or 0)
        wait = _consul_duration(query.get("wait", ["300s"])[0])
        deadline = time.monotonic() + wait
        with self.changed:
            while wanted and self.index == wanted and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            entries = list(self.services.get(service, []))
            index = self.index
        if "passing" in query and query["passing"][0] in ("true", "1", ""):
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        return index, entries

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        consul = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                consul.requests.append({k: v[0] for k, v in query.items()})
                if consul.fail_next > 0:
                    consul.fail_next -= 1
                    self._send(500, b"rpc error: No cluster leader", {})
                    return
                prefix = "/v1/health/service/"
                if not parts.path.startswith(prefix):
                    self._send(404, b"not found", {})
                    return
                index, entries = consul._answer(parts.path[len(prefix) :], query)
                body = json.dumps(entries).encode()
                self._send(
                    200, body, {"X-Consul-Index": str(index), "Content-Type": "application/json"}
                )

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def stop(self) -> None:
        """Stop serving and wake any waiting blocking query."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> FakeConsul:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _consul_duration(text: str) -> float:
    """A Consul duration such as ``30s``, ``500ms`` or ``5m`` in seconds (max 600 s)."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return min(float(text[: -len(suffix)]) * units[suffix], 600.0)
    return min(float(text or 300), 600.0)


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    """A temporary directory, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="meshlib-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def next_update(
    updates: AsyncIterator[Any], predicate: Callable[[Any], bool] = bool, *, timeout: float = 5.0
) -> Any:
    """The first update from ``updates`` that satisfies ``predicate``, within ``timeout``."""

    async def scan() -> Any:
        async for update in updates:
            if predicate(update):
                return update
        raise AssertionError("updates() ended")

    return await asyncio.wait_for(scan(), timeout)


def open_sockets() -> Iterator[tuple[int, Any, Any]]:
    """``(descriptor, local address, peer address)`` of each socket this process holds
    (``None`` for an address a socket has not got)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            copy = os.dup(int(name))
        except OSError:  # the listing's own descriptor, closed since
            continue
        try:
            probe = socket.socket(fileno=copy)
        except OSError:  # not a socket
            os.close(copy)
            continue
        with probe:
            addresses = []
            for read in (probe.getsockname, probe.getpeername):
                try:
                    addresses.append(read())
                except OSError:
                    addresses.append(None)
        yield int(name), addresses[0], addresses[1]
