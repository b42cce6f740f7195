"""TLS: ``https://SERVICE/`` connects to an endpoint's IP but verifies the service name.

A private CA (trustme) issues server certificates; a small TLS server
(``http.server`` wrapped in ``ssl``, in a thread) listens on 127.0.0.1 and
records the SNI name each handshake asked for. Verification is never off:
a certificate for another name, or an unknown CA, fails with
``httpx.ConnectError``.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trustme

import meshlib
from meshlib import Policy, Service

NO_RETRY = Policy(retries=0, timeout=5.0)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server: _TLSHTTPServer = self.server  # type: ignore[assignment]
        body = json.dumps({"host": self.headers.get("Host"), "path": self.path,
                           "sni": server.snis[-1] if server.snis else None}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TLSHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    snis: list[str | None]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes are the point of some tests


class TLSServer:
    """An HTTPS server on 127.0.0.1 presenting ``cert``; ``snis`` lists the names asked for."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        self.httpd = _TLSHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.snis = []
        context.sni_callback = self._on_sni
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True,
                                                do_handshake_on_connect=False)
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()

    def _on_sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.httpd.snis.append(name)

    @property
    def snis(self) -> list[str | None]:
        return self.httpd.snis

    @property
    def static_url(self) -> str:
        return f"static://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client SSL context that trusts the test CA (and nothing else)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[Callable[..., TLSServer]]:
    started: list[TLSServer] = []

    def start(*names: str) -> TLSServer:
        server = TLSServer(ca.issue_cert(*names))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def _get(kind: str, url: str, services: dict[str, Any], **kwargs: Any) -> httpx.Response:
    """GET ``url`` with a sync or async mesh client built from ``services`` and ``kwargs``."""
    if kind == "sync":
        with meshlib.MeshClient(services=services, policy=NO_RETRY, **kwargs) as client:
            response = client.get(url)
            response.read()
            return response
    pool = "aiohttp" if kind == "async-aiohttp" else None
    async with meshlib.AsyncMeshClient(services=services, policy=NO_RETRY, pool=pool,
                                       **kwargs) as client:
        response = await client.get(url)
        await response.aread()
        return response


KINDS = pytest.mark.parametrize("kind", ["sync", "async", "async-aiohttp"])


@KINDS
async def test_certificate_for_the_service_name_verifies(
        kind: str, tls_server: Callable[..., TLSServer], ca_context: ssl.SSLContext) -> None:
    """https://users/ reaches 127.0.0.1, sends SNI "users" and verifies the cert for "users"."""
    server = tls_server("users.mesh.test", "users")
    services = {"users": Service(server.static_url)}
    response = await _get(kind, "https://users/v1/me", services, verify=ca_context)
    assert response.status_code == 200
    seen = response.json()
    assert seen["host"] == "users"
    assert seen["sni"] == "users"
    assert response.request.url == httpx.URL("https://users/v1/me")
    assert response.extensions["meshlib"]["endpoint"] == f"127.0.0.1:{server.port}"


@KINDS
async def test_dotted_service_name_verifies(
        kind: str, tls_server: Callable[..., TLSServer], ca_context: ssl.SSLContext) -> None:
    """A service named like a DNS name (users.mesh.test) is verified against that name."""
    server = tls_server("users.mesh.test", "users")
    services = {"users.mesh.test": server.static_url}
    response = await _get(kind, "https://users.mesh.test/", services, verify=ca_context)
    assert response.status_code == 200
    assert response.json()["sni"] == "users.mesh.test"


@KINDS
async def test_certificate_for_another_name_fails(
        kind: str, tls_server: Callable[..., TLSServer], ca_context: ssl.SSLContext) -> None:
    """A certificate that does not name the service is rejected: ConnectError, verify failed."""
    server = tls_server("other")
    services = {"users": Service(server.static_url)}
    with pytest.raises(httpx.ConnectError) as info:
        await _get(kind, "https://users/", services, verify=ca_context)
    message = str(info.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "mismatch" in message.lower()


@KINDS
async def test_tls_server_name_overrides_the_checked_name(
        kind: str, tls_server: Callable[..., TLSServer], ca_context: ssl.SSLContext) -> None:
    """Service(tls_server_name="other") sends SNI "other" and accepts a cert for "other"."""
    server = tls_server("other")
    services = {"users": Service(server.static_url, tls_server_name="other")}
    response = await _get(kind, "https://users/", services, verify=ca_context)
    assert response.status_code == 200
    assert response.json()["sni"] == "other"
    assert response.json()["host"] == "users"


@KINDS
async def test_verification_is_on_by_default(
        kind: str, tls_server: Callable[..., TLSServer]) -> None:
    """Without verify=, the system trust store is used: a private CA is not trusted."""
    server = tls_server("users")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await _get(kind, "https://users/", {"users": server.static_url})


@KINDS
async def test_the_ip_is_never_what_is_verified(
        kind: str, tls_server: Callable[..., TLSServer], ca_context: ssl.SSLContext) -> None:
    """A certificate for the endpoint's IP (and not the service name) is rejected."""
    server = tls_server("127.0.0.1")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await _get(kind, "https://users/", {"users": server.static_url}, verify=ca_context)
