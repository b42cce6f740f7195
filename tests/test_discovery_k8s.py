"""``k8s://`` discovery against a loopback fake Kubernetes API server.

A real API server cannot be installed on these machines, so
:class:`k8s_server.FakeKubeAPI` speaks the documented EndpointSlice protocol
(list, chunked watch stream of JSON events, bookmarks, 410 expiry, bearer
tokens); the end-to-end tests run a real MeshClient against real loopback
backends while the slices change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

import meshlib
from conftest import BackendFactory
from k8s_server import FakeKubeAPI, endpoint, endpoint_slice
from meshlib._config import read_env
from meshlib._discovery import DiscoveryFailure, DiscoveryOptions, _k8s, discovery_from_url
from meshlib._discovery._k8s import K8sDiscovery, SliceError, parse_slice, select_endpoints
from meshlib._endpoint import Endpoint
from meshlib._errors import ConfigError
from meshlib.cli import main
from servers import next_update


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Short backoffs; no service account of this machine is ever read."""
    monkeypatch.setattr(K8sDiscovery, "BACKOFF_INITIAL", 0.05)
    monkeypatch.setattr(K8sDiscovery, "BACKOFF_MAX", 0.2)
    monkeypatch.setattr(_k8s, "SERVICE_ACCOUNT_DIR", str(tmp_path / "serviceaccount"))
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    """A fake API server on a free loopback port, plain HTTP, no token required."""
    with FakeKubeAPI() as server:
        yield server


def options(api: FakeKubeAPI, **extra: Any) -> DiscoveryOptions:
    """Discovery options pointing at ``api``."""
    return DiscoveryOptions(k8s_api=api.url, **extra)


def is_set(update: Any) -> bool:
    """Whether ``update`` is an endpoint set (not a failure)."""
    return isinstance(update, tuple)


def addresses(update: Any) -> set[str]:
    """The addresses of an endpoint set."""
    return {e.address for e in update}


class Pump:
    """Reads ``updates`` in a background task (so the watch runs between checks)."""

    def __init__(self, updates: AsyncIterator[Any]) -> None:
        self.updates = updates
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for update in self.updates:
            self.queue.put_nowait(update)

    async def next(self, predicate: Any = is_set, timeout: float = 5.0) -> Any:
        """The next update that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            update = await asyncio.wait_for(self.queue.get(), deadline - time.monotonic())
            if predicate(update):
                return update

    async def stop(self) -> None:
        """Cancel the reading task."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def watch(api: FakeKubeAPI) -> AsyncIterator[tuple[K8sDiscovery, AsyncIterator[Any]]]:
    """A K8sDiscovery of ``users.default:http`` and its running ``updates()``."""
    discovery = K8sDiscovery("k8s://users.default:http", options(api))
    updates = discovery.updates()
    yield discovery, updates
    await updates.aclose()


# -- URLs and configuration ------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "k8s://",
    "k8s://Users.shop",
    "k8s://users.shop.svc.cluster.local",
    "k8s://users.shop:",
    "k8s://users.shop:0",
    "k8s://users.shop:70000",
    "k8s://users.shop:http_x",
    "k8s://users.shop/path",
    "k8s://users.shop?x=1",
])
def test_bad_urls_raise_config_error_naming_the_url(url: str) -> None:
    """A malformed k8s URL raises ConfigError that names the URL."""
    with pytest.raises(ConfigError) as info:
        discovery_from_url(url, DiscoveryOptions(k8s_api="http://127.0.0.1:1"))
    assert repr(url) in str(info.value)


def test_url_parts_and_the_default_namespace(tmp_path: Path) -> None:
    """SERVICE.NAMESPACE:PORT; the namespace defaults to the pod's own, else default."""
    opts = DiscoveryOptions(k8s_api="http://127.0.0.1:1")
    d = K8sDiscovery("k8s://users.shop:http", opts)
    assert (d.service, d.namespace, d.port) == ("users", "shop", "http")
    assert K8sDiscovery("k8s://users.shop:8080", opts).port == 8080
    assert K8sDiscovery("k8s://users", opts).namespace == "default"
    sa = Path(_k8s.SERVICE_ACCOUNT_DIR)
    sa.mkdir()
    (sa / "namespace").write_text("payments\n")
    d = K8sDiscovery("k8s://users:grpc", opts)
    assert (d.namespace, d.port) == ("payments", "grpc")
    assert d.path == "/apis/discovery.k8s.io/v1/namespaces/payments/endpointslices"


def test_no_api_server_is_a_config_error() -> None:
    """Outside a pod and without MESHLIB_K8S_API, building the client fails clearly."""
    with pytest.raises(ConfigError, match="MESHLIB_K8S_API"):
        meshlib.MeshClient(services={"users": "k8s://users.shop:http"})


def test_environment_selects_the_api_server() -> None:
    """MESHLIB_K8S_API wins; else the in-cluster address; a bad value names the variable."""
    env = read_env({"MESHLIB_K8S_API": "http://127.0.0.1:8001",
                    "KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443",
                    "MESHLIB_K8S_TOKEN_FILE": "/t", "MESHLIB_K8S_CA_FILE": "/c",
                    "MESHLIB_ZONE": "a"})
    opts = DiscoveryOptions.from_env(env)
    assert (opts.k8s_api, opts.k8s_token_file, opts.k8s_ca_file, opts.zone) == (
        "http://127.0.0.1:8001", "/t", "/c", "a")
    env = read_env({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert env.k8s_api == "https://[fd00::1]:6443"
    for bad in ("127.0.0.1:8001", "ftp://x", "http://x:port", "http://x/?a=b"):
        with pytest.raises(ConfigError, match="MESHLIB_K8S_API"):
            read_env({"MESHLIB_K8S_API": bad})


def test_in_cluster_defaults_use_the_service_account_over_https() -> None:
    """Over https the service account's token and CA are used; over http no token is sent."""
    d = K8sDiscovery("k8s://users.shop", DiscoveryOptions(k8s_api="https://10.0.0.1:443"))
    assert d.token_file == f"{_k8s.SERVICE_ACCOUNT_DIR}/token"
    assert d.ca_file == f"{_k8s.SERVICE_ACCOUNT_DIR}/ca.crt"
    d = K8sDiscovery("k8s://users.shop", DiscoveryOptions(k8s_api="http://127.0.0.1:8001"))
    assert d.token_file is None and d.ca_file is None


# -- endpoint semantics ----------------------------------------------------------------


def test_conditions_decide_membership() -> None:
    """ready (absent = ready) decides; terminating leaves; first address; zone kept."""
    obj = endpoint_slice("users-a", "users", [
        endpoint("10.0.0.1", zone="a"),
        endpoint("10.0.0.2", ready=None),
        endpoint("10.0.0.3", ready=False),
        endpoint("10.0.0.4", ready=False, serving=True, terminating=True),
        {"addresses": ["10.0.0.5", "10.0.0.99"]},
    ], ports=[("http", 8080)])
    name, view = parse_slice(obj, "http")
    assert name == "users-a" and len(view) == 5
    assert view[3].terminating and view[3].serving and not view[3].ready
    chosen = select_endpoints(view, None)
    assert chosen == (Endpoint("10.0.0.1", 8080, zone="a"), Endpoint("10.0.0.2", 8080),
                      Endpoint("10.0.0.5", 8080))


def test_ports_by_name_number_or_the_only_one() -> None:
    """A port name or number picks the slice's port; no port needs exactly one."""
    one = endpoint_slice("s", "users", [endpoint("10.0.0.1")], ports=[("", 9000)])
    two = endpoint_slice("s", "users", [endpoint("10.0.0.1")],
                         ports=[("http", 8080), ("metrics", 9090)])
    assert parse_slice(one, None)[1][0].port == 9000
    assert parse_slice(two, "metrics")[1][0].port == 9090
    assert parse_slice(two, 8080)[1][0].port == 8080
    assert parse_slice(two, "grpc")[1] == []
    with pytest.raises(Exception, match="several ports"):
        parse_slice(two, None)


def test_ipv6_and_fqdn_slices() -> None:
    """IPv6 slices work (bracketed addresses); FQDN slices are ignored."""
    v6 = endpoint_slice("s6", "users", [endpoint("fd00::1")], ports=[("http", 80)],
                        address_type="IPv6")
    assert [e.address for e in parse_slice(v6, "http")[1]] == ["[fd00::1]:80"]
    fqdn = endpoint_slice("sf", "users", [endpoint("db.example.com")], ports=[("http", 80)],
                          address_type="FQDN")
    assert parse_slice(fqdn, "http")[1] == []


@pytest.mark.parametrize("bad", [
    "not an object",
    {"metadata": {}},
    {"metadata": {"name": "s"}, "addressType": "IPv5", "endpoints": []},
    {"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": "x"},
    {"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": [{"addresses": []}],
     "ports": [{"name": "http", "port": 80}]},
    {"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": [{"addresses": ["::1"]}],
     "ports": [{"name": "http", "port": 80}]},
    {"metadata": {"name": "s"}, "addressType": "IPv4",
     "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}],
     "ports": [{"name": "http", "port": 80}]},
    {"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": [],
     "ports": [{"name": "http", "port": "80"}]},
])
def test_garbage_slices_raise_slice_error(bad: Any) -> None:
    """A slice that does not follow the documented shape is a SliceError, not a crash."""
    with pytest.raises(SliceError):
        parse_slice(bad, "http")


def hinted(address: str, zone: str, for_zones: list[str] | None) -> Any:
    """A parsed endpoint in ``zone`` with those hints."""
    obj = endpoint_slice("s", "users", [endpoint(address, zone=zone, for_zones=for_zones)],
                         ports=[("http", 80)])
    return parse_slice(obj, "http")[1][0]


def test_topology_hints_as_kube_proxy_applies_them() -> None:
    """Hints are obeyed for the client's zone; ignored if any member lacks them or none
    is hinted for the zone; ignored without a client zone."""
    view = [hinted("10.0.0.1", "a", ["a"]), hinted("10.0.0.2", "b", ["b"]),
            hinted("10.0.0.3", "b", ["a"])]
    chosen = select_endpoints(view, "a")
    assert addresses(chosen) == {"10.0.0.1:80", "10.0.0.3:80"}
    assert {e.zone for e in chosen} == {"a"}  # hinted for our zone: routed as local
    assert addresses(select_endpoints(view, None)) == addresses(select_endpoints(view, "c")) \
        == {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
    partial = [*view, hinted("10.0.0.4", "b", None)]
    assert len(select_endpoints(partial, "a")) == 4


# -- the protocol ----------------------------------------------------------------------


def users_slice(name: str, *eps: dict[str, Any], port: int = 8080) -> dict[str, Any]:
    """A slice of Service ``users`` with port ``http``."""
    return endpoint_slice(name, "users", list(eps), ports=[("http", port)])


async def test_list_then_watch_merges_every_slice(
        api: FakeKubeAPI, watch: tuple[K8sDiscovery, AsyncIterator[Any]]) -> None:
    """List gives the set; the watch starts at the list's resourceVersion with bookmarks;
    slices of other Services and namespaces are not mixed in."""
    _, updates = watch
    api.put(users_slice("users-a", endpoint("10.0.0.1")))
    api.put(endpoint_slice("orders-a", "orders", [endpoint("10.9.9.9")], ports=[("http", 1)]))
    api.put(endpoint_slice("users-x", "users", [endpoint("10.8.8.8")], ports=[("http", 1)],
                           namespace="other"))
    first = await next_update(updates, is_set)
    assert addresses(first) == {"10.0.0.1:8080"}
    api.put(users_slice("users-b", endpoint("10.0.0.2"), endpoint("10.0.0.3")))
    update = await next_update(updates, lambda u: is_set(u) and len(u) == 3)
    assert addresses(update) == {"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"}
    path, query, _ = api.requests[0]
    assert path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    assert query["labelSelector"] == "kubernetes.io/service-name=users"
    watch_query = next(q for _, q, _ in api.requests if q.get("watch"))
    assert watch_query["allowWatchBookmarks"] == "true"
    assert watch_query["resourceVersion"] == "103"  # the list's
    api.delete("users-a")
    update = await next_update(updates, lambda u: is_set(u) and len(u) == 2)
    assert addresses(update) == {"10.0.0.2:8080", "10.0.0.3:8080"}
    assert api.list_count() == 1


async def test_bookmarks_move_the_resource_version_and_a_broken_watch_resumes(
        api: FakeKubeAPI, watch: tuple[K8sDiscovery, AsyncIterator[Any]]) -> None:
    """After bookmarks, a cut watch resumes from the bookmark's version, without a relist."""
    discovery, updates = watch
    pump = Pump(updates)
    try:
        api.put(users_slice("users-a", endpoint("10.0.0.1")))
        await pump.next()
        api.put(endpoint_slice("orders-a", "orders", [endpoint("10.9.9.9")],
                               ports=[("http", 1)]))
        deadline = time.monotonic() + 5
        while discovery.resource_version != str(api.version) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # a bookmark carries the other Service's change
        assert discovery.resource_version == str(api.version)
        version = discovery.resource_version
        watches = api.watch_count()
        api.drop_watches()
        deadline = time.monotonic() + 5
        while api.watch_count() == watches and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert api.requests[-1][1]["resourceVersion"] == version  # resumed from the bookmark
        api.put(users_slice("users-a", endpoint("10.0.0.1"), endpoint("10.0.0.2")))
        update = await pump.next(lambda u: is_set(u) and len(u) == 2)
        assert addresses(update) == {"10.0.0.1:8080", "10.0.0.2:8080"}
        assert api.list_count() == 1
    finally:
        await pump.stop()


async def test_a_watch_that_times_out_is_resumed(
        api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server ends a watch after timeoutSeconds; the discovery watches again from
    the last version, without listing again."""
    monkeypatch.setattr(K8sDiscovery, "WATCH_SECONDS", 1.0)
    discovery = K8sDiscovery("k8s://users.default:http", options(api))
    pump = Pump(discovery.updates())
    try:
        api.put(users_slice("users-a", endpoint("10.0.0.1")))
        await pump.next()
        await asyncio.sleep(2.5)  # the server ends the watch: timeoutSeconds is 1 or 2
        assert api.watch_count() >= 2
        api.put(users_slice("users-a", endpoint("10.0.0.2")))
        await pump.next(lambda u: is_set(u) and addresses(u) == {"10.0.0.2:8080"})
        assert api.list_count() == 1
        assert all(q["timeoutSeconds"] in ("1", "2") for _, q, _ in api.requests
                   if q.get("watch"))
    finally:
        await pump.stop()
        await discovery.aclose()


@pytest.mark.parametrize("as_status", [False, True])
async def test_an_expired_resource_version_relists(
        api: FakeKubeAPI, watch: tuple[K8sDiscovery, AsyncIterator[Any]],
        as_status: bool) -> None:
    """410 (an ERROR event, or the answer's status) lists again; changes made meanwhile
    are seen, and no failure is reported."""
    _, updates = watch
    api.gone_as_status = as_status
    api.put(users_slice("users-a", endpoint("10.0.0.1")))
    await next_update(updates, is_set)
    api.expire()
    api.drop_watches()
    api.put(users_slice("users-b", endpoint("10.0.0.2")))
    api.expire()  # the change is not in the history any more: only a list shows it
    seen: list[Any] = []

    def both(update: Any) -> bool:
        seen.append(update)
        return is_set(update) and len(update) == 2

    await next_update(updates, both)
    assert api.list_count() == 2
    assert not any(isinstance(u, DiscoveryFailure) for u in seen)


async def test_an_error_event_in_an_open_watch_relists(api: FakeKubeAPI) -> None:
    """An ERROR event carrying 410 in a running watch makes the discovery list again."""
    discovery = K8sDiscovery("k8s://users.default:http", options(api))
    pump = Pump(discovery.updates())
    try:
        api.put(users_slice("users-a", endpoint("10.0.0.1")))
        await pump.next()
        deadline = time.monotonic() + 5
        while api.open_watches == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        api.send_error(410)
        api.put(users_slice("users-a", endpoint("10.0.0.7")))
        await pump.next(lambda u: is_set(u) and addresses(u) == {"10.0.0.7:8080"})
        deadline = time.monotonic() + 5
        while api.list_count() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert api.list_count() == 2
    finally:
        await pump.stop()


async def test_errors_are_failures_and_recover(
        api: FakeKubeAPI, watch: tuple[K8sDiscovery, AsyncIterator[Any]]) -> None:
    """An HTTP error or a garbage stream yields a failure (the last set is kept), then
    the discovery lists again and recovers."""
    _, updates = watch
    api.put(users_slice("users-a", endpoint("10.0.0.1")))
    await next_update(updates, is_set)
    api.garbage_next_watch = "{not json"
    api.fail_next = 1
    api.drop_watches()
    failure = await next_update(updates, lambda u: isinstance(u, DiscoveryFailure))
    assert "kubernetes http://127.0.0.1" in failure.reason
    api.put(users_slice("users-a", endpoint("10.0.0.2")))
    update = await next_update(updates, lambda u: is_set(u) and
                               addresses(u) == {"10.0.0.2:8080"})
    assert update


async def test_a_watch_line_nested_too_deeply_is_a_named_failure_then_a_list(
        api: FakeKubeAPI, watch: tuple[K8sDiscovery, AsyncIterator[Any]]) -> None:
    """A watch line ``[[[[...`` 100,000 deep used to raise RecursionError out of the
    discovery, which then never listed again. Now it is a failure that says so, the
    slices are listed again and later changes are followed."""
    _, updates = watch
    api.put(users_slice("users-a", endpoint("10.0.0.1")))
    await next_update(updates, is_set)
    lists = api.list_count()
    api.garbage_next_watch = "[" * 100_000
    api.drop_watches()
    failure = await next_update(updates, lambda u: isinstance(u, DiscoveryFailure))
    assert "a watch line is nested too deeply to read" in failure.reason
    api.put(users_slice("users-a", endpoint("10.0.0.2")))
    assert await next_update(updates, lambda u: is_set(u) and
                             addresses(u) == {"10.0.0.2:8080"})
    assert api.list_count() > lists


async def test_watches_that_end_at_once_back_off(api: FakeKubeAPI) -> None:
    """A server (or proxy) that ends every watch at once is a failure, retried with
    backoff, not a busy loop; the last set stays."""
    api.put(users_slice("users-a", endpoint("10.0.0.1")))
    api.end_watches_at_once = True
    discovery = K8sDiscovery("k8s://users.default:http", options(api))
    pump = Pump(discovery.updates())
    try:
        await pump.next()
        failure = await pump.next(lambda u: isinstance(u, DiscoveryFailure))
        assert "ended at once" in failure.reason
        await asyncio.sleep(1.0)
        assert api.watch_count() < 15  # backoff 0.05 s doubling to 0.2 s
    finally:
        await pump.stop()


async def test_a_garbage_slice_keeps_its_last_good_endpoints(
        api: FakeKubeAPI, watch: tuple[K8sDiscovery, AsyncIterator[Any]],
        caplog: pytest.LogCaptureFixture) -> None:
    """A MODIFIED slice that does not parse keeps that slice's endpoints and is logged."""
    _, updates = watch
    api.put(users_slice("users-a", endpoint("10.0.0.1")))
    api.put(users_slice("users-b", endpoint("10.0.0.2")))
    await next_update(updates, lambda u: is_set(u) and len(u) == 2)
    bad = users_slice("users-a", endpoint("10.0.0.1"))
    bad["endpoints"] = "garbage"
    with caplog.at_level(logging.WARNING, "meshlib.discovery"):
        api.put_raw("default", "users-a", bad)
        api.put(users_slice("users-b", endpoint("10.0.0.3")))
        update = await next_update(updates, lambda u: is_set(u) and
                                   "10.0.0.3:8080" in addresses(u))
    assert addresses(update) == {"10.0.0.1:8080", "10.0.0.3:8080"}
    assert any("bad EndpointSlice 'users-a'" in r.getMessage() for r in caplog.records)


async def test_lists_are_read_page_by_page(api: FakeKubeAPI,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A list in pages (limit/continue) is merged whole before the set is given."""
    monkeypatch.setattr(K8sDiscovery, "PAGE_SIZE", 1)
    for i in range(3):
        api.put(users_slice(f"users-{i}", endpoint(f"10.0.0.{i + 1}")))
    discovery = K8sDiscovery("k8s://users.default:http", options(api))
    updates = discovery.updates()
    try:
        first = await next_update(updates, is_set)
        assert len(first) == 3 and api.list_count() == 3
    finally:
        await updates.aclose()


async def test_several_ports_without_a_name_is_a_failure(api: FakeKubeAPI) -> None:
    """k8s://SVC.NS without a port when the slices carry two ports fails, naming them."""
    api.put(endpoint_slice("users-a", "users", [endpoint("10.0.0.1")],
                           ports=[("http", 80), ("metrics", 9090)]))
    discovery = K8sDiscovery("k8s://users.default", options(api))
    updates = discovery.updates()
    try:
        failure = await next_update(updates)
        assert isinstance(failure, DiscoveryFailure)
        assert "several ports (http, metrics)" in failure.reason
    finally:
        await updates.aclose()


# -- tokens and TLS --------------------------------------------------------------------


async def test_bearer_token_is_sent_and_reread_as_it_rotates(tmp_path: Path) -> None:
    """The token file is read for every request: a rotated token is picked up; a wrong
    token is a failure that names the HTTP status."""
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    with FakeKubeAPI(token="first-token") as api:
        api.put(users_slice("users-a", endpoint("10.0.0.1")))
        discovery = K8sDiscovery("k8s://users.default:http",
                                 options(api, k8s_token_file=str(token_file)))
        updates = discovery.updates()
        try:
            await next_update(updates, is_set)
            assert api.requests[0][2] == "Bearer first-token"
            token_file.write_text("second-token\n")  # the kubelet rotates the file
            api.token = "second-token"  # and the old token expires
            api.drop_watches()
            api.put(users_slice("users-a", endpoint("10.0.0.2")))
            await next_update(updates, lambda u: is_set(u) and
                              addresses(u) == {"10.0.0.2:8080"})
            assert api.requests[-1][2] == "Bearer second-token"
            api.token = "third-token"
            api.drop_watches()
            failure = await next_update(updates, lambda u: isinstance(u, DiscoveryFailure)
                                        and "HTTP 401" in u.reason)
            assert "Unauthorized" in failure.reason
        finally:
            await updates.aclose()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A private CA for the fake API server's certificate."""
    return trustme.CA()


async def test_in_cluster_https_with_the_service_account(
        ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        backends: BackendFactory) -> None:
    """In a pod (KUBERNETES_SERVICE_HOST) the client uses https, the service account's
    token, CA and namespace; MeshClient serves traffic from it."""
    b = backends(1)
    sa = Path(_k8s.SERVICE_ACCOUNT_DIR)
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "namespace").write_text("shop")
    ca.cert_pem.write_to_path(str(sa / "ca.crt"))
    with FakeKubeAPI(token="sa-token", certificate=ca.issue_cert("127.0.0.1")) as api:
        api.put(endpoint_slice("users-a", "users", [endpoint(b[0].host)],
                               ports=[("http", b[0].port)], namespace="shop"))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        async with meshlib.AsyncMeshClient(services={"users": "k8s://users:http"}) as client:
            response = await client.get("http://users/")
            assert response.extensions["meshlib"]["endpoint"] == b.addresses[0]
        assert api.requests[0][0].startswith("/apis/discovery.k8s.io/v1/namespaces/shop/")


async def test_tls_is_always_verified(ca: trustme.CA, tmp_path: Path) -> None:
    """A server certificate from an unknown CA fails; nothing is read from it."""
    other = trustme.CA()
    other_ca = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(other_ca))
    with FakeKubeAPI(certificate=ca.issue_cert("127.0.0.1")) as api:
        api.put(users_slice("users-a", endpoint("10.0.0.1")))
        for opts in (options(api), options(api, k8s_ca_file=str(other_ca))):
            discovery = K8sDiscovery("k8s://users.default:http", opts)
            updates = discovery.updates()
            try:
                failure = await next_update(updates)
                assert isinstance(failure, DiscoveryFailure)
                assert "CERTIFICATE_VERIFY_FAILED" in failure.reason
            finally:
                await updates.aclose()


# -- a MeshClient serving traffic while the slices change ------------------------------


class Load:
    """A thread sending GETs through ``client`` until stopped (bounded in count and time)."""

    def __init__(self, client: meshlib.MeshClient, limit: int = 20_000,
                 seconds: float = 60.0) -> None:
        self.client = client
        self.failures: list[str] = []
        self.sent = 0
        self.stop = threading.Event()
        self.limit, self.seconds = limit, seconds
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and self.sent < self.limit \
                and time.monotonic() < deadline:
            try:
                response = self.client.get("http://users/")
                if response.status_code != 200:
                    self.failures.append(f"HTTP {response.status_code}")
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.sent += 1
            time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def members(client: meshlib.MeshClient | meshlib.AsyncMeshClient) -> set[str]:
    """The endpoints the client currently uses for ``users``."""
    return {e["endpoint"] for e in client.snapshot()["services"]["users"]["endpoints"]}


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_mesh_client_follows_slices_without_failing_a_request(
        api: FakeKubeAPI, backends: BackendFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices added, split, updated, emptied and deleted while traffic flows: no request
    fails, and a terminating endpoint gets nothing new while its in-flight request ends."""
    b = backends(4)
    port = b[0].port

    # the four backends share 127.0.0.1: each slice carries one backend's port
    def per_port(name: str, i: int, **conditions: Any) -> dict[str, Any]:
        return endpoint_slice(name, "users", [endpoint(b[i].host, zone="a", **conditions)],
                              ports=[("http", b[i].port)])

    api.put(per_port("users-0", 0))
    api.put(per_port("users-1", 1))
    monkeypatch.setenv("MESHLIB_K8S_API", api.url)
    with meshlib.MeshClient(services={"users": "k8s://users.default:http"}) as client:
        assert client.get("http://users/").status_code == 200
        load = Load(client)
        try:
            api.put(per_port("users-2", 2))  # added
            assert wait_for(lambda: members(client) == {b.addresses[i] for i in (0, 1, 2)})
            api.put(per_port("users-3", 3))  # a split: a new slice takes 3 ...
            api.put(endpoint_slice("users-0", "users", [], ports=[("http", port)]))
            api.put(per_port("users-0b", 0))  # ... and 0 moves to another slice
            assert wait_for(lambda: members(client) == set(b.addresses))

            slow: list[int] = []
            request = threading.Thread(target=lambda: slow.append(
                client.get("http://users/?delay_ms=1500").status_code))
            request.start()
            assert wait_for(lambda: any(
                "delay_ms=1500" in r.query for server in b.servers for r in server.requests))
            i = next(n for n, server in enumerate(b.servers)
                     if any("delay_ms=1500" in r.query for r in server.requests))
            name = {0: "users-0b", 1: "users-1", 2: "users-2", 3: "users-3"}[i]
            api.put(per_port(name, i, ready=False, serving=True, terminating=True))  # updated
            assert wait_for(lambda: b.addresses[i] not in members(client))
            time.sleep(0.1)  # a request picked just before is on its way
            b.reset_counts()
            for _ in range(30):
                assert client.get("http://users/").status_code == 200
            time.sleep(0.2)
            assert b[i].count == 0  # terminating: nothing new
            request.join(timeout=10)
            assert slow == [200]  # in flight when it began terminating: it finished

            api.put(per_port(name, i))  # ready again
            assert wait_for(lambda: b.addresses[i] in members(client))
            api.put(endpoint_slice("users-1", "users", [], ports=[("http", b[1].port)]))
            api.delete("users-2")  # emptied and deleted
            assert wait_for(lambda: members(client) == {b.addresses[0], b.addresses[3]})
            time.sleep(0.1)
            b.reset_counts()
            for _ in range(30):
                assert client.get("http://users/").status_code == 200
            assert b[1].count == 0 and b[2].count == 0
        finally:
            load.finish()
        assert load.sent > 10
        assert load.failures == []


def test_no_ready_endpoint_keeps_the_last_set_through_the_grace(
        api: FakeKubeAPI, backends: BackendFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every slice deleted: the last set keeps serving (empty-answer grace), then none."""
    b = backends(1)
    api.put(endpoint_slice("users-a", "users", [endpoint(b[0].host)],
                           ports=[("http", b[0].port)]))
    monkeypatch.setenv("MESHLIB_K8S_API", api.url)
    with meshlib.MeshClient(services={"users": "k8s://users.default:http"}) as client:
        assert client.get("http://users/").status_code == 200
        api.delete("users-a")
        time.sleep(0.3)
        assert client.get("http://users/").status_code == 200
        assert members(client) == {b.addresses[0]}


async def test_ipv6_endpoints_and_api_server(backends: BackendFactory,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An IPv6 slice and an API server on [::1] work with AsyncMeshClient."""
    b = backends(2, host="::1")
    with FakeKubeAPI(host="::1") as api:
        for i in range(2):
            api.put(endpoint_slice(f"users-{i}", "users", [endpoint("::1")],
                                   ports=[("http", b[i].port)], address_type="IPv6"))
        monkeypatch.setenv("MESHLIB_K8S_API", api.url)
        async with meshlib.AsyncMeshClient(services={"users": "k8s://users.default:http"}
                                           ) as client:
            seen = set()
            for _ in range(20):
                seen.add((await client.get("http://users/")).extensions["meshlib"]["endpoint"])
            assert seen == set(b.addresses)
            assert all(a.startswith("[::1]:") for a in seen)


def test_topology_hints_steer_a_zoned_client(
        api: FakeKubeAPI, backends: BackendFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """With MESHLIB_ZONE set, only endpoints hinted for that zone get traffic."""
    b = backends(3)
    zones = [("a", ["a"]), ("b", ["a"]), ("b", ["b"])]
    for i, (zone, hints) in enumerate(zones):
        api.put(endpoint_slice(f"users-{i}", "users",
                               [endpoint(b[i].host, zone=zone, for_zones=hints)],
                               ports=[("http", b[i].port)]))
    monkeypatch.setenv("MESHLIB_K8S_API", api.url)
    monkeypatch.setenv("MESHLIB_ZONE", "a")
    with meshlib.MeshClient(services={"users": "k8s://users.default:http"}) as client:
        for _ in range(40):
            assert client.get("http://users/").status_code == 200
        assert b[2].count == 0
        assert b[0].count > 0 and b[1].count > 0


# -- meshlib resolve -------------------------------------------------------------------


def test_resolve_shows_conditions(api: FakeKubeAPI, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """meshlib resolve k8s://... shows ready, terminating and zone per endpoint."""
    api.put(users_slice("users-a", endpoint("10.0.0.1", zone="a"),
                        endpoint("10.0.0.2", ready=False, terminating=True, zone="b")))
    monkeypatch.setenv("MESHLIB_K8S_API", api.url)
    assert main(["resolve", "k8s://users.default:http"]) == 0
    out = capsys.readouterr().out
    assert "10.0.0.1:8080  ready=yes terminating=no zone=a slice=users-a\n" in out
    assert "10.0.0.2:8080  ready=no terminating=yes zone=b slice=users-a  (not used)" in out
    assert main(["resolve", "--json", "k8s://users.default:http"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert [(d["endpoint"], d["ready"], d["terminating"], d["used"]) for d in data] == [
        ("10.0.0.1:8080", True, False, True), ("10.0.0.2:8080", False, True, False)]


def test_resolve_watch_prints_changes(api: FakeKubeAPI) -> None:
    """meshlib resolve --watch k8s://... prints the set again when a slice changes."""
    api.put(users_slice("users-a", endpoint("10.0.0.1")))
    import os

    env = {**os.environ, "MESHLIB_K8S_API": api.url}
    proc = subprocess.Popen([sys.executable, "-m", "meshlib", "resolve", "--watch",
                             "k8s://users.default:http"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while api.watch_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        api.put(users_slice("users-a", endpoint("10.0.0.1", ready=False, terminating=True),
                            endpoint("10.0.0.2")))
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert "10.0.0.1:8080  ready=yes" in out, out + err
    assert "10.0.0.1:8080  ready=no terminating=yes slice=users-a  (not used)" in out, out + err
    assert "10.0.0.2:8080  ready=yes" in out
