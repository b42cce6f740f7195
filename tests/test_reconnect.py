"""The one reconnect decision (``_reconnect.Reconnect``) every watching client shares."""

from __future__ import annotations

import pytest

from meshlib._discovery._base import Discovery
from meshlib._discovery._consul import ConsulDiscovery
from meshlib._discovery._dns import DnsDiscovery
from meshlib._discovery._etcd import EtcdDiscovery
from meshlib._discovery._k8s import K8sDiscovery
from meshlib._reconnect import Reconnect
from meshlib._xds.backoff import Backoff


def _plain(base: float = 0.5, cap: float = 4.0) -> Reconnect:
    return Reconnect(base=base, cap=cap, multiplier=2.0, jitter=0.0)


def test_doubles_up_to_the_cap_and_stays_there_while_retries_fail() -> None:
    """Each failure of the retry that follows the wait doubles the delay, up to the cap;
    a retry that keeps failing stays at the cap (it does not start over)."""
    backoff = _plain()
    now, delays = 0.0, []
    for _ in range(8):
        delay = backoff.failed(now)
        delays.append(delay)
        now += delay + 0.3  # the retry itself takes a while before it fails too
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]


def test_a_connection_that_ran_longer_than_the_cap_is_retried_at_once() -> None:
    """A failure long after the retry began (the connection worked a while) starts over."""
    backoff = _plain()
    for now in (0.0, 0.6, 1.7):
        backoff.failed(now)
    assert backoff.failed(1.7 + 2.0 + 100.0) == 0.5


def test_succeeded_starts_over() -> None:
    """An answer proves the connection: the next failure waits the base again."""
    backoff = _plain()
    assert [backoff.failed(0.0), backoff.failed(0.6)] == [0.5, 1.0]
    backoff.succeeded()
    assert backoff.failed(1.7) == 0.5


def test_jitter_spreads_each_delay_within_its_bounds() -> None:
    """With jitter, a delay lies within +/- jitter of the exponential one."""
    low = Reconnect(base=1.0, cap=30.0, rng=lambda: 0.0)
    high = Reconnect(base=1.0, cap=30.0, rng=lambda: 1.0)
    assert (low.failed(0.0), high.failed(0.0)) == pytest.approx((0.8, 1.2))


def test_bad_settings_are_refused() -> None:
    """A base above the cap, a multiplier below 1 or a jitter of 1 make no sense."""
    for kwargs in ({"base": 2.0, "cap": 1.0}, {"multiplier": 0.5}, {"jitter": 1.0}):
        with pytest.raises(ValueError, match="backoff needs"):
            Reconnect(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [EtcdDiscovery, ConsulDiscovery, K8sDiscovery, DnsDiscovery])
def test_every_watching_discovery_kind_takes_its_backoff_from_one_place(
        kind: type[Discovery]) -> None:
    """etcd, Consul, Kubernetes and DNS discovery share the constants and the decision
    object of ``Discovery``; the xDS client's backoff is the same object."""
    assert "BACKOFF_INITIAL" not in vars(kind) and "BACKOFF_MAX" not in vars(kind)
    assert kind.BACKOFF_INITIAL == Discovery.BACKOFF_INITIAL
    assert Backoff is Reconnect


def test_a_kind_s_backoff_follows_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``reconnect()`` builds the decision from the kind's BACKOFF_INITIAL/BACKOFF_MAX."""
    discovery = EtcdDiscovery("etcd://127.0.0.1:2379/mesh/users")
    discovery.BACKOFF_INITIAL, discovery.BACKOFF_MAX = 0.05, 0.2  # type: ignore[misc]
    backoff = discovery.reconnect()
    assert [backoff.failed(t) for t in (0.0, 0.1, 0.3, 0.7)] == [0.05, 0.1, 0.2, 0.2]
