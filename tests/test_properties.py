"""Property tests (hypothesis): every parser of remote or user input is total (it
returns a value or raises the one documented error, never anything else), and the
retry budget never allows more than its deposits and reserve."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from meshlib import ConfigError, Policy, RetryBudget
from meshlib._budget import BudgetLedger
from meshlib._config import KNOWN_VARIABLES, parse_duration, parse_host_port, read_env
from meshlib._discovery import discovery_from_url
from meshlib._discovery._file import EntryError, parse_entry, parse_entry_list
from meshlib._errors import redact_url
from meshlib._gate import RETRY_AFTER_MAX, parse_retry_after
from meshlib._policy import MAX_SECONDS

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

#: text that looks a little like what the parsers expect, plus arbitrary unicode
_PIECES = st.sampled_from(["", " ", ":", "[", "]", "::1", "@", "/", "?", "#", "=", ",", ";",
                           "%", "²", "٣", "0", "1", "65535", "65536", "1e308", "-", ".",
                           "ms", "s", "h", "inf", "nan", "localhost", "127.0.0.1", "\x00",
                           "user:pw@", "\n", "\t", "GMT", "Mon, 01 Jan 2024 00:00:00"])
TEXT = st.one_of(st.text(), st.lists(_PIECES, max_size=8).map("".join))


# -- Retry-After --------------------------------------------------------------------------

@SETTINGS
@given(TEXT)
@example("²")
@example("9" * 10_000)
@example("Fri, 31 Dec 99999 23:59:59 GMT")
@example("Mon, 01 Jan 0001 00:00:00 -2359")
def test_retry_after_never_raises(value: str) -> None:
    """Any text: None or a number of seconds from 0 to RETRY_AFTER_MAX."""
    result = parse_retry_after(value)
    assert result is None or (0.0 <= result <= RETRY_AFTER_MAX and math.isfinite(result))


@SETTINGS
@given(st.integers(min_value=0, max_value=10**40), st.text(" \t", max_size=3))
def test_retry_after_ascii_digits_are_seconds(seconds: int, pad: str) -> None:
    """ASCII digits (with surrounding blanks) are whole seconds, clamped."""
    assert parse_retry_after(f"{pad}{seconds}{pad}") == min(float(seconds), RETRY_AFTER_MAX)


@SETTINGS
@given(st.text(alphabet=st.characters(whitelist_categories=["Nd"], min_codepoint=128),
               min_size=1))
def test_retry_after_non_ascii_digits_are_ignored(value: str) -> None:
    """Unicode digits that str.isdigit() accepts are not seconds."""
    assert parse_retry_after(value) is None


# -- host:port ----------------------------------------------------------------------------

@SETTINGS
@given(TEXT)
def test_host_port_is_total(text: str) -> None:
    """Any text: a (host, port) pair with a valid port, or ConfigError."""
    try:
        host, port = parse_host_port(text, what="test")
    except ConfigError:
        return
    assert host and 0 < port < 65536


@SETTINGS
@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
       st.integers(min_value=1, max_value=65535))
def test_host_port_round_trip(host: str, port: int) -> None:
    """host:port and [v6]:port come back as they were written."""
    assert parse_host_port(f"{host}:{port}", what="t") == (host, port)
    assert parse_host_port(f"[::1]:{port}", what="t") == ("::1", port)


# -- discovery URLs -----------------------------------------------------------------------

_SCHEMES = st.sampled_from(["static", "dns", "dns+srv", "file", "etcd", "consul", "nope", ""])


@SETTINGS
@given(_SCHEMES, TEXT)
def test_discovery_urls_are_total(scheme: str, rest: str) -> None:
    """Any URL: a discovery object (built without I/O), or ConfigError."""
    try:
        discovery = discovery_from_url(f"{scheme}://{rest}")
    except ConfigError:
        return
    assert discovery.url == f"{scheme}://{rest}"


@SETTINGS
@given(_SCHEMES, st.from_regex(r"[a-z]{1,8}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9!$&'()*+,;=._~-]{4,16}", fullmatch=True),
       st.text(alphabet=st.characters(blacklist_characters="/?#")))
def test_userinfo_is_refused_and_never_echoed(scheme: str, user: str, password: str,
                                              rest: str) -> None:
    """user:password@ in any discovery URL is a ConfigError that does not show the password."""
    url = f"{scheme}://{user}:{password}@{rest}"
    with pytest.raises(ConfigError) as caught:
        discovery_from_url(url)
    assert f"{user}:{password}" not in str(caught.value)


_USERINFO_CHARS = st.characters(blacklist_characters="/?#@ \t\n\r\x0b\x0c")


@SETTINGS
@given(st.text(_USERINFO_CHARS), st.text(_USERINFO_CHARS, min_size=3))
def test_redact_url_hides_userinfo(user: str, password: str) -> None:
    """redact_url never lets the password of a userinfo part through."""
    assume(password not in "http://***@svc/x")
    assert password not in redact_url(f"http://{user}:{password}@svc/x")


# -- environment --------------------------------------------------------------------------

_VARS = sorted(KNOWN_VARIABLES - {"MESHLIB_K8S_API", "MESHLIB_K8S_TOKEN_FILE",
                                  "MESHLIB_K8S_CA_FILE", "MESHLIB_POOL"})


@SETTINGS
@given(st.sampled_from(_VARS), TEXT)
def test_env_values_are_total(var: str, value: str) -> None:
    """Any value of any variable: a valid configuration, or ConfigError naming it."""
    assume("\x00" not in value)
    try:
        env = read_env({var: value})
    except ConfigError as exc:
        assert var in str(exc)
        return
    policy = env.policy
    assert 0 < policy.timeout <= MAX_SECONDS
    time.monotonic() + policy.timeout
    int(policy.timeout * 1000)


@SETTINGS
@given(TEXT)
def test_durations_are_total_and_bounded(value: str) -> None:
    """parse_duration: 0 < seconds <= one day, or ConfigError naming the variable."""
    try:
        seconds = parse_duration("MESHLIB_X", value)
    except ConfigError as exc:
        assert "MESHLIB_X" in str(exc)
        return
    assert 0 < seconds <= MAX_SECONDS


@SETTINGS
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30))
def test_policy_timeout_never_overflows(value: float) -> None:
    """Any timeout a Policy accepts can be added to the clock, turned into ms and waited on."""
    try:
        policy = Policy(timeout=value)
    except ConfigError:
        return
    assert math.isfinite(time.monotonic() + policy.timeout)
    int(policy.timeout * 1000.0)
    threading.Event().wait(min(policy.timeout, 0.0))  # accepted by Event.wait (not waited)


# -- file entries -------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["host", "port", "weight", "zone", "priority", "x"])
                      | st.text(max_size=4), children, max_size=5),
    max_leaves=12)


@SETTINGS
@given(JSON)
def test_file_entries_are_total(value: object) -> None:
    """Any decoded JSON value: an endpoint, or EntryError."""
    try:
        endpoint = parse_entry(value)
    except EntryError:
        return
    assert 0 < endpoint.port < 65536 and endpoint.weight > 0 and endpoint.host


@SETTINGS
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
@example(b"[" * 100_000)
@example(b"\xff\xfe[]")
def test_file_content_is_total(content: bytes) -> None:
    """Any file content: a tuple of endpoints, or EntryError."""
    try:
        endpoints = parse_entry_list(content)
    except EntryError:
        return
    assert isinstance(endpoints, tuple)


# -- retry budget -------------------------------------------------------------------------

_OPS = st.lists(st.tuples(st.floats(min_value=0.0, max_value=3.0),
                          st.sampled_from(["deposit", "withdraw", "refund"])),
                max_size=200)


@SETTINGS
@given(st.floats(min_value=0.0, max_value=2.0), st.integers(min_value=0, max_value=3),
       st.sampled_from([1.0, 2.0, 10.0]), _OPS)
def test_retry_budget_never_allows_more_than_deposits_and_reserve(
        ratio: float, min_per_second: int, ttl: float,
        ops: list[tuple[float, str]]) -> None:
    """For every granted withdrawal at time t, the withdrawals of the last ttl (minus one
    slot) never exceed the reserve plus ratio x the deposits of the last ttl; the balance
    never exceeds what the deposits of the last ttl and the reserve allow; and while
    nothing has expired, it is never negative."""
    config = RetryBudget(ratio=ratio, min_per_second=min_per_second, ttl=ttl)
    ledger = BudgetLedger(config)
    reserve = min_per_second * ttl
    slot = ttl / 10
    now = 100.0
    deposits: list[float] = []
    withdrawals: list[float] = []
    eps = 1e-6
    for step, op in ops:
        now += step
        if op == "deposit":
            ledger.deposit(now)
            deposits.append(now)
        elif op == "withdraw":
            if ledger.try_withdraw(now):
                withdrawals.append(now)
                recent_w = sum(1 for t in withdrawals if t > now - ttl + slot + eps)
                recent_d = sum(1 for t in deposits if t > now - ttl - eps)
                assert recent_w <= reserve + ratio * recent_d + 1e-9
        elif withdrawals and withdrawals[-1] == now:
            ledger.refund(now)
            withdrawals.pop()
        balance = ledger.balance(now)
        live_d = sum(1 for t in deposits if t > now - ttl - slot - eps)
        assert balance <= reserve + ratio * live_d + 1e-9
        if now - 100.0 < slot * 0.999 - eps:  # everything so far is in the first slot
            assert balance >= -1e-9
