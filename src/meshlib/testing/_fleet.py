"""`meshlib.testing.Fleet`: real, misbehaving HTTP/1.1 endpoints on 127.0.0.1 for tests."""

from __future__ import annotations

import dataclasses
import math
from types import TracebackType
from typing import Any, Protocol

from .._errors import ConfigError
from ._backend import Backend, BackendProcess, RecordedRequest

__all__ = ["Fleet", "FleetFactory", "Hit"]

_RECORD_LIMIT = 10_000


@dataclasses.dataclass(frozen=True)
class Hit:
    """One request as an endpoint of a `Fleet` received it.

    Added in version 0.1.
    """

    endpoint: str
    """`host:port` of the endpoint that received it."""
    method: str
    path: str
    """The path, without the query string."""
    query: str
    headers: dict[str, str]
    """Lower-cased header names; repeated headers joined with `", "`."""
    body: bytes
    time: float
    """`time.monotonic()` when the request had been read completely."""

    @property
    def target(self) -> str:
        """The request target as sent (path and query)."""
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclasses.dataclass(frozen=True)
class _Behaviour:
    latency: float = 0.0
    error_rate: float = 0.0
    status: int = 503
    retry_after: str | None = None
    refuse: bool = False
    stall: bool = False
    drop: float = 0.0

    def settings(self) -> dict[str, Any]:
        """The backend server settings that produce this behaviour (all but `refuse`)."""
        return {"delay_ms": self.latency * 1000.0, "fail_pct": self.error_rate * 100.0,
                "fail_status": self.status, "retry_after": self.retry_after,
                "mode": "stall" if self.stall else "normal", "drop_pct": self.drop * 100.0}


_FIELDS = tuple(f.name for f in dataclasses.fields(_Behaviour))


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"Fleet: {name} must be a number within 0..1, got {value!r}")
    return float(value)


def _checked(base: _Behaviour, changes: dict[str, Any]) -> _Behaviour:
    """`base` with `changes` applied, each validated; ConfigError names a bad field."""
    unknown = sorted(set(changes) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"Fleet has no behaviour {', '.join(map(repr, unknown))} "
                          f"(fields: {', '.join(_FIELDS)})")
    fields: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "latency":
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                raise ConfigError(f"Fleet: latency must be a finite number of seconds >= 0, "
                                  f"got {value!r}")
            fields[name] = float(value)
        elif name in ("error_rate", "drop"):
            fields[name] = _fraction(name, value)
        elif name == "status":
            if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
                raise ConfigError(f"Fleet: status must be an HTTP status code (100..599), "
                                  f"got {value!r}")
            fields[name] = value
        elif name == "retry_after":
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                value = str(value)
            if value is not None and (not isinstance(value, str) or not value.strip()
                                      or not value.isprintable()):
                raise ConfigError(f"Fleet: retry_after must be a header value (str) or None, "
                                  f"got {value!r}")
            fields[name] = value
        else:  # refuse, stall
            if not isinstance(value, bool):
                raise ConfigError(f"Fleet: {name} must be True or False, got {value!r}")
            fields[name] = value
    return dataclasses.replace(base, **fields)


class Fleet:
    """`n` real HTTP/1.1 endpoints on 127.0.0.1 whose faults a test controls.

    ```
    with Fleet(3, latency=0.01) as fleet:
        fleet.set(0, refuse=True)           # endpoint 0: connection refused
        client = meshlib.MeshClient(services={"users": fleet.url})
        ...
        assert len(fleet.hits()[1]) == 1    # requests endpoint 1 received
    ```

    Started by `with` / `async with` (or `start()`), stopped on exit
    (or `close()`), leaving no thread, process or open socket behind.
    The endpoints run on an event loop in a thread of this process, or in a
    child process with `process=True` (so that a load test's client does
    not share the interpreter lock with them).

    Behaviour fields, given here for every endpoint, changed with
    `set()` for all or one, at any time, also while requests run:

    * `latency` (seconds, default 0): wait before answering;
    * `error_rate` (0..1, default 0): the share of requests answered with
      `status` instead of 200;
    * `status` (default 503): the error status;
    * `retry_after` (header value, or `None`, the default): a
      `Retry-After` header on error answers;
    * `refuse` (bool): nothing listens, a connect is refused; open
      connections are closed, as when a process dies;
    * `stall` (bool): accept and read requests, never answer (requests
      already stalled stay so until the client gives up or the fleet stops);
    * `drop` (0..1): the share of requests whose connection is closed
      after the request was read, unanswered.

    Precedence: `refuse`, then `stall`, then `drop`, then
    `error_rate` (the `latency` applies to every answer). Every answer
    is JSON naming the endpoint: ``{"endpoint": "127.0.0.1:4711", "method":
    "GET", "path": "/x", ...}` (also in the `X-Backend`` header).
    `seed` makes `error_rate` and `drop` draws repeatable (endpoint
    `i` uses `seed + i`). `cpu` pins the child process to one CPU
    (`process=True` only; for benchmarks). A bad value raises
    `meshlib.ConfigError` naming the field.

    Added in version 0.1.
    """

    def __init__(self, n: int = 1, *, latency: float = 0.0, error_rate: float = 0.0,
                 status: int = 503, retry_after: str | None = None, refuse: bool = False,
                 stall: bool = False, drop: float = 0.0, process: bool = False,
                 seed: int | None = None, cpu: int | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"Fleet: n must be an int >= 1, got {n!r}")
        if not isinstance(process, bool):
            raise ConfigError(f"Fleet: process must be True or False, got {process!r}")
        if cpu is not None and not process:
            raise ConfigError("Fleet: cpu pins the child process; it needs process=True")
        behaviour = _checked(_Behaviour(), {
            "latency": latency, "error_rate": error_rate, "status": status,
            "retry_after": retry_after, "refuse": refuse, "stall": stall, "drop": drop})
        self._n = n
        self._behaviours = [behaviour] * n
        self._process = process
        self._seed = seed
        self._cpu = cpu
        self._thread: Backend | None = None
        self._child: BackendProcess | None = None
        self._endpoints: list[str] = []

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> Fleet:
        """Start every endpoint with its behaviour; return `self`."""
        if self.running:
            raise RuntimeError("the fleet is already started")
        options: dict[str, Any] = {"query_overrides": False, "record_limit": _RECORD_LIMIT,
                                   "seed": self._seed}
        if self._process:
            child = BackendProcess(self._n, cpu=self._cpu, **options)
            child.start()
            self._child = child
            self._endpoints = list(child.addresses)
        else:
            thread = Backend(self._n, **options)
            thread.start()
            self._thread = thread
            self._endpoints = thread.addresses
        try:
            for i, behaviour in enumerate(self._behaviours):
                self._apply(i, behaviour, _Behaviour())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every endpoint and close every connection; idempotent."""
        thread, self._thread = self._thread, None
        child, self._child = self._child, None
        if thread is not None:
            thread.stop()
        if child is not None:
            child.stop()

    @property
    def running(self) -> bool:
        """Whether the endpoints run (between `start()` and `close()`)."""
        return self._thread is not None or self._child is not None

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Fleet:
        return self.start()  # a few milliseconds; no executor thread to leave behind

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", ".join(self._endpoints) if self.running else "stopped"
        return f"<meshlib.testing.Fleet n={self._n} {state}>"

    def __len__(self) -> int:
        return self._n

    # -- addresses ----------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        """`host:port` of every endpoint, in index order (set once started)."""
        self._require_running()
        return list(self._endpoints)

    @property
    def url(self) -> str:
        """A `static://` discovery URL of every endpoint, for `services={...}`."""
        return "static://" + ",".join(self.endpoints)

    # -- behaviour ----------------------------------------------------------------
    def set(self, index: int | None = None, /, **behaviour: Any) -> None:
        """Change behaviour fields of every endpoint, or of endpoint `index` only.

        `fleet.set(latency=0.2)` changes all; `fleet.set(1, refuse=True)`
        one. Fields not named keep their value. Takes effect for the next
        request an endpoint reads (`refuse` at once). Raises
        `meshlib.ConfigError` for an unknown field or a bad value,
        changing nothing.
        """
        if index is None:
            targets = list(range(self._n))
        elif isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self._n:
            raise ConfigError(f"Fleet.set: index must be an endpoint index "
                              f"(0..{self._n - 1}), got {index!r}")
        else:
            targets = [index]
        new = {i: _checked(self._behaviours[i], behaviour) for i in targets}
        for i, b in new.items():
            old, self._behaviours[i] = self._behaviours[i], b
            if self.running:
                self._apply(i, b, old)

    def behaviour(self, index: int) -> dict[str, Any]:
        """The current behaviour fields of endpoint `index`."""
        return dataclasses.asdict(self._behaviours[index])

    def _apply(self, index: int, new: _Behaviour, old: _Behaviour) -> None:
        settings = new.settings()
        if self._thread is not None:
            server = self._thread[index]
            server.set(**settings)
            if new.refuse and server.listening:
                server.refuse()
            elif not new.refuse and not server.listening:
                server.restore()
        elif self._child is not None:
            self._child.set(index, **settings)
            if new.refuse != old.refuse:
                self._child.refuse(index, new.refuse)

    # -- what the endpoints received -----------------------------------------------
    def hits(self) -> list[list[Hit]]:
        """The requests each endpoint received, in arrival order; one list per endpoint.

        Indexed as `endpoints`. A request counts once it has been read
        completely, whatever the endpoint then did with it (answered,
        stalled, dropped). At most the last 10,000 per endpoint are kept.
        """
        self._require_running()
        if self._thread is not None:
            recorded = [server.requests for server in self._thread]
        else:
            assert self._child is not None
            recorded = self._child.requests()
        return [[_hit(r) for r in server] for server in recorded]

    def reset_hits(self) -> None:
        """Forget the requests every endpoint received so far."""
        self._require_running()
        if self._thread is not None:
            self._thread.reset_counts()
        elif self._child is not None:
            self._child.reset_counts()

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("the fleet is not started (use `with Fleet(...) as fleet:`)")


def _hit(r: RecordedRequest) -> Hit:
    return Hit(endpoint=r.backend, method=r.method, path=r.path, query=r.query,
               headers=r.headers, body=r.body, time=r.time)


class FleetFactory(Protocol):
    """The type of the `mesh_fleet` fixture: `mesh_fleet(n=1, **behaviour) -> Fleet`.

    The fleet it returns is started, and closed at the end of the test.

    Added in version 0.1.
    """

    def __call__(self, n: int = 1, **behaviour: Any) -> Fleet: ...
