"""xDS protobuf messages, built in a private descriptor pool.

The message definitions are upstream's (Envoy's data-plane-api, cncf/xds,
protoc-gen-validate, googleapis), compiled by `scripts/xds_protos.py` into
`descriptors.bin` beside this module. They are loaded into a
`DescriptorPool` of meshlib's own, never
protobuf's default pool, so that meshlib can share a process with any other
package that generated the same files (`xds-protos`, a service's own stubs,
OpenTelemetry's protos) without "duplicate file name" errors either way. Type
URLs stay upstream's (`type.googleapis.com/envoy.config.listener.v3.Listener`).

Unknown fields are kept (protobuf's default): a resource from a newer control
plane decodes, and encodes back to the same bytes.

The well-known types (Any, Duration, Struct, wrappers...) are the installed
protobuf's, added to the private pool first, so `google.protobuf.json_format`
resolves every `@type` it meets through `POOL`.

Message classes are typed `Any` here: protobuf's dynamic classes have no
static attribute types (decoding code validates what it reads instead).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)

__all__ = [
    "ADS_METHOD",
    "ADS_SERVICE",
    "CLUSTER",
    "ENDPOINT",
    "HCM",
    "LISTENER",
    "POOL",
    "RESOURCE_WRAPPER",
    "ROUTE",
    "ROUTER",
    "TYPE_PREFIX",
    "AnyMessage",
    "Cluster",
    "ClusterLoadAssignment",
    "DiscoveryRequest",
    "DiscoveryResponse",
    "HttpConnectionManager",
    "Listener",
    "Resource",
    "RouteConfiguration",
    "Router",
    "Status",
    "from_dict",
    "message_class",
    "serialize",
    "to_dict",
    "type_url",
]

#: what every type URL starts with
TYPE_PREFIX = "type.googleapis.com/"

#: the ADS service and its state-of-the-world method (the gRPC path is /SERVICE/METHOD)
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ADS_METHOD = f"/{ADS_SERVICE}/StreamAggregatedResources"

_WELL_KNOWN = (descriptor_pb2, any_pb2, duration_pb2, empty_pb2, struct_pb2, timestamp_pb2,
               wrappers_pb2)


def _load() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in _WELL_KNOWN:
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    data = resources.files(__package__).joinpath("descriptors.bin").read_bytes()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return pool


#: meshlib's private pool: every xDS message meshlib knows, and the well-known types
POOL = _load()


def message_class(full_name: str) -> Any:
    """The message class of `full_name` (`envoy.config.cluster.v3.Cluster`) in `POOL`.

    Raises `KeyError` for a name the pool does not hold.
    """
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


def type_url(full_name: str) -> str:
    """`type.googleapis.com/` + `full_name`."""
    return TYPE_PREFIX + full_name


def from_dict(value: dict[str, Any], full_name: str) -> Any:
    """A message of type `full_name` from its protobuf JSON form (Envoy's config JSON).

    `@type` inside `Any` fields is resolved in `POOL`. Unknown field
    names raise `google.protobuf.json_format.ParseError`.
    """
    message = message_class(full_name)()
    json_format.ParseDict(value, message, descriptor_pool=POOL)
    return message


def serialize(message: Any) -> bytes:
    """`message`'s wire bytes (the serializer handed to grpcio)."""
    data: bytes = message.SerializeToString()
    return data


def to_dict(message: Any) -> dict[str, Any]:
    """The protobuf JSON form of `message` (field names in lowerCamelCase, as Envoy prints)."""
    result: dict[str, Any] = json_format.MessageToDict(message, descriptor_pool=POOL)
    return result


AnyMessage = message_class("google.protobuf.Any")
DiscoveryRequest = message_class("envoy.service.discovery.v3.DiscoveryRequest")
DiscoveryResponse = message_class("envoy.service.discovery.v3.DiscoveryResponse")
Resource = message_class("envoy.service.discovery.v3.Resource")
Status = message_class("google.rpc.Status")
Listener = message_class("envoy.config.listener.v3.Listener")
HttpConnectionManager = message_class(
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
Router = message_class("envoy.extensions.filters.http.router.v3.Router")
RouteConfiguration = message_class("envoy.config.route.v3.RouteConfiguration")
Cluster = message_class("envoy.config.cluster.v3.Cluster")
ClusterLoadAssignment = message_class("envoy.config.endpoint.v3.ClusterLoadAssignment")

#: the type URLs of the four resource types meshlib subscribes to, and of the wrappers
LISTENER = type_url("envoy.config.listener.v3.Listener")
ROUTE = type_url("envoy.config.route.v3.RouteConfiguration")
CLUSTER = type_url("envoy.config.cluster.v3.Cluster")
ENDPOINT = type_url("envoy.config.endpoint.v3.ClusterLoadAssignment")
HCM = type_url("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
ROUTER = type_url("envoy.extensions.filters.http.router.v3.Router")
RESOURCE_WRAPPER = type_url("envoy.service.discovery.v3.Resource")
