"""meshlib's xDS client: join an xDS control plane (Istio, go-control-plane, Traffic Director).

Module map (each module's docstring says more):

- :mod:`.messages`: the protobuf messages, in a private descriptor pool;
- :mod:`.bootstrap`: gRPC's bootstrap file (which control plane, which node);
- :mod:`.resources`: decoded, validated resources as frozen dataclasses, and
  :class:`~.resources.XdsConfig`, the complete graph a client routes by;
- :mod:`.protocol`: the ADS state machine (subscriptions, ACK/NACK, timers), no I/O;
- :mod:`.backoff`: when to reconnect;
- :mod:`.client`: :class:`~.client.XdsClient`, the grpcio driver (needs the
  ``xds`` extra: grpcio and protobuf).

Nothing here is imported by ``import meshlib``; grpcio is imported only by
:mod:`.client`.
"""
