"""Bad input and configuration (issue 8 and issue 12): every parse is total, every bad
value a ConfigError naming it, no password in any message or log line."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Iterator

import httpx
import pytest

import meshlib
import meshlib._config as config_module
from conftest import BackendFactory
from meshlib import Backoff, Breaker, ConfigError, Hedge, Policy, RetryBudget
from meshlib._config import parse_duration, read_env
from meshlib._errors import redact_url
from meshlib._gate import RETRY_AFTER_MAX, parse_retry_after
from meshlib.testing._backend import Backend
from servers import free_port

FAST = Policy(backoff=Backoff(base=0.001, max=0.005))


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    """Each test sees the once-per-process configuration warnings afresh."""
    config_module._warned.clear()
    yield
    config_module._warned.clear()


def _inflight(client: meshlib.MeshClient | meshlib.AsyncMeshClient) -> int:
    return sum(e["inflight"] for s in client.snapshot()["services"].values()
               for e in s["endpoints"])


# -- Retry-After --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("5", 5.0), (" 7 ", 7.0), ("0", 0.0), ("007", 7.0),
    ("²", None), ("١٢", None), ("5²", None), ("-1", None), ("1.5", None), ("1e3", None),
    ("", None), ("   ", None), ("soon", None), ("Mon, 99 Foo 2020 99:99:99 GMT", None),
    ("9" * 5000, RETRY_AFTER_MAX), ("99999999", RETRY_AFTER_MAX),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: retry now
])
def test_retry_after_parse_is_total(value: str, expected: float | None) -> None:
    """ASCII digits only (as urllib3), HTTP dates, anything else ignored; huge values clamp."""
    assert parse_retry_after(value) == expected


def test_retry_after_future_http_date() -> None:
    """An HTTP date in the future is the seconds until then."""
    now = time.time()
    value = email.utils.formatdate(now + 30, usegmt=True)
    seconds = parse_retry_after(value, now_wall=now)
    assert seconds is not None and 28 <= seconds <= 31


@pytest.mark.parametrize("retry_after", ["²", "soon", "-5", "1e9999", "Fri, 31 Dec 99999 GMT"])
def test_malformed_retry_after_through_a_real_client(backends: BackendFactory,
                                                     retry_after: str) -> None:
    """A 503 with a malformed Retry-After: the header is ignored, the retry happens, no
    exception escapes and the in-flight counts return to 0."""
    b = backends(2, status=[503, 200], retry_after=[retry_after, None])
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(balancer="round-robin")) as client:
        for _ in range(4):
            response = client.get("http://svc/")
            assert response.status_code == 200
        assert b[0].count >= 1  # the 503 with the bad header was really met
        assert _inflight(client) == 0


async def test_malformed_retry_after_async_client(backends: BackendFactory) -> None:
    """The same through AsyncMeshClient, with the 503 the only answer (retries exhausted)."""
    b = backends(1, status=503, retry_after="²")
    async with meshlib.AsyncMeshClient(services={"svc": b.static_url},
                                       policy=FAST.replace(retries=1)) as client:
        response = await client.get("http://svc/")
        assert response.status_code == 503
        assert b.count == 2
        await asyncio.sleep(0)
        assert _inflight(client) == 0


def test_retry_after_longer_than_the_deadline_ends_retries(backends: BackendFactory) -> None:
    """A huge (clamped) Retry-After does not fit the deadline: the 503 comes back at once."""
    b = backends(2, status=503, retry_after="9" * 400)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(timeout=2)) as client:
        response = client.get("http://svc/")
        assert response.status_code == 503
        assert response.extensions["meshlib"]["attempts"] == 1
        assert _inflight(client) == 0


# -- policy bounds ------------------------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda: Policy(timeout=1e308),
    lambda: Policy(timeout=float("inf")),
    lambda: Policy(timeout=float("nan")),
    lambda: Policy(timeout=86400.5),
    lambda: Policy(attempt_timeout=1e300),
    lambda: Policy(retries=101),
    lambda: Policy(retries=10**30),
    lambda: Backoff(base=1e308),
    lambda: Backoff(max=float("inf")),
    lambda: Breaker(reset_timeout=1e308),
    lambda: Breaker(failures=10**12),
    lambda: Hedge(delay=1e308),
    lambda: Hedge(fallback=float("nan")),
    lambda: Hedge(max_attempts=1000),
    lambda: RetryBudget(ttl=1e308),
    lambda: RetryBudget(ratio=-0.1),
    lambda: RetryBudget(min_per_second=1e308),
])
def test_extreme_policy_values_are_config_errors(build: object) -> None:
    """Values that would overflow later (now + timeout, ms conversion, Event.wait) are
    refused when built, naming the value."""
    assert callable(build)
    with pytest.raises(ConfigError, match=r"got "):
        build()


def test_policy_timeout_error_names_the_value() -> None:
    """The message names the field, the value and the bound."""
    with pytest.raises(ConfigError, match=r"Policy\.timeout .*<= 86400.*1e\+308"):
        Policy(timeout=1e308)


def test_largest_allowed_timeout_works_end_to_end(backend: Backend) -> None:
    """A one-day timeout (the maximum) and 100 retries: requests work, nothing overflows."""
    policy = Policy(timeout=86400, retries=100, breaker=Breaker(reset_timeout=86400))
    with meshlib.MeshClient(services={"svc": backend.static_url}, policy=policy) as client:
        response = client.get("http://svc/")
    assert response.status_code == 200
    assert 86_000_000 < int(response.json()["headers"]["x-mesh-timeout-ms"]) <= 86_400_000


# -- environment --------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "seconds"), [
    ("2", 2.0), ("2.5", 2.5), ("2s", 2.0), ("2 s", 2.0), ("250ms", 0.25), ("250MS", 0.25),
    ("1m", 60.0), ("1h", 3600.0), (".5", 0.5), ("1e-1", 0.1),
])
def test_env_durations_accept_units(raw: str, seconds: float) -> None:
    """MESHLIB_TIMEOUT takes plain seconds and the units people write."""
    assert read_env({"MESHLIB_TIMEOUT": raw}).policy.timeout == pytest.approx(seconds)


@pytest.mark.parametrize(("raw", "message"), [
    ("2min", "ms, s, m, h"), ("two", "ms, s, m, h"), ("inf", "ms, s, m, h"),
    ("nan", "ms, s, m, h"), ("-1", "ms, s, m, h"), ("0", "> 0"), ("0ms", "> 0"),
    ("1e308", "too long"), ("25h", "too long"), ("1e400", "finite"),
])
def test_bad_env_durations_name_variable_value_and_units(raw: str, message: str) -> None:
    """A bad duration raises ConfigError naming the variable, the value and what is accepted."""
    with pytest.raises(ConfigError, match="MESHLIB_TIMEOUT") as caught:
        read_env({"MESHLIB_TIMEOUT": raw})
    assert repr(raw) in str(caught.value)
    assert message in str(caught.value)


def test_env_timeout_1e308_refused_when_the_client_is_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MESHLIB_TIMEOUT=1e308 is a ConfigError at build time, not an OverflowError later."""
    monkeypatch.setenv("MESHLIB_TIMEOUT", "1e308")
    with pytest.raises(ConfigError, match=r"MESHLIB_TIMEOUT='1e308'"):
        meshlib.MeshClient(services={"svc": "static://127.0.0.1:1"})


@pytest.mark.parametrize(("var", "raw"), [
    ("MESHLIB_RETRIES", "1000"), ("MESHLIB_RETRIES", "²"), ("MESHLIB_RETRIES", "١٢"),
    ("MESHLIB_RETRIES", "1" * 5000),
    ("MESHLIB_BREAKER_RESET_TIMEOUT", "1e308"), ("MESHLIB_HEDGE_DELAY", "1e308"),
    ("MESHLIB_ATTEMPT_TIMEOUT", "0"), ("MESHLIB_RETRY_BUDGET_RATIO", "1e308"),
    ("MESHLIB_BREAKER_FAILURES", "0"),
])
def test_other_env_bounds(var: str, raw: str) -> None:
    """Every numeric variable is bounded and its error names it."""
    with pytest.raises(ConfigError, match=var):
        read_env({var: raw})


def test_env_units_for_other_durations() -> None:
    """Attempt timeout, breaker reset and hedge delay take units too."""
    env = read_env({"MESHLIB_ATTEMPT_TIMEOUT": "150ms", "MESHLIB_BREAKER_RESET_TIMEOUT": "1m",
                    "MESHLIB_HEDGE_DELAY": "20ms"})
    assert env.policy.attempt_timeout == pytest.approx(0.15)
    assert env.policy.breaker.reset_timeout == 60.0
    assert env.policy.hedge is not None and env.policy.hedge.delay == pytest.approx(0.02)


def test_unknown_env_variable_warned_once_with_a_suggestion(
        caplog: pytest.LogCaptureFixture) -> None:
    """A typo like MESHLIB_TIMEOUTS is warned about once per process, with "did you mean"."""
    caplog.set_level(logging.WARNING, "meshlib")
    env = {"MESHLIB_TIMEOUTS": "2", "MESHLIB_SERVICES": "svc=static://127.0.0.1:1",
           "MESHLIB_K8S_API": "https://127.0.0.1:1", "MESHLIB_POOL": "httpcore",
           "MESHLIB_ZONE": "a"}
    for _ in range(3):
        read_env(env)
    warnings = [r.getMessage() for r in caplog.records if "MESHLIB_" in r.getMessage()]
    assert len(warnings) == 1
    assert "MESHLIB_TIMEOUTS" in warnings[0]
    assert "did you mean MESHLIB_TIMEOUT?" in warnings[0]


def test_client_with_no_services_warns(caplog: pytest.LogCaptureFixture,
                                       backend: Backend) -> None:
    """A forgotten MESHLIB_SERVICES: one warning that everything passes through."""
    caplog.set_level(logging.WARNING, "meshlib")
    with meshlib.MeshClient() as client:
        assert client.get(f"http://{backend.addresses[0]}/").status_code == 200
    with meshlib.MeshClient():
        pass
    warnings = [r.getMessage() for r in caplog.records if "no services" in r.getMessage()]
    assert len(warnings) == 1
    assert "MESHLIB_SERVICES" in warnings[0] and "plain httpx" in warnings[0]


def test_client_with_services_does_not_warn(caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No false alarm when services are configured (explicitly or in the environment)."""
    caplog.set_level(logging.WARNING, "meshlib")
    with meshlib.MeshClient(services={"svc": "static://127.0.0.1:1"}):
        pass
    monkeypatch.setenv("MESHLIB_SERVICES", "svc=static://127.0.0.1:1")
    with meshlib.MeshClient():
        pass
    assert not [r for r in caplog.records if "no services" in r.getMessage()]


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1", "LOCALHOST", "api.localhost"])
def test_service_named_like_a_host_warns(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """A service named localhost or an IP captures every port of that host: warned."""
    caplog.set_level(logging.WARNING, "meshlib")
    services = {name: "static://127.0.0.1:1"} if ":" not in name else {}
    if ":" in name:  # an IPv6 literal is no valid service name: refused outright
        with pytest.raises(ConfigError):
            meshlib.MeshClient(services={name: "static://127.0.0.1:1"})
        return
    with meshlib.MeshClient(services=services):
        pass
    assert any("named like a real host" in r.getMessage() for r in caplog.records)


def test_logical_service_name_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    """'users' or 'users.internal' are logical names: no warning."""
    caplog.set_level(logging.WARNING, "meshlib")
    with meshlib.MeshClient(services={"users": "static://127.0.0.1:1",
                                      "orders.internal": "static://127.0.0.1:2"}):
        pass
    assert not [r for r in caplog.records if "real host" in r.getMessage()]


# -- credentials --------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "static://user:pw-secret@127.0.0.1:1",
    "static://127.0.0.1:2,user:pw-secret@127.0.0.1:1",
    "etcd://user:pw-secret@127.0.0.1:2379/mesh",
    "consul://user:pw-secret@127.0.0.1:8500/users",
    "dns+srv://user:pw-secret@_http._tcp.users.example",
    "nope://user:pw-secret@x",
])
def test_userinfo_in_discovery_urls_refused_without_echoing_it(url: str) -> None:
    """Userinfo is refused with a ConfigError that shows the URL with credentials redacted."""
    with pytest.raises(ConfigError) as caught:
        meshlib.MeshClient(services={"svc": url})
    message = str(caught.value)
    assert "pw-secret" not in message
    assert "***@" in message
    if not url.startswith("nope"):
        assert "userinfo" in message


def test_userinfo_in_meshlib_services_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for MESHLIB_SERVICES, including its parse errors that quote the value."""
    monkeypatch.setenv("MESHLIB_SERVICES", "svc=static://u:pw-secret@127.0.0.1:1")
    with pytest.raises(ConfigError) as caught:
        meshlib.MeshClient()
    assert "pw-secret" not in str(caught.value)
    monkeypatch.setenv("MESHLIB_SERVICES", "svc=static://u:pw-secret@127.0.0.1:1 broken")
    with pytest.raises(ConfigError) as caught:
        meshlib.MeshClient()
    assert "pw-secret" not in str(caught.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:secret@svc/x", "http://***@svc/x"),
    ("http://svc/x?token=secret&a=1", "http://svc/x?token=***&a=1"),
    ("http://svc/x?api_key=secret", "http://svc/x?api_key=***"),
    ("http://svc/x?page=2", "http://svc/x?page=2"),
    ("a=static://u:secret@h:1;b=static://h:2", "a=static://***@h:1;b=static://h:2"),
])
def test_redact_url(url: str, shown: str) -> None:
    """Userinfo and secret-looking query values are hidden; the rest is kept."""
    assert redact_url(url) == shown


def test_deadline_error_and_logs_never_show_the_password(
        backends: BackendFactory, caplog: pytest.LogCaptureFixture) -> None:
    """A request to http://user:secret@svc/x that runs out of time: 'secret' appears in no
    error message and no log record."""
    caplog.set_level(logging.DEBUG)
    b = backends(1, delay_ms=2000)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(timeout=0.2)) as client:
        with pytest.raises(httpx.TimeoutException) as caught:
            client.get("http://user:secret@svc/x")
    texts = [str(caught.value)]
    cause: BaseException | None = caught.value.__cause__ or caught.value.__context__
    while cause is not None:
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    assert "deadline" in texts[0]
    for text in texts:
        assert "secret" not in text
    for record in caplog.records:
        assert "secret" not in record.getMessage()


def test_no_endpoints_error_never_shows_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """The start-up error for an undiscovered service: no secret from the request URL."""
    caplog.set_level(logging.DEBUG)
    with meshlib.MeshClient(services={"svc": f"consul://127.0.0.1:{free_port()}/svc"},
                            policy=Policy(timeout=0.3)) as client:
        with pytest.raises(meshlib.NoEndpointsError) as caught:
            client.get("http://user:secret@svc/x")
    assert "secret" not in str(caught.value) and "s3cr3t" not in str(caught.value)
    for record in caplog.records:
        assert "secret" not in record.getMessage()
        assert "s3cr3t" not in record.getMessage()


# -- which deadline ran out ---------------------------------------------------------------

def test_deadline_error_names_policy_timeout(backends: BackendFactory) -> None:
    """No scoped deadline: the message names the policy's timeout."""
    b = backends(1, delay_ms=2000)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(timeout=0.2)) as client:
        with pytest.raises(meshlib.DeadlineExceeded,
                           match=r"\(timeout 0.2 s from Policy.timeout\)"):
            client.get("http://svc/")


def test_deadline_error_names_scoped_deadline(backends: BackendFactory) -> None:
    """A 0.3 s meshlib.deadline under a 2 s policy: the message names the 0.3 s scope."""
    b = backends(1, delay_ms=2000)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(timeout=2)) as client:
        with meshlib.deadline(0.3), pytest.raises(
                meshlib.DeadlineExceeded, match=r"\(deadline 0.3 s from meshlib.deadline\)"):
            client.get("http://svc/")


def test_policy_timeout_shorter_than_scope_is_named(backends: BackendFactory) -> None:
    """A scope longer than the policy: the policy's timeout is the one named."""
    b = backends(1, delay_ms=2000)
    with meshlib.MeshClient(services={"svc": b.static_url},
                            policy=FAST.replace(timeout=0.2)) as client:
        with meshlib.deadline(5), pytest.raises(
                meshlib.DeadlineExceeded, match=r"timeout 0.2 s from Policy.timeout"):
            client.get("http://svc/")


def test_deadline_error_names_the_incoming_header(backends: BackendFactory) -> None:
    """A 100 ms x-mesh-timeout-ms header read by the ASGI middleware is named as such."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from meshlib.asgi import MeshMiddleware
    from test_asgi import serve_asgi

    b = backends(1, delay_ms=2000)
    client = meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST.replace(timeout=2))

    def handler(request: Request) -> PlainTextResponse:
        try:
            client.get("http://svc/")
        except meshlib.DeadlineExceeded as exc:
            return PlainTextResponse(str(exc))
        return PlainTextResponse("no error")

    app = MeshMiddleware(Starlette(routes=[Route("/", handler)]))
    try:
        with serve_asgi(app) as base, httpx.Client(base_url=base, timeout=10) as http:
            text = http.get("/", headers={"x-mesh-timeout-ms": "100"}).text
            grpc = http.get("/", headers={"grpc-timeout": "100m"}).text
    finally:
        client.close()
    assert "(deadline 0.1 s from x-mesh-timeout-ms header)" in text
    assert "(deadline 0.1 s from grpc-timeout header)" in grpc


# -- scoped overrides of per-service state ------------------------------------------------

@pytest.mark.parametrize("changes", [
    {"retry_budget": RetryBudget(ratio=0.5)},
    {"breaker": Breaker(failures=1)},
    {"retries": 1, "breaker": Breaker()},
])
def test_scoped_per_service_state_is_refused(changes: dict[str, object]) -> None:
    """meshlib.policy(retry_budget=...) / (breaker=...) would be silently ignored: refused
    with a ConfigError that says why, when the scope is created."""
    with pytest.raises(ConfigError, match="cannot be scoped") as caught:
        meshlib.policy(**changes)
    assert "per service" in str(caught.value)


def test_scoped_per_request_fields_still_work(backends: BackendFactory) -> None:
    """The refusal is limited to per-service state: retries etc. stay scoped."""
    b = backends(2, status=503)
    with meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST) as client:
        with meshlib.policy(retries=0):
            assert client.get("http://svc/").extensions["meshlib"]["attempts"] == 1


def test_parse_duration_is_exported_for_cli_use() -> None:
    """parse_duration names the variable it was given."""
    with pytest.raises(ConfigError, match="X_VAR"):
        parse_duration("X_VAR", "soon")


def test_deadline_error_names_the_incoming_header_wsgi(backends: BackendFactory) -> None:
    """The same through meshlib.wsgi.MeshMiddleware under a real WSGI server."""
    from meshlib.wsgi import MeshMiddleware
    from test_wsgi import serve_wsgi

    b = backends(1, delay_ms=2000)
    client = meshlib.MeshClient(services={"svc": b.static_url}, policy=FAST.replace(timeout=2))

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        try:
            client.get("http://svc/")
            text = "no error"
        except meshlib.DeadlineExceeded as exc:
            text = str(exc)
        start_response("200 OK", [("content-type", "text/plain")])  # type: ignore[operator]
        return [text.encode()]

    try:
        with serve_wsgi(MeshMiddleware(app)) as base, \
                httpx.Client(base_url=base, timeout=10) as http:
            text = http.get("/", headers={"x-mesh-timeout-ms": "150"}).text
    finally:
        client.close()
    assert "(deadline 0.15 s from x-mesh-timeout-ms header)" in text
