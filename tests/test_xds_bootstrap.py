"""The xDS bootstrap (meshlib._xds.bootstrap) and the reconnect backoff (meshlib._xds.backoff)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshlib import ConfigError
from meshlib._xds.backoff import Backoff
from meshlib._xds.bootstrap import (
    listener_resource_name,
    load_bootstrap,
    parse_bootstrap,
    parse_xds_url,
)


def text(**changes: Any) -> str:
    body: dict[str, Any] = {
        "xds_servers": [{"server_uri": "127.0.0.1:15010", "channel_creds": [{"type": "insecure"}],
                         "server_features": ["xds_v3", "ignore_resource_deletion"]}],
        "node": {"id": "sidecar~10.0.0.1~users-1.shop~shop.svc.cluster.local",
                 "cluster": "users", "metadata": {"ISTIO_VERSION": "1.24", "n": 2.5,
                                                  "labels": {"app": "users"}},
                 "locality": {"region": "eu", "zone": "eu-1a"}},
    }
    body.update(changes)
    return json.dumps(body)


def test_parse_gives_the_server_and_the_node_as_written() -> None:
    """server_uri, creds, features; node id, cluster, metadata and locality unchanged."""
    bootstrap = parse_bootstrap(text())
    assert bootstrap.server.server_uri == "127.0.0.1:15010"
    assert bootstrap.server.creds == "insecure"
    assert bootstrap.server.ignore_resource_deletion
    assert bootstrap.node.id == "sidecar~10.0.0.1~users-1.shop~shop.svc.cluster.local"
    assert dict(bootstrap.node.metadata) == {"ISTIO_VERSION": "1.24", "n": 2.5,
                                             "labels": {"app": "users"}}
    assert dict(bootstrap.node.locality) == {"region": "eu", "zone": "eu-1a"}


def test_precedence_of_the_variables(tmp_path: Path) -> None:
    """MESHLIB_XDS_BOOTSTRAP wins, then GRPC_XDS_BOOTSTRAP, then GRPC_XDS_BOOTSTRAP_CONFIG."""
    grpc_file = tmp_path / "grpc.json"
    grpc_file.write_text(text(node={"id": "from-grpc-file"}))
    env = {"GRPC_XDS_BOOTSTRAP": str(grpc_file),
           "GRPC_XDS_BOOTSTRAP_CONFIG": text(node={"id": "from-grpc-config"})}
    assert load_bootstrap(env).node.id == "from-grpc-file"
    assert load_bootstrap({"GRPC_XDS_BOOTSTRAP_CONFIG": env["GRPC_XDS_BOOTSTRAP_CONFIG"]}
                          ).node.id == "from-grpc-config"
    inline = "  " + text(node={"id": "from-meshlib-inline"})
    assert load_bootstrap({**env, "MESHLIB_XDS_BOOTSTRAP": inline}).node.id == \
        "from-meshlib-inline"
    meshlib_file = tmp_path / "meshlib.json"
    meshlib_file.write_text(text(node={"id": "from-meshlib-file"}))
    bootstrap = load_bootstrap({**env, "MESHLIB_XDS_BOOTSTRAP": str(meshlib_file)})
    assert bootstrap.node.id == "from-meshlib-file"
    assert bootstrap.source == f"MESHLIB_XDS_BOOTSTRAP={meshlib_file}"


def test_missing_or_unreadable_bootstraps_name_the_variable(tmp_path: Path) -> None:
    """No variable, a missing file, or bad JSON: a ConfigError naming where."""
    with pytest.raises(ConfigError, match="no xDS bootstrap: set MESHLIB_XDS_BOOTSTRAP"):
        load_bootstrap({})
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=f"GRPC_XDS_BOOTSTRAP={missing}: cannot read"):
        load_bootstrap({"GRPC_XDS_BOOTSTRAP": str(missing)})
    secret = '{"xds_servers": [{"server_uri": "x", "token": "s3cr3t"'
    with pytest.raises(ConfigError, match="GRPC_XDS_BOOTSTRAP_CONFIG: the bootstrap is not "
                                          "valid JSON") as info:
        load_bootstrap({"GRPC_XDS_BOOTSTRAP_CONFIG": secret})
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"xds_servers": []}, "xds_servers is empty"),
    ({"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]},
     "xds_servers[0].server_uri must be a non-empty string"),
    ({"xds_servers": [{"server_uri": "x"}]}, "channel_creds must be a non-empty list"),
    ({"xds_servers": [{"server_uri": "x", "channel_creds": [{"type": "google_default"},
                                                            {"type": "insecure"}]}]},
     "channel_creds[0].type is 'google_default', which meshlib cannot honour"),
    ({"xds_servers": [{"server_uri": "x", "channel_creds": [{"type": "spiffe-magic"}]}]},
     "has no type meshlib supports (found 'spiffe-magic'"),
    ({"xds_servers": [{"server_uri": "x", "channel_creds": [
        {"type": "tls", "config": {"ca_certificate_file": "/nonexistent/ca.pem"}}]}]},
     "ca_certificate_file '/nonexistent/ca.pem' cannot be read"),
    ({"node": {"id": 5}}, "node.id must be a string"),
    ({"node": {"locality": {"planet": "mars"}}}, "node.locality must be an object of strings"),
])
def test_bad_bootstraps_name_the_field(changes: dict[str, Any], reason: str) -> None:
    """Each problem is a ConfigError naming the source and the field."""
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(text(**changes), source="GRPC_XDS_BOOTSTRAP=/etc/istio/bootstrap.json")
    assert str(info.value).startswith("GRPC_XDS_BOOTSTRAP=/etc/istio/bootstrap.json: ")
    assert reason in str(info.value)


def test_unknown_creds_types_are_skipped_as_grpc_does() -> None:
    """A creds type gRPC does not define is skipped; the next known one is used."""
    bootstrap = parse_bootstrap(text(xds_servers=[{"server_uri": "x", "channel_creds": [
        {"type": "spiffe-magic"}, {"type": "insecure"}]}]))
    assert bootstrap.server.creds == "insecure"


def test_tls_creds_with_a_ca_file(tmp_path: Path) -> None:
    """tls with ca_certificate_file (and a client certificate) as Istio's injection writes."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    config = {"ca_certificate_file": str(tmp_path / "ca.pem"),
              "certificate_file": str(tmp_path / "cert.pem"),
              "private_key_file": str(tmp_path / "key.pem")}
    server = parse_bootstrap(text(xds_servers=[{"server_uri": "istiod:15012", "channel_creds": [
        {"type": "tls", "config": config}]}])).server
    assert (server.creds, server.ca_certificate_file) == ("tls", str(tmp_path / "ca.pem"))
    del config["private_key_file"]
    with pytest.raises(ConfigError, match="both certificate_file and private_key_file"):
        parse_bootstrap(text(xds_servers=[{"server_uri": "x", "channel_creds": [
            {"type": "tls", "config": config}]}]))


def test_xds_urls_and_listener_names() -> None:
    """xds:///TARGET names the listener TARGET; templates and authorities apply (A47)."""
    assert parse_xds_url("xds:///users.shop.svc.cluster.local:80") == (
        None, "users.shop.svc.cluster.local:80")
    with pytest.raises(ConfigError, match="expected xds:///TARGET"):
        parse_xds_url("xds://")
    bootstrap = parse_bootstrap(text(
        client_default_listener_resource_name_template="xdstp://td/envoy.config.listener.v3."
                                                       "Listener/%s",
        authorities={"other": {}}))
    assert listener_resource_name(bootstrap, "users:80") == \
        "xdstp://td/envoy.config.listener.v3.Listener/users:80"
    assert listener_resource_name(bootstrap, "a b", "other") == \
        "xdstp://other/envoy.config.listener.v3.Listener/a%20b"
    with pytest.raises(ConfigError, match="authority 'nope' is not among"):
        listener_resource_name(bootstrap, "users", "nope")
    assert listener_resource_name(parse_bootstrap(text()), "users:80") == "users:80"


def test_backoff_grows_with_jitter_is_capped_and_resets() -> None:
    """Exponential (x1.6) with +/-20% jitter, capped; succeeded() and a long gap reset it."""
    backoff = Backoff(base=1.0, cap=5.0, rng=lambda: 0.5)  # no jitter at 0.5
    assert [backoff.failed(float(t)) for t in range(5)] == pytest.approx(
        [1.0, 1.6, 2.56, 4.096, 5.0])
    backoff.succeeded()
    assert backoff.failed(10.0) == 1.0
    assert backoff.failed(11.0) == pytest.approx(1.6)
    assert backoff.failed(100.0) == 1.0  # long after the previous failure
    low, high = Backoff(rng=lambda: 0.0), Backoff(rng=lambda: 1.0)
    assert (low.failed(0), high.failed(0)) == pytest.approx((0.8, 1.2))
