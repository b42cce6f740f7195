"""The xDS bootstrap: which control plane to talk to, and who this client is.

The format is gRPC's (gRFC A27, with A47's federation fields and A65's
`tls` credentials), so the bootstrap files that Istio's proxyless injection
and Traffic Director's setup write work unchanged:

```
{
  "xds_servers": [{"server_uri": "127.0.0.1:15010",
                   "channel_creds": [{"type": "insecure"}],
                   "server_features": ["xds_v3"]}],
  "node": {"id": "sidecar~10.0.0.1~users-1.shop~shop.svc.cluster.local",
           "cluster": "users", "metadata": {"ISTIO_VERSION": "1.24"},
           "locality": {"region": "eu", "zone": "eu-1a"}}
}
```

Where it comes from, first found wins:

1. `MESHLIB_XDS_BOOTSTRAP`: a file path, or the JSON itself when the value
   starts with `{` (after leading white space);
2. `GRPC_XDS_BOOTSTRAP`: a file path (gRPC's variable);
3. `GRPC_XDS_BOOTSTRAP_CONFIG`: the JSON itself (gRPC's variable).

Only the first of `xds_servers` is used. Its `channel_creds` are tried in
order, as gRPC does: the first entry of a type meshlib knows decides.
`insecure` and `tls` (A65: `ca_certificate_file`, and
`certificate_file` with `private_key_file` for a client certificate) are
honoured; a type gRPC defines that meshlib cannot honour (`google_default`)
is a `ConfigError` rather than a silent downgrade; types
unknown to gRPC too are skipped. The node's `id`, `cluster`, `metadata`
and `locality` are sent exactly as given. `certificate_providers` and
`server_listener_resource_name_template` are read and kept (for status
and for xdstp:// names) but not used: meshlib does not implement xDS
credentials or server-side listeners.

Errors name the variable (and file), and the field; they never quote file
contents, which may hold tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote

from .._errors import ConfigError

__all__ = [
    "BOOTSTRAP_VARIABLES",
    "Authority",
    "Bootstrap",
    "NodeInfo",
    "ServerConfig",
    "listener_resource_name",
    "load_bootstrap",
    "parse_bootstrap",
    "parse_xds_url",
]

#: the variables read, in order of precedence
BOOTSTRAP_VARIABLES = ("MESHLIB_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG")

#: channel credential types gRPC defines; of these meshlib honours insecure and tls
_GRPC_CREDS = frozenset({"insecure", "tls", "google_default", "xds"})

#: a bootstrap larger than this is refused (real ones are a few KiB)
MAX_BOOTSTRAP_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One entry of `xds_servers`: where the control plane is and how to connect.

    `creds` is `insecure` or `tls`. For `tls`, `ca_certificate_file`
    (`None`: the system's roots) verifies the server; `certificate_file`
    and `private_key_file` (both or neither) are the client's certificate.
    `server_features` as given (`xds_v3`, `ignore_resource_deletion`...).
    """

    server_uri: str
    creds: Literal["insecure", "tls"] = "insecure"
    ca_certificate_file: str | None = None
    certificate_file: str | None = None
    private_key_file: str | None = None
    server_features: tuple[str, ...] = ()

    @property
    def ignore_resource_deletion(self) -> bool:
        """Whether LDS/CDS resources missing from a response are kept (gRFC A53)."""
        return "ignore_resource_deletion" in self.server_features


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The `node` this client presents: `id`, `cluster`, `metadata` (a JSON
    object, sent as a `google.protobuf.Struct`) and `locality` (`region`,
    `zone`, `sub_zone`), all exactly as the bootstrap gives them."""

    id: str = ""
    cluster: str = ""
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    locality: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Authority:
    """An entry of `authorities` (gRFC A47): its listener name template and servers."""

    client_listener_resource_name_template: str
    servers: tuple[ServerConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A parsed bootstrap. `source` says where it came from (`GRPC_XDS_BOOTSTRAP=/path`),
    for messages."""

    servers: tuple[ServerConfig, ...]
    node: NodeInfo
    source: str = "bootstrap"
    certificate_providers: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}))
    server_listener_resource_name_template: str | None = None
    client_default_listener_resource_name_template: str = "%s"
    authorities: Mapping[str, Authority] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def server(self) -> ServerConfig:
        """The control plane meshlib talks to: the first of `xds_servers`."""
        return self.servers[0]


def load_bootstrap(environ: Mapping[str, str] | None = None) -> Bootstrap:
    """The bootstrap the environment names (see the module docstring for the order).

    Raises `ConfigError` when no variable is set, or the one
    that wins cannot be read or is not a valid bootstrap.
    """
    env = os.environ if environ is None else environ
    for variable in BOOTSTRAP_VARIABLES:
        value = env.get(variable, "")
        if not value.strip():
            continue
        inline = variable == "GRPC_XDS_BOOTSTRAP_CONFIG" or (
            variable == "MESHLIB_XDS_BOOTSTRAP" and value.lstrip().startswith("{"))
        if inline:
            return parse_bootstrap(value, source=variable)
        source = f"{variable}={value}"
        path = Path(value)
        try:
            if path.stat().st_size > MAX_BOOTSTRAP_BYTES:
                raise ConfigError(f"{source}: the file is larger than "
                                  f"{MAX_BOOTSTRAP_BYTES // 1024} KiB")
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the bootstrap file: "
                              f"{exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: the bootstrap file is not UTF-8 text") from None
        return parse_bootstrap(text, source=source)
    raise ConfigError("no xDS bootstrap: set MESHLIB_XDS_BOOTSTRAP (a file, or the JSON), "
                      "GRPC_XDS_BOOTSTRAP (a file) or GRPC_XDS_BOOTSTRAP_CONFIG (the JSON)")


def parse_bootstrap(text: str, *, source: str = "bootstrap") -> Bootstrap:
    """A `Bootstrap` from its JSON text; `source` names it in errors.

    Raises `ConfigError` naming `source` and the field.
    """
    if len(text) > MAX_BOOTSTRAP_BYTES:
        raise ConfigError(f"{source}: the bootstrap is larger than "
                          f"{MAX_BOOTSTRAP_BYTES // 1024} KiB")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(
            exc, json.JSONDecodeError) else ""
        raise ConfigError(f"{source}: the bootstrap is not valid JSON{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the bootstrap must be a JSON object")
    servers = _servers(raw.get("xds_servers"), source, "xds_servers")
    if not servers:
        raise ConfigError(f"{source}: xds_servers is empty (name the control plane's "
                          "server_uri there)")
    node = _node(raw.get("node"), source)
    providers = raw.get("certificate_providers") or {}
    if not isinstance(providers, dict):
        raise ConfigError(f"{source}: certificate_providers must be an object")
    server_template = raw.get("server_listener_resource_name_template")
    if server_template is not None and not isinstance(server_template, str):
        raise ConfigError(f"{source}: server_listener_resource_name_template must be a string")
    client_template = raw.get("client_default_listener_resource_name_template", "%s")
    if not isinstance(client_template, str) or not client_template:
        raise ConfigError(f"{source}: client_default_listener_resource_name_template must be "
                          "a non-empty string")
    authorities = {}
    raw_authorities = raw.get("authorities") or {}
    if not isinstance(raw_authorities, dict):
        raise ConfigError(f"{source}: authorities must be an object")
    for name, entry in raw_authorities.items():
        what = f"authorities[{name!r}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: {what} must be an object")
        template = entry.get("client_listener_resource_name_template",
                             f"xdstp://{name}/envoy.config.listener.v3.Listener/%s")
        if not isinstance(template, str) or not template.startswith(f"xdstp://{name}/"):
            raise ConfigError(f"{source}: {what}.client_listener_resource_name_template must "
                              f"start with 'xdstp://{name}/'")
        authorities[name] = Authority(template, _servers(entry.get("xds_servers"), source,
                                                         f"{what}.xds_servers"))
    return Bootstrap(
        servers=servers, node=node, source=source,
        certificate_providers=MappingProxyType(dict(providers)),
        server_listener_resource_name_template=server_template,
        client_default_listener_resource_name_template=client_template,
        authorities=MappingProxyType(authorities),
    )


def _servers(raw: Any, source: str, what: str) -> tuple[ServerConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: {what} must be a list")
    return tuple(_server(entry, source, f"{what}[{i}]") for i, entry in enumerate(raw))


def _server(raw: Any, source: str, what: str) -> ServerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {what} must be an object")
    uri = raw.get("server_uri")
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"{source}: {what}.server_uri must be a non-empty string "
                          "(host:port, dns:///host:port or unix:///path)")
    features = raw.get("server_features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ConfigError(f"{source}: {what}.server_features must be a list of strings")
    creds = raw.get("channel_creds")
    if not isinstance(creds, list) or not creds:
        raise ConfigError(f"{source}: {what}.channel_creds must be a non-empty list "
                          '(e.g. [{"type": "insecure"}])')
    seen = []
    for index, entry in enumerate(creds):
        where = f"{what}.channel_creds[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"{source}: {where} must be an object with a string 'type'")
        kind = entry["type"]
        seen.append(kind)
        if kind not in _GRPC_CREDS:
            continue  # as gRPC: a type it does not know is skipped
        if kind == "insecure":
            return ServerConfig(uri.strip(), "insecure", server_features=tuple(features))
        if kind == "tls":
            return _tls(entry.get("config") or {}, uri.strip(), tuple(features), source, where)
        raise ConfigError(f"{source}: {where}.type is {kind!r}, which meshlib cannot honour "
                          "(it supports 'insecure' and 'tls')")
    raise ConfigError(f"{source}: {what}.channel_creds has no type meshlib supports "
                      f"(found {', '.join(map(repr, seen))}; meshlib supports 'insecure' "
                      "and 'tls')")


def _tls(config: Any, uri: str, features: tuple[str, ...], source: str,
         where: str) -> ServerConfig:
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: {where}.config must be an object")
    files: dict[str, str | None] = {}
    for key in ("ca_certificate_file", "certificate_file", "private_key_file"):
        value = config.get(key)
        if value is None:
            files[key] = None
            continue
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: {where}.config.{key} must be a file path")
        if not os.access(value, os.R_OK):
            raise ConfigError(f"{source}: {where}.config.{key} {value!r} cannot be read")
        files[key] = value
    if (files["certificate_file"] is None) != (files["private_key_file"] is None):
        raise ConfigError(f"{source}: {where}.config needs both certificate_file and "
                          "private_key_file, or neither")
    return ServerConfig(uri, "tls", files["ca_certificate_file"], files["certificate_file"],
                        files["private_key_file"], features)


def _node(raw: Any, source: str) -> NodeInfo:
    if raw is None:
        return NodeInfo()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: node must be an object")
    for key in ("id", "cluster"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{source}: node.{key} must be a string")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ConfigError(f"{source}: node.metadata must be an object")
    locality = raw.get("locality") or {}
    if not isinstance(locality, dict) or not all(
            k in ("region", "zone", "sub_zone") and isinstance(v, str)
            for k, v in locality.items()):
        raise ConfigError(f"{source}: node.locality must be an object of strings "
                          "(region, zone, sub_zone)")
    return NodeInfo(raw.get("id", ""), raw.get("cluster", ""), MappingProxyType(metadata),
                    MappingProxyType(locality))


def parse_xds_url(url: str) -> tuple[str | None, str]:
    """`(authority, target)` of `xds:///TARGET` or `xds://AUTHORITY/TARGET`.

    Raises `ConfigError` for another scheme or an empty target.
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "xds" or not sep:
        raise ConfigError(f"discovery URL {url!r} is not an xds:// URL")
    authority, slash, target = rest.partition("/")
    if not slash or not target or any(c in target for c in "?#"):
        raise ConfigError(f"discovery URL {url!r}: expected xds:///TARGET "
                          "(e.g. xds:///users.shop.svc.cluster.local:80)")
    return authority or None, target


def listener_resource_name(bootstrap: Bootstrap, target: str,
                           authority: str | None = None) -> str:
    """The Listener name to subscribe to for `target` (gRFC A47's templates).

    Without an authority, `client_default_listener_resource_name_template`
    (default `%s`) gives it; an `xdstp://` template gets the target
    percent-encoded. An authority must be one of the bootstrap's
    `authorities`; meshlib talks to one control plane, so an authority with
    servers of its own (other than the top-level one) is a
    `ConfigError`.
    """
    if authority is None:
        template = bootstrap.client_default_listener_resource_name_template
    else:
        entry = bootstrap.authorities.get(authority)
        if entry is None:
            raise ConfigError(f"{bootstrap.source}: authority {authority!r} is not among the "
                              "bootstrap's authorities")
        if entry.servers and entry.servers[0].server_uri != bootstrap.server.server_uri:
            raise ConfigError(f"{bootstrap.source}: authority {authority!r} names its own "
                              "xds_servers; meshlib talks to one control plane")
        template = entry.client_listener_resource_name_template
    if template.startswith("xdstp:"):
        return template.replace("%s", quote(target, safe="/:@!$&'()*+,;="))
    return template.replace("%s", target)
