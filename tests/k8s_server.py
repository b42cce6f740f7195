"""A loopback fake of the Kubernetes API server's EndpointSlice, HTTPRoute and Service
endpoints, for the tests.

A real API server cannot be installed on the test machines, so this server
follows the documented protocol of ``discovery.k8s.io/v1`` EndpointSlices as
the Kubernetes API reference and API concepts ("Efficient detection of
changes") describe it:

* ``GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices
  ?labelSelector=kubernetes.io/service-name=SVC[&limit=N&continue=T]`` answers
  an ``EndpointSliceList`` with ``metadata.resourceVersion`` (and
  ``metadata.continue`` while more pages remain);
* the same with ``watch=1&resourceVersion=RV[&allowWatchBookmarks=true]
  [&timeoutSeconds=N]`` answers ``200`` with a chunked stream of JSON watch
  events, one per line (``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|
  "ERROR", "object": ...}``) for every change after ``RV``; ``BOOKMARK`` events
  (an object carrying only ``metadata.resourceVersion``) are sent every
  :attr:`FakeKubeAPI.bookmark_interval` seconds when asked for; the stream ends
  after ``timeoutSeconds``;
* a ``resourceVersion`` older than the retained history gets the documented
  expiry: an ``ERROR`` event carrying a ``Status`` with ``code: 410``
  (``reason: Expired``) in the stream, or a ``410 Gone`` answer when
  :attr:`FakeKubeAPI.gone_as_status` is set;
* every request must carry ``Authorization: Bearer TOKEN`` with the current
  :attr:`FakeKubeAPI.token` (when one is set), else ``401`` with a ``Status``;
* Gateway API ``HTTPRoute`` objects are served the same way (list and watch) at
  ``/apis/gateway.networking.k8s.io/v1/namespaces/NS/httproutes``, as the Gateway
  API's CRDs are served by a real API server; :attr:`FakeKubeAPI.httproutes` set
  to ``404`` answers as a server without the CRD, ``403`` as one whose RBAC
  forbids reading them (a ``Status`` with reason ``NotFound`` / ``Forbidden``);
* ``GET /api/v1/namespaces/NS/services/NAME`` answers a ``Service`` put with
  :meth:`FakeKubeAPI.put` (``404`` ``NotFound`` for another name).

It serves plain HTTP, or HTTPS with a certificate a test passes in (trustme).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
PREFIX = "/apis/discovery.k8s.io/v1/namespaces/"
ROUTES_PREFIX = "/apis/gateway.networking.k8s.io/v1/namespaces/"
SERVICES_PREFIX = "/api/v1/namespaces/"
SERVICE_LABEL = "kubernetes.io/service-name"
#: the collection path's last segment -> the kind of its objects
RESOURCES = {"endpointslices": "EndpointSlice", "httproutes": "HTTPRoute"}


def endpoint(address: str, *, ready: bool | None = True, serving: bool | None = None,
             terminating: bool | None = None, zone: str | None = None,
             for_zones: list[str] | None = None, pod: str | None = None) -> dict[str, Any]:
    """One ``Endpoint`` of a slice, in the documented v1 shape (``None`` leaves a field out)."""
    conditions = {key: value for key, value in (
        ("ready", ready), ("serving", serving), ("terminating", terminating))
        if value is not None}
    entry: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if zone is not None:
        entry["zone"] = zone
        entry["nodeName"] = f"node-{zone}"
    if for_zones is not None:
        entry["hints"] = {"forZones": [{"name": z} for z in for_zones]}
    if pod is not None:
        entry["targetRef"] = {"kind": "Pod", "namespace": "default", "name": pod}
    return entry


def endpoint_slice(name: str, service: str, endpoints: list[dict[str, Any]], *,
                   ports: list[tuple[str, int]] | None = None, address_type: str = "IPv4",
                   namespace: str = "default") -> dict[str, Any]:
    """An ``EndpointSlice`` object of ``service``, in the documented v1 shape."""
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {SERVICE_LABEL: service,
                                "endpointslice.kubernetes.io/managed-by":
                                    "endpointslice-controller.k8s.io"}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in (ports or [])],
    }


def http_route(name: str, service: str, rules: list[dict[str, Any]], *,
               namespace: str = "default", annotations: dict[str, str] | None = None,
               created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    """A Gateway API ``HTTPRoute`` attached to ``service`` (a GAMMA parentRef)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace,
                                "creationTimestamp": created}
    if annotations:
        metadata["annotations"] = annotations
    return {"kind": "HTTPRoute", "apiVersion": "gateway.networking.k8s.io/v1",
            "metadata": metadata,
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": service}],
                     "rules": rules}}


def service_object(name: str, ports: list[tuple[str, int, int]], *,
                   namespace: str = "default") -> dict[str, Any]:
    """A ``Service`` with ``(name, port, targetPort)`` ports."""
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP"}
                               for n, p, t in ports]}}


class FakeKubeAPI:
    """The fake API server (see the module docstring); stop it with :meth:`stop`.

    Tests change the world with :meth:`put` (create or replace a slice),
    :meth:`delete`, :meth:`expire` (forget the history so older resource
    versions get 410), :meth:`send_error` (an ``ERROR`` event to every open
    watch) and :meth:`drop_watches` (cut every open stream). ``requests`` records
    ``(path, query, authorization)`` of every request. Objects are EndpointSlices,
    HTTPRoutes or Services, told apart by their ``kind``.
    """

    def __init__(self, *, token: str | None = None, host: str = LOOPBACK,
                 certificate: Any = None) -> None:
        self.token = token
        self.bookmark_interval = 0.2
        self.gone_as_status = False
        self.fail_next = 0
        self.garbage_next_watch: str | None = None
        self.end_watches_at_once = False  # a misbehaving proxy: every watch ends at once
        #: how HTTPRoute requests are answered: 200 (served), 404 (no CRD), 403 (forbidden)
        self.httproutes = 200
        self.version = 100
        self.oldest = 100  # the oldest resourceVersion a watch may still start from
        #: (kind, namespace, name) -> object
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        #: (version, kind, namespace, event) in version order
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        self.generation = 0  # bumped by drop_watches
        self.pending_errors: list[dict[str, Any]] = []
        self.open_watches = 0
        self.closed = False
        self.changed = threading.Condition()
        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, 0), self._handler())
        self.server.daemon_threads = True
        self.scheme = "http"
        if certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            certificate.configure_cert(context)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.host = host
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """The base URL, for ``MESHLIB_K8S_API``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    # -- the world -----------------------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> None:
        """Create (``ADDED``) or replace (``MODIFIED``) an object; a new resourceVersion."""
        obj = json.loads(json.dumps(obj))
        key = (obj.get("kind", "EndpointSlice"), obj["metadata"].get("namespace", "default"),
               obj["metadata"]["name"])
        with self.changed:
            kind = "MODIFIED" if key in self.objects else "ADDED"
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.objects[key] = obj
            self.history.append((self.version, key[0], key[1], {"type": kind, "object": obj}))
            self.changed.notify_all()

    def put_raw(self, namespace: str, name: str, obj: Any, kind: str = "EndpointSlice",
                ) -> None:
        """Send ``obj`` as it is (garbage) in a ``MODIFIED`` event and in lists."""
        with self.changed:
            self.version += 1
            self.objects[(kind, namespace, name)] = obj
            self.history.append((self.version, kind, namespace,
                                 {"type": "MODIFIED", "object": obj}))
            self.changed.notify_all()

    def delete(self, name: str, namespace: str = "default", kind: str = "EndpointSlice",
               ) -> None:
        """Delete an object (``DELETED`` carries its last state)."""
        with self.changed:
            obj = self.objects.pop((kind, namespace, name))
            self.version += 1
            gone = json.loads(json.dumps(obj))
            gone["metadata"]["resourceVersion"] = str(self.version)
            self.history.append((self.version, kind, namespace,
                                 {"type": "DELETED", "object": gone}))
            self.changed.notify_all()

    def expire(self) -> None:
        """Compact the history: every resourceVersion before now is too old (410)."""
        with self.changed:
            self.oldest = self.version
            self.history.clear()
            self.changed.notify_all()

    def send_error(self, code: int = 410, reason: str = "Expired") -> None:
        """Send an ``ERROR`` event with a ``Status`` to every open watch, which then ends."""
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": f"too old resource version ({reason})", "reason": reason,
                  "code": code}
        with self.changed:
            self.pending_errors.append(status)
            self.changed.notify_all()

    def drop_watches(self) -> None:
        """Cut every open watch stream (as a restarting API server would)."""
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def watch_count(self, resource: str = "endpointslices") -> int:
        """How many watch requests of ``resource`` were made so far."""
        return sum(1 for p, q, _ in self.requests
                   if q.get("watch") in ("1", "true") and p.endswith(f"/{resource}"))

    def list_count(self, resource: str = "endpointslices") -> int:
        """How many list requests of ``resource`` were made so far."""
        return sum(1 for p, q, _ in self.requests
                   if q.get("watch") not in ("1", "true") and p.endswith(f"/{resource}"))

    # -- protocol ------------------------------------------------------------------------

    def _selected(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [obj for (k, ns, _), obj in sorted(self.objects.items())
                if k == kind and ns == namespace and _matches(obj, selector)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query,
                                                      keep_blank_values=True).items()}
                authorization = self.headers.get("Authorization")
                api.requests.append((parts.path, query, authorization))
                if api.token is not None and authorization != f"Bearer {api.token}":
                    self._status(401, "Unauthorized", "Unauthorized")
                    return
                if api.fail_next > 0:
                    api.fail_next -= 1
                    self._status(500, "InternalError", "etcdserver: leader changed")
                    return
                if parts.path.startswith(SERVICES_PREFIX):
                    self._service(parts.path.removeprefix(SERVICES_PREFIX))
                    return
                prefix = ROUTES_PREFIX if parts.path.startswith(ROUTES_PREFIX) else PREFIX
                namespace, _, resource = parts.path.removeprefix(prefix).partition("/")
                if not parts.path.startswith(prefix) or resource not in RESOURCES or (
                        prefix == ROUTES_PREFIX) != (resource == "httproutes"):
                    self._status(404, "NotFound", "the server could not find the resource")
                    return
                if resource == "httproutes" and api.httproutes != 200:
                    if api.httproutes == 403:
                        self._status(403, "Forbidden", 'httproutes.gateway.networking.k8s.io '
                                     'is forbidden: User "system:serviceaccount:default:'
                                     'default" cannot list resource "httproutes"')
                    else:
                        self._status(404, "NotFound", "the server could not find the "
                                     "requested resource")
                    return
                kind = RESOURCES[resource]
                selector = query.get("labelSelector", "")
                if query.get("watch") in ("1", "true"):
                    self._watch(kind, namespace, selector, query)
                else:
                    self._list(kind, namespace, selector, query)

            def _service(self, rest: str) -> None:
                namespace, _, name = rest.partition("/services/")
                with api.changed:
                    obj = api.objects.get(("Service", namespace, name))
                if obj is None:
                    self._status(404, "NotFound", f'services "{name}" not found')
                else:
                    self._json(200, obj)

            def _list(self, kind: str, namespace: str, selector: str,
                      query: dict[str, str]) -> None:
                with api.changed:
                    items = api._selected(kind, namespace, selector)
                    version = api.version
                start = int(query.get("continue") or 0)
                limit = int(query.get("limit") or 0) or len(items) or 1
                page = items[start:start + limit]
                metadata: dict[str, Any] = {"resourceVersion": str(version)}
                if start + limit < len(items):
                    metadata["continue"] = str(start + limit)
                self._json(200, {"kind": f"{kind}List", "apiVersion": "discovery.k8s.io/v1"
                                 if kind == "EndpointSlice" else "gateway.networking.k8s.io/v1",
                                 "metadata": metadata, "items": page})

            def _watch(self, kind: str, namespace: str, selector: str,
                       query: dict[str, str]) -> None:
                try:
                    since = int(query.get("resourceVersion") or 0)
                except ValueError:
                    self._status(400, "BadRequest", "bad resourceVersion")
                    return
                if since < api.oldest and api.gone_as_status:
                    self._status(410, "Expired", f"too old resource version: {since}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                seconds = 0.0 if api.end_watches_at_once else float(
                    query.get("timeoutSeconds") or 1800)
                bookmarks = query.get("allowWatchBookmarks") == "true"
                deadline = time.monotonic() + seconds
                next_bookmark = time.monotonic() + api.bookmark_interval
                with api.changed:
                    api.open_watches += 1
                    generation = api.generation
                    errors_seen = len(api.pending_errors)
                try:
                    if since < api.oldest:
                        self._event({"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": "Expired", "code": 410,
                            "message": f"too old resource version: {since} ({api.oldest})"}})
                        return
                    if api.garbage_next_watch is not None:
                        garbage, api.garbage_next_watch = api.garbage_next_watch, None
                        self._chunk(garbage.encode() + b"\n")
                        return
                    while True:
                        with api.changed:
                            events = [(v, e) for v, k, ns, e in api.history
                                      if v > since and k == kind and ns == namespace
                                      and _matches(e["object"], selector)]
                            errors = api.pending_errors[errors_seen:]
                            errors_seen = len(api.pending_errors)
                            cut = api.generation != generation or api.closed
                            version = api.version  # read with the events: a bookmark at
                            # this version must not skip an event put after them
                            if not events and not errors and not cut:
                                api.changed.wait(min(0.05, max(deadline - time.monotonic(),
                                                               0.0)))
                        if cut:  # no terminating chunk: the stream breaks
                            self.close_connection = True
                            with contextlib.suppress(OSError):
                                self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        for v, event in events:
                            self._event(event)
                            since = v
                        if errors:
                            self._event({"type": "ERROR", "object": errors[0]})
                            break
                        now = time.monotonic()
                        if now >= deadline:
                            break
                        if bookmarks and now >= next_bookmark:
                            self._event({"type": "BOOKMARK", "object": {
                                "kind": kind, "apiVersion": "discovery.k8s.io/v1",
                                "metadata": {"resourceVersion": str(version)}}})
                            since = max(since, version)
                            next_bookmark = now + api.bookmark_interval
                    self._chunk(b"")  # the last chunk: the server ended the watch cleanly
                except OSError:
                    return
                finally:
                    with api.changed:
                        api.open_watches -= 1

            def _event(self, event: dict[str, Any]) -> None:
                self._chunk(json.dumps(event).encode() + b"\n")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _status(self, code: int, reason: str, message: str) -> None:
                self._json(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Failure", "message": message, "reason": reason,
                                  "code": code})

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

            def handle_one_request(self) -> None:
                with contextlib.suppress(OSError, ssl.SSLError):
                    super().handle_one_request()

        return Handler

    def stop(self) -> None:
        """Stop serving; every open watch ends."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> FakeKubeAPI:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _matches(obj: Any, selector: str) -> bool:
    """Whether ``obj`` carries every ``key=value`` label of ``selector``."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if not isinstance(labels, dict):
        return not selector
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True
