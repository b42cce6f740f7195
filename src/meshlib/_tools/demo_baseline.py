"""The demo's second baseline: httpx with tenacity retries, as many services run today.

`meshlib demo` compares `meshlib.MeshClient` with a plain round-robin
`httpx.Client`. Few teams run that bare: the usual resilient client is httpx
wrapped in a tenacity (or stamina) retry decorator. `TenacityBaseline`
is that client, written the way its users write it, so the demo can show
what meshlib adds on top of it rather than on top of nothing:

* round robin over the instance URLs (each retry goes to the next one);
* `stop_after_attempt(3)`, `wait_random_exponential(multiplier=0.025, max=1.0)`
  (full jitter: the same attempts and backoff as meshlib's default policy);
* retried on any `httpx.TransportError` and on 502, 503 and 504, for every
  method (tenacity does not know which requests are safe to repeat);
* no deadline across attempts, no per-instance breaker, no retry budget, no
  latency awareness.

Only the demo uses this module (nothing public). To wire it into the demo, send
each request with `TenacityBaseline.get()` from a third set of workers and
record `BaselineOutcome` like the other two clients' results.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

__all__ = ["RETRY_STATUSES", "BaselineOutcome", "TenacityBaseline"]

RETRY_STATUSES = (502, 503, 504)


@dataclass(frozen=True, slots=True)
class BaselineOutcome:
    """One logical request's result: the last response or error, and attempts made."""

    response: httpx.Response | None
    error: str | None
    attempts: int
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether it ended in a response below 400."""
        return self.response is not None and self.response.status_code < 400


class TenacityBaseline:
    """`httpx.Client` + tenacity retries over a round-robin list of instance URLs.

    `urls` are base URLs (`http://127.0.0.1:8001`). `attempts` is
    tenacity's `stop_after_attempt`; `wait_initial` and `wait_max` its
    `wait_random_exponential` (full jitter); `timeout` httpx's per-operation timeout.
    `sleep` is tenacity's sleep (tests pass a no-op). Safe to share across
    threads, as the `httpx.Client` inside is.
    """

    def __init__(self, urls: Sequence[str], *, timeout: float = 5.0, attempts: int = 3,
                 wait_initial: float = 0.025, wait_max: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not urls:
            raise ValueError("TenacityBaseline needs at least one URL")
        self.urls = [url.rstrip("/") for url in urls]
        self.client = httpx.Client(timeout=timeout)
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._attempts = attempts
        self._wait = wait_random_exponential(multiplier=wait_initial, max=wait_max)
        self._sleep = sleep

    def _url(self) -> str:
        with self._lock:
            index = next(self._next)
        return self.urls[index % len(self.urls)]

    def get(self, path: str) -> BaselineOutcome:
        """GET `path` from the next instance, retried by tenacity on errors and 502/503/504."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=(retry_if_exception_type(httpx.TransportError)
                   | retry_if_result(lambda r: r.status_code in RETRY_STATUSES)),
            retry_error_callback=_last_outcome,  # give back the last answer, don't raise
            sleep=self._sleep,
            reraise=True,
        )
        start = time.perf_counter()
        try:
            response = retrying(lambda: self.client.get(self._url() + path))
        except httpx.HTTPError as exc:
            return BaselineOutcome(None, type(exc).__name__,
                                   retrying.statistics.get("attempt_number", 1),
                                   time.perf_counter() - start)
        attempts = int(retrying.statistics.get("attempt_number", 1))
        seconds = time.perf_counter() - start
        if isinstance(response, BaseException):  # the last attempt raised
            return BaselineOutcome(None, type(response).__name__, attempts, seconds)
        error = None if response.status_code < 400 else str(response.status_code)
        return BaselineOutcome(response, error, attempts, seconds)

    def close(self) -> None:
        """Close the httpx client."""
        self.client.close()


def _last_outcome(state: RetryCallState) -> httpx.Response | BaseException | None:
    """The last attempt's response, or its exception, once tenacity gives up."""
    outcome = state.outcome
    if outcome is None:
        return None
    if outcome.failed:
        return outcome.exception()
    result: httpx.Response = outcome.result()
    return result
