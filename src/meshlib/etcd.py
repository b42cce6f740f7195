"""Announce a service instance in etcd, for `etcd://` discovery to find.

`EtcdRegistration` puts `{"host", "port", "weight"?, "zone"?}` at
`PREFIX/KEY` on a lease, keeps the lease alive in the background (a thread
for the sync API, a task for the async one) and revokes it when the instance
goes away, so the key disappears at once on a clean exit and within the
lease's TTL after a crash:

```
from meshlib.etcd import EtcdRegistration

with EtcdRegistration("etcd://127.0.0.1:2379/mesh/users", "10.0.0.5", 8080):
    serve_forever()

async with EtcdRegistration("etcd://127.0.0.1:2379/mesh/users", "10.0.0.5", 8080,
                            zone="eu-1", weight=2):
    await serve()

registration = EtcdRegistration("etcd://127.0.0.1:2379/mesh/users", "10.0.0.5", 8080)
registration.register()        # or: await registration.aregister()
...
registration.deregister()      # or: await registration.aderegister()
```

If a keep-alive finds the lease gone (etcd restarted from an old snapshot, a
long pause), the registration grants a new lease and puts the key again.
Only plain HTTP to etcd's v3 JSON gateway is used, through httpx.

Added in version 0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from types import TracebackType
from typing import Any

import httpx

from ._discovery._entries import EntryError, parse_entry
from ._discovery._etcd import b64, parse_etcd_url
from ._endpoint import format_address
from ._errors import ConfigError

__all__ = ["EtcdError", "EtcdRegistration"]

logger = logging.getLogger("meshlib.etcd")


class EtcdRegistration:
    """One service instance registered under an etcd prefix, on a kept-alive lease.

    Args:
        url: where to register, `etcd://HOST:PORT/PREFIX` (the same URL the
            clients use for discovery).
        host: the address clients should connect to.
        port: the port clients should connect to.
        weight: the instance's relative share of traffic (default 1).
        zone: the instance's zone, for zone-aware routing.
        key: the key under the prefix (default `host:port`).
        ttl: the lease's time to live in seconds; the key vanishes this long
            after the process stops keeping it alive. Keep-alives are sent every
            `ttl / 3` seconds.
        timeout: seconds allowed for each call to etcd.

    The object is reusable: `register()` after `deregister()` registers
    again. Use either the sync or the async methods for one registration.

    `register()` / `aregister()` raise `httpx.HTTPError` when etcd cannot
    be reached and `EtcdError` when it refuses; later keep-alive
    failures are logged as warnings on `meshlib.etcd` and retried, and a lost
    lease is replaced. `deregister()` never raises for an unreachable etcd
    (the lease then simply expires).
    """

    def __init__(self, url: str, host: str, port: int, *, weight: float | None = None,
                 zone: str | None = None, key: str | None = None, ttl: int = 10,
                 timeout: float = 5.0) -> None:
        etcd_host, etcd_port, prefix = parse_etcd_url(url)
        self.url = url
        self.value = _value(url, host, port, weight, zone)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 2:
            raise ConfigError(f"EtcdRegistration ttl={ttl!r} must be a whole number >= 2")
        self.ttl = ttl
        self.timeout = timeout
        self.key = prefix + (key if key is not None else format_address(host, port))
        base = f"[{etcd_host}]" if ":" in etcd_host else etcd_host
        self.base_url = f"http://{base}:{etcd_port}"
        self.lease: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._aclient: httpx.AsyncClient | None = None

    @property
    def interval(self) -> float:
        """Seconds between two keep-alives."""
        return self.ttl / 3

    def __repr__(self) -> str:
        return f"EtcdRegistration({self.url!r}, key={self.key!r}, lease={self.lease!r})"

    # -- request bodies and answers, shared by the sync and async paths ------------------

    def _put_body(self, lease: str) -> dict[str, str]:
        return {"key": b64(self.key.encode()), "value": b64(self.value.encode()),
                "lease": lease}

    @staticmethod
    def _lease_id(body: dict[str, Any]) -> str:
        lease = body.get("ID")
        if not lease or lease == "0":
            raise EtcdError(f"etcd granted no lease: {body!r}")
        return str(lease)

    def _range_body(self) -> dict[str, str]:
        return {"key": b64(self.key.encode())}

    def _key_on_lease(self, body: dict[str, Any]) -> bool:
        """Whether a range answer shows our key with our value on our current lease."""
        for kv in body.get("kvs") or []:
            if isinstance(kv, dict) and str(kv.get("lease")) == self.lease and (
                    kv.get("value") == b64(self.value.encode())):
                return True
        return False

    @staticmethod
    def _alive(body: dict[str, Any]) -> bool:
        """Whether a keep-alive answer says the lease still exists (its TTL is above 0)."""
        result = body.get("result") or {}
        return int(result.get("TTL") or 0) > 0

    # -- sync API ------------------------------------------------------------------------

    def register(self) -> None:
        """Grant a lease, put the key on it, and start keeping it alive in a thread."""
        if self._thread is not None:
            return
        self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                    trust_env=False)
        try:
            self._grant_and_put()
        except BaseException:
            self._client.close()
            self._client = None
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep_alive_loop, daemon=True,
                                        name=f"meshlib-etcd-{self.key}")
        self._thread.start()
        logger.info("registered %s in etcd %s (lease %s)", self.key, self.base_url, self.lease)

    def deregister(self) -> None:
        """Stop the keep-alives and revoke the lease, which deletes the key."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        client, self._client = self._client, None
        assert client is not None
        try:
            if self.lease is not None:
                self._call(client, "/v3/lease/revoke", {"ID": self.lease})
        except (httpx.HTTPError, EtcdError) as exc:
            logger.warning("could not revoke lease of %s (it expires in %d s): %s",
                           self.key, self.ttl, exc)
        finally:
            self.lease = None
            client.close()

    def _call(self, client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _checked(client.post(path, json=body))

    def _grant_and_put(self) -> None:
        assert self._client is not None
        self.lease = self._lease_id(self._call(self._client, "/v3/lease/grant",
                                               {"TTL": self.ttl}))
        self._call(self._client, "/v3/kv/put", self._put_body(self.lease))

    def _keep_alive_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                assert self._client is not None
                body = self._call(self._client, "/v3/lease/keepalive", {"ID": self.lease})
                if not self._alive(body):
                    logger.warning("etcd lease of %s was lost; registering again", self.key)
                    self._grant_and_put()
                elif not self._key_on_lease(self._call(self._client, "/v3/kv/range",
                                                       self._range_body())):
                    # a put that failed after its grant, or a key deleted by hand
                    logger.warning("etcd key %s is missing; putting it again", self.key)
                    assert self.lease is not None
                    self._call(self._client, "/v3/kv/put", self._put_body(self.lease))
            except (httpx.HTTPError, EtcdError) as exc:
                logger.warning("etcd keep-alive for %s failed: %s", self.key, exc)

    def __enter__(self) -> EtcdRegistration:
        self.register()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deregister()

    # -- async API -----------------------------------------------------------------------

    async def aregister(self) -> None:
        """Grant a lease, put the key on it, and start keeping it alive in a task."""
        if self._task is not None:
            return
        self._aclient = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout,
                                          trust_env=False)
        try:
            await self._agrant_and_put()
        except BaseException:
            await self._aclient.aclose()
            self._aclient = None
            raise
        self._task = asyncio.create_task(self._akeep_alive_loop(),
                                         name=f"meshlib-etcd-{self.key}")
        logger.info("registered %s in etcd %s (lease %s)", self.key, self.base_url, self.lease)

    async def aderegister(self) -> None:
        """Stop the keep-alives and revoke the lease, which deletes the key."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        client, self._aclient = self._aclient, None
        assert client is not None
        try:
            if self.lease is not None:
                await self._acall(client, "/v3/lease/revoke", {"ID": self.lease})
        except (httpx.HTTPError, EtcdError) as exc:
            logger.warning("could not revoke lease of %s (it expires in %d s): %s",
                           self.key, self.ttl, exc)
        finally:
            self.lease = None
            await client.aclose()

    async def _acall(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]
                     ) -> dict[str, Any]:
        return _checked(await client.post(path, json=body))

    async def _agrant_and_put(self) -> None:
        assert self._aclient is not None
        body = await self._acall(self._aclient, "/v3/lease/grant", {"TTL": self.ttl})
        self.lease = self._lease_id(body)
        await self._acall(self._aclient, "/v3/kv/put", self._put_body(self.lease))

    async def _akeep_alive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                assert self._aclient is not None
                body = await self._acall(self._aclient, "/v3/lease/keepalive",
                                         {"ID": self.lease})
                if not self._alive(body):
                    logger.warning("etcd lease of %s was lost; registering again", self.key)
                    await self._agrant_and_put()
                elif not self._key_on_lease(await self._acall(self._aclient, "/v3/kv/range",
                                                              self._range_body())):
                    # a put that failed after its grant, or a key deleted by hand
                    logger.warning("etcd key %s is missing; putting it again", self.key)
                    assert self.lease is not None
                    await self._acall(self._aclient, "/v3/kv/put", self._put_body(self.lease))
            except (httpx.HTTPError, EtcdError) as exc:
                logger.warning("etcd keep-alive for %s failed: %s", self.key, exc)

    async def __aenter__(self) -> EtcdRegistration:
        await self.aregister()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aderegister()


class EtcdError(RuntimeError):
    """etcd answered a registration call with an error (for example an unknown lease).

    Added in version 0.1.
    """


def _checked(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful gateway answer; `EtcdError` otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or "error" in body:
        raise EtcdError(f"{response.request.url.path} answered HTTP "
                             f"{response.status_code}: {response.text[:200]}")
    return body


def _value(url: str, host: str, port: int, weight: float | None, zone: str | None) -> str:
    """The JSON value to register, checked like discovery will read it."""
    entry: dict[str, Any] = {"host": host, "port": port}
    if weight is not None:
        entry["weight"] = weight
    if zone is not None:
        entry["zone"] = zone
    try:
        parse_entry(entry)
    except EntryError as exc:
        raise ConfigError(f"EtcdRegistration for {url!r}: {exc}") from None
    return json.dumps(entry, separators=(",", ":"))
