"""xDS messages in a private descriptor pool (meshlib._xds.messages), and import hygiene."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("google.protobuf")

from meshlib._xds import messages


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _unknown(number: int, payload: bytes) -> bytes:
    """A length-delimited field ``number`` holding ``payload`` (wire type 2)."""
    tag, key = (number << 3) | 2, b""
    while True:
        byte = tag & 0x7F
        tag >>= 7
        key += bytes([byte | (0x80 if tag else 0)])
        if not tag:
            break
    return key + bytes([len(payload)]) + payload


def test_a_cluster_round_trips_byte_for_byte_with_unknown_fields() -> None:
    """Decoding and re-encoding keeps every byte, fields unknown to meshlib included
    (at the top and inside a nested message), and Any payloads of unknown types."""
    cluster = messages.from_dict({
        "name": "users", "type": "EDS", "connect_timeout": "0.25s", "lb_policy": "LEAST_REQUEST",
        "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": "users-eds"},
        "circuit_breakers": {"thresholds": [{"max_requests": 100}]},
        "metadata": {"filter_metadata": {"istio": {"config": "/apis/v1/users"}}},
    }, "envoy.config.cluster.v3.Cluster")
    outlier = messages.message_class("envoy.config.cluster.v3.OutlierDetection")()
    outlier.consecutive_5xx.value = 3
    outlier.MergeFromString(_unknown(900, b"from the future"))
    cluster.outlier_detection.CopyFrom(outlier)
    socket = cluster.transport_socket
    socket.name = "envoy.transport_sockets.tls"
    socket.typed_config.type_url = ("type.googleapis.com/envoy.extensions.transport_sockets."
                                    "tls.v3.UpstreamTlsContext")
    socket.typed_config.value = b"\x0a\x03abc"
    data = cluster.SerializeToString(deterministic=True) + _unknown(1000, b"\x08\x01")
    decoded = messages.Cluster.FromString(data)
    assert decoded.name == "users" and decoded.outlier_detection.consecutive_5xx.value == 3
    assert decoded.SerializeToString(deterministic=True) == data


def test_json_format_resolves_any_types_in_the_private_pool() -> None:
    """A listener in Envoy's JSON form (HttpConnectionManager and Router inside Any)
    converts both ways."""
    body = {"name": "users:80", "apiListener": {"apiListener": {
        "@type": messages.HCM,
        "rds": {"configSource": {"ads": {}}, "routeConfigName": "rc"},
        "httpFilters": [{"name": "router", "typedConfig": {"@type": messages.ROUTER}}]}}}
    listener = messages.from_dict(body, "envoy.config.listener.v3.Listener")
    assert listener.api_listener.api_listener.type_url == messages.HCM
    assert messages.to_dict(listener) == body


def test_importing_meshlib_imports_no_grpc_and_no_protobuf() -> None:
    """``import meshlib`` (and meshlib.testing) loads nothing of grpcio or protobuf."""
    out = _run("""
        import sys, meshlib, meshlib.testing
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "google")))
    """)
    assert out.strip() == "[]"


def test_messages_register_nothing_in_protobufs_default_pool() -> None:
    """meshlib._xds.messages leaves protobuf's default pool without any xDS file, and
    imports no grpcio."""
    out = _run("""
        import sys
        from google.protobuf import descriptor_pool
        from meshlib._xds import messages
        assert messages.Cluster.DESCRIPTOR.full_name == "envoy.config.cluster.v3.Cluster"
        default = descriptor_pool.Default()
        for name in ("envoy/config/cluster/v3/cluster.proto", "validate/validate.proto",
                     "udpa/annotations/status.proto", "google/rpc/status.proto"):
            try:
                default.FindFileByName(name)
            except KeyError:
                continue
            print("registered", name)
        print(sorted(m for m in sys.modules if m.split(".")[0] == "grpc"))
    """)
    assert out.strip() == "[]"


def test_another_package_registering_the_same_files_does_not_conflict() -> None:
    """Files of the same names in the default pool (as xds-protos or generated stubs
    register them) coexist with meshlib's private copies, before or after."""
    out = _run("""
        from google.protobuf import descriptor_pb2, descriptor_pool
        from importlib import resources
        data = resources.files("meshlib._xds").joinpath("descriptors.bin").read_bytes()
        files = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(data).file}
        default = descriptor_pool.Default()
        # the xDS annotations' own imports are well-known types, already in the default pool
        for name in ("udpa/annotations/status.proto",):
            default.Add(files[name])
        from meshlib._xds import messages
        print(messages.POOL.FindFileByName("udpa/annotations/status.proto").name)
    """)
    assert out.strip() == "udpa/annotations/status.proto"


def test_without_the_extra_the_client_is_a_config_error_naming_it() -> None:
    """Without grpcio, load_client() raises ConfigError naming the xds extra."""
    out = _run("""
        import sys
        sys.modules["grpc"] = None  # as if grpcio were not installed
        from meshlib import ConfigError
        from meshlib._xds import load_client
        try:
            load_client()
        except ConfigError as exc:
            print(exc)
    """)
    assert out.startswith('xds:// needs the xds extra (pip install "httpx-mesh[xds]")')
