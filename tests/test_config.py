"""MESHLIB_* environment variables: parsing, precedence, errors naming variable and value."""

from __future__ import annotations

import pytest

import meshlib
from meshlib import ConfigError, Hedge
from meshlib._config import parse_host_port, parse_services, read_env


def test_services_are_name_equals_url_pairs_split_by_space_or_semicolon() -> None:
    """MESHLIB_SERVICES takes whitespace or ';' between pairs."""
    assert parse_services("a=static://127.0.0.1:1; b=dns://b.test:80\n c=static://[::1]:2") == {
        "a": "static://127.0.0.1:1", "b": "dns://b.test:80", "c": "static://[::1]:2"}


def test_policy_fields_come_from_the_environment() -> None:
    """Every documented variable sets its policy field."""
    env = read_env({
        "MESHLIB_TIMEOUT": "2.5", "MESHLIB_ATTEMPT_TIMEOUT": "0.5", "MESHLIB_RETRIES": "4",
        "MESHLIB_BALANCER": "round-robin", "MESHLIB_RETRY_BUDGET_RATIO": "0.5",
        "MESHLIB_BREAKER_FAILURES": "7", "MESHLIB_BREAKER_RESET_TIMEOUT": "3",
        "MESHLIB_HEDGE_DELAY": "p95", "MESHLIB_DNS_NAMESERVER": "127.0.0.1:5353",
        "MESHLIB_ZONE": "eu-1",
    })
    policy = env.policy
    assert (policy.timeout, policy.attempt_timeout, policy.retries) == (2.5, 0.5, 4)
    assert policy.balancer == "round-robin"
    assert policy.retry_budget.ratio == 0.5
    assert (policy.breaker.failures, policy.breaker.reset_timeout) == (7, 3.0)
    assert policy.hedge == Hedge(delay="p95")
    assert env.dns_nameserver == ("127.0.0.1", 5353)
    assert env.zone == "eu-1"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MESHLIB_TIMEOUT", "soon"),
        ("MESHLIB_TIMEOUT", "-1"),
        ("MESHLIB_ATTEMPT_TIMEOUT", "nan"),
        ("MESHLIB_RETRIES", "two"),
        ("MESHLIB_BALANCER", "fastest"),
        ("MESHLIB_RETRY_BUDGET_RATIO", "x"),
        ("MESHLIB_RETRY_BUDGET_RATIO", "5000"),
        ("MESHLIB_BREAKER_FAILURES", "0"),
        ("MESHLIB_BREAKER_RESET_TIMEOUT", "inf"),
        ("MESHLIB_HEDGE_DELAY", "later"),
        ("MESHLIB_DNS_NAMESERVER", "[::1"),
        ("MESHLIB_DNS_NAMESERVER", "x y:53"),
        ("MESHLIB_SERVICES", "a=static://127.0.0.1:1 A=static://127.0.0.1:2"),
        ("MESHLIB_SERVICES", "users"),
        ("MESHLIB_SERVICES", "users=nowhere"),
        ("MESHLIB_SERVICES", "users=bogus://x"),
        ("MESHLIB_SERVICES", "users=static://127.0.0.1:notaport"),
    ],
)
def test_bad_variable_raises_config_error_naming_it_and_its_value(
        monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    """Building a client with a bad variable raises ConfigError naming both."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        meshlib.MeshClient()
    assert var in str(info.value)
    assert value.split("=")[-1] in str(info.value)


def test_bad_variable_raises_even_when_explicit_arguments_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit services and policy do not hide an invalid MESHLIB_* value."""
    monkeypatch.setenv("MESHLIB_RETRIES", "many")
    with pytest.raises(ConfigError, match="MESHLIB_RETRIES"):
        meshlib.MeshClient(services={"a": "static://127.0.0.1:1"}, policy=meshlib.Policy())


def test_explicit_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """services= and policy= win over MESHLIB_SERVICES and MESHLIB_* policy fields."""
    monkeypatch.setenv("MESHLIB_SERVICES", "envsvc=static://127.0.0.1:1")
    monkeypatch.setenv("MESHLIB_RETRIES", "7")
    with meshlib.MeshClient() as client:
        snap = client.snapshot()["services"]
        assert list(snap) == ["envsvc"]
        assert client.mesh_transport.mesh.policy.retries == 7
    with meshlib.MeshClient(services={"mine": "static://127.0.0.1:2"},
                            policy=meshlib.Policy(retries=1)) as client:
        assert list(client.snapshot()["services"]) == ["mine"]
        assert client.mesh_transport.mesh.policy.retries == 1


def test_bad_discovery_url_names_the_url() -> None:
    """A malformed discovery URL raises ConfigError naming it when the client is built."""
    for url in ["static://", "static://host", "static://h:99999", "gopher://x", "nourl"]:
        with pytest.raises(ConfigError, match="'" + url.replace("/", "/")):
            meshlib.MeshClient(services={"a": url})


def test_host_port_parsing_handles_ipv6() -> None:
    """IPv6 endpoints are written [::1]:8001."""
    assert parse_host_port("[::1]:8001", what="x") == ("::1", 8001)
    assert parse_host_port("127.0.0.1", what="x", default_port=53) == ("127.0.0.1", 53)
    with pytest.raises(ConfigError, match="IPv6"):
        parse_host_port("::1:80", what="x")


def test_host_port_with_a_non_ascii_digit_is_a_config_error() -> None:
    """'²' is a digit to str.isdigit() but not to int(): ConfigError, not ValueError."""
    with pytest.raises(ConfigError, match="bad port"):
        parse_host_port("host:\u00b2", what="x")


def test_bad_services_variable_raises_even_when_services_are_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed MESHLIB_SERVICES URL is reported though services= overrides it."""
    monkeypatch.setenv("MESHLIB_SERVICES", "users=static://")
    with pytest.raises(ConfigError, match="MESHLIB_SERVICES"):
        meshlib.MeshClient(services={"a": "static://127.0.0.1:1"})


@pytest.mark.parametrize("services", [
    {"svc": "static://127.0.0.1:1", "SVC": "static://127.0.0.1:2"},
    {"my service": "static://127.0.0.1:1"},
    {"": "static://127.0.0.1:1"},
])
def test_bad_service_names_are_config_errors(services: dict[str, str]) -> None:
    """Names differing only in case, or that are not host names, are refused."""
    with pytest.raises(ConfigError, match="service"):
        meshlib.MeshClient(services=services)


SECRET = "s3cret"


@pytest.mark.parametrize(("environ", "services", "named"), [
    ({"MESHLIB_K8S_API": f"http://admin:{SECRET}@127.0.0.1:8001"}, {}, "MESHLIB_K8S_API"),
    ({"MESHLIB_K8S_API": f"https://admin:{SECRET}@127.0.0.1:99999"}, {}, "MESHLIB_K8S_API"),
    ({"MESHLIB_K8S_API": f"ftp://admin:{SECRET}@k8s.test"}, {}, "MESHLIB_K8S_API"),
    ({"MESHLIB_K8S_API": f"https://{SECRET}@k8s.test"}, {}, "MESHLIB_K8S_API"),
    ({}, {"users": f"consul://127.0.0.1:8500/users?token={SECRET}"}, "consul://"),
    ({"MESHLIB_SERVICES": f"users=consul://127.0.0.1:8500/users?dc=a&token={SECRET}"}, None,
     "MESHLIB_SERVICES"),
    ({}, {"users": f"etcd://admin:{SECRET}@127.0.0.1:2379/mesh/users"}, "etcd://"),
])
def test_no_configuration_error_shows_a_secret(environ: dict[str, str],
                                               services: dict[str, str] | None,
                                               named: str) -> None:
    """A password or token in a bad setting is never echoed: the error names the
    setting and shows the rest of the value, with the secret as ***."""
    with pytest.raises(ConfigError) as info:
        meshlib.MeshClient(services=services, environ=environ)
    message = str(info.value)
    assert SECRET not in message
    assert named in message
    assert "***" in message


def test_config_error_redacts_what_it_quotes() -> None:
    """Whatever code raises it, a ConfigError's message hides URL credentials."""
    error = ConfigError(f"bad 'http://u:{SECRET}@h:1/x?token={SECRET}&a=1'")
    assert SECRET not in str(error)
    assert "http://***@h:1/x?token=***&a=1" in str(error)
