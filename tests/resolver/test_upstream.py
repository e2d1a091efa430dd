"""Failover policy and server health (resolver.upstream), with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolver.errors import ConfigError
from resolver.sites import SiteServer
from resolver.upstream import ServerHealth, UpstreamConfig, Upstreams
from tests.fakes import FakeClock

CHONGQING = SiteServer("http://127.0.0.1:8100", True, "Chongqing")
CHENGDU = SiteServer("http://127.0.0.1:8101", False, "Chengdu")
OTHER = SiteServer("http://127.0.0.1:8102", True, "Other")


def make(**config: Any) -> tuple[Upstreams, FakeClock]:
    clock = FakeClock()
    return Upstreams(UpstreamConfig(**config), clock=clock), clock


def test_unknown_servers_keep_the_given_order_primary_first() -> None:
    up, _ = make()
    assert up.order([CHONGQING, CHENGDU]) == [CHONGQING, CHENGDU]
    assert up.order([CHENGDU, CHONGQING]) == [CHONGQING, CHENGDU]  # the mirror's 1.5x penalty


def test_primary_is_preferred_over_mirror_at_equal_srtt() -> None:
    up, _ = make()
    up.success(CHONGQING.url, 0.020)
    up.success(CHENGDU.url, 0.020)
    assert up.order([CHENGDU, CHONGQING]) == [CHONGQING, CHENGDU]


def test_a_clearly_faster_mirror_wins() -> None:
    up, _ = make()
    up.success(CHONGQING.url, 0.100)
    up.success(CHENGDU.url, 0.020)
    assert up.order([CHONGQING, CHENGDU]) == [CHENGDU, CHONGQING]


def test_unknown_servers_are_tried_before_known_slow_ones() -> None:
    up, _ = make()
    up.success(CHONGQING.url, 0.200)
    assert up.order([CHONGQING, OTHER]) == [OTHER, CHONGQING]


def test_srtt_first_sample_then_ewma() -> None:
    up, _ = make()
    assert up.health(CHONGQING.url).srtt == pytest.approx(0.010)  # initial guess
    up.success(CHONGQING.url, 0.100)
    assert up.health(CHONGQING.url).srtt == pytest.approx(0.100)  # first sample replaces the guess
    up.success(CHONGQING.url, 0.200)
    assert up.health(CHONGQING.url).srtt == pytest.approx(0.7 * 0.100 + 0.3 * 0.200)
    up.success(CHONGQING.url, 0.0)
    assert up.health(CHONGQING.url).srtt == pytest.approx(0.7 * 0.13)


def test_marked_down_after_max_fails_consecutive_failures() -> None:
    up, clock = make()
    up.failure(CHONGQING.url, "connection refused")
    h = up.health(CHONGQING.url)
    assert (h.fails, h.down, h.failures) == (1, False, 1)
    assert up.down_servers() == []
    clock.now += 1
    up.failure(CHONGQING.url, "timeout")
    h = up.health(CHONGQING.url)
    assert (h.fails, h.down, h.last_failure, h.last_error) == (2, True, 1001.0, "timeout")
    assert up.down_servers() == [CHONGQING.url]


def test_a_success_between_failures_resets_the_count() -> None:
    up, _ = make()
    up.failure(CHONGQING.url, "timeout")
    up.success(CHONGQING.url, 0.01)
    up.failure(CHONGQING.url, "timeout")
    h = up.health(CHONGQING.url)
    assert (h.fails, h.down, h.failures, h.successes) == (1, False, 2, 1)


def test_max_fails_zero_never_marks_down() -> None:
    up, _ = make(max_fails=0)
    for _ in range(10):
        up.failure(CHONGQING.url, "timeout")
    assert not up.health(CHONGQING.url).down


def test_down_servers_are_ordered_last_but_still_tried_when_all_are_down() -> None:
    up, _ = make()
    up.success(CHONGQING.url, 0.001)
    for _ in range(2):
        up.failure(CHONGQING.url, "connection refused")
    assert up.order([CHONGQING, CHENGDU]) == [CHENGDU, CHONGQING]
    for _ in range(2):
        up.failure(CHENGDU.url, "connection refused")
    assert up.order([CHONGQING, CHENGDU]) == [CHONGQING, CHENGDU]  # all down: still an order to try
    assert sorted(up.down_servers()) == sorted([CHONGQING.url, CHENGDU.url])


def test_recovery_on_success_and_the_primary_is_used_again() -> None:
    up, clock = make()
    up.success(CHONGQING.url, 0.010)
    up.success(CHENGDU.url, 0.012)
    for _ in range(2):
        up.failure(CHONGQING.url, "connection refused")
    assert up.order([CHONGQING, CHENGDU])[0] == CHENGDU
    clock.now += 5
    up.success(CHONGQING.url, 0.011)  # a background probe got through
    h = up.health(CHONGQING.url)
    assert (h.down, h.fails, h.last_success) == (False, 0, 1005.0)
    assert up.down_servers() == []
    assert up.order([CHONGQING, CHENGDU])[0] == CHONGQING


def test_a_server_passed_over_ages_until_it_is_tried_again() -> None:
    up, _ = make()
    up.success(CHONGQING.url, 0.050)  # a restarted primary's slow first answer
    up.success(CHENGDU.url, 0.002)  # the mirror stood in well: 3 ms with its penalty
    chosen = [up.choose([CHONGQING, CHENGDU]) for _ in range(200)]
    first_primary = chosen.index(CHONGQING)
    assert all(s == CHENGDU for s in chosen[:first_primary]) and 100 < first_primary < 200
    up.success(CHONGQING.url, 0.001)  # fast again now: it keeps the load
    assert up.choose([CHONGQING, CHENGDU]) == CHONGQING
    assert up.health(CHENGDU.url).srtt < 0.002, "the mirror aged while passed over"


def test_down_servers_do_not_age_and_decay_zero_keeps_srtt() -> None:
    up, _ = make(max_fails=1)
    up.success(CHONGQING.url, 0.010)
    up.success(CHENGDU.url, 0.020)
    up.failure(CHENGDU.url, "refused")
    for _ in range(10):
        assert up.choose([CHONGQING, CHENGDU]) == CHONGQING
    assert up.health(CHENGDU.url).srtt == 0.020
    still, _ = make(srtt_decay=0)
    still.success(CHONGQING.url, 0.001)
    still.success(OTHER.url, 0.005)
    for _ in range(50):
        assert still.choose([CHONGQING, OTHER]) == CHONGQING
    assert still.health(OTHER.url).srtt == 0.005


def test_try_timeout_adapts_to_srtt_within_bounds() -> None:
    up, _ = make()
    assert up.try_timeout(CHONGQING.url) == 1.0  # never heard from: the ceiling
    up.success(CHONGQING.url, 0.001)
    assert up.try_timeout(CHONGQING.url) == 0.05  # 4 ms, raised to the floor
    up.success(CHENGDU.url, 0.100)
    assert up.try_timeout(CHENGDU.url) == pytest.approx(0.4)
    up.success(OTHER.url, 0.5)
    assert up.try_timeout(OTHER.url) == 1.0  # 2 s, capped


def test_try_timeout_backs_off_after_failures() -> None:
    up, _ = make()
    up.success(CHENGDU.url, 0.050)
    assert up.try_timeout(CHENGDU.url) == pytest.approx(0.2)
    up.failure(CHENGDU.url, "timeout")
    assert up.try_timeout(CHENGDU.url) == pytest.approx(0.4)
    up.failure(CHENGDU.url, "timeout")
    assert up.try_timeout(CHENGDU.url) == pytest.approx(0.8)
    up.failure(CHENGDU.url, "timeout")
    assert up.try_timeout(CHENGDU.url) == 1.0


def test_health_and_snapshot_are_copies() -> None:
    up, _ = make()
    assert up.health("http://never:1") == ServerHealth("http://never:1", 0.010)
    assert up.snapshot() == {}
    up.success(CHONGQING.url, 0.02)
    snap = up.snapshot()
    snap[CHONGQING.url].down = True
    up.health(CHONGQING.url).fails = 9
    h = up.health(CHONGQING.url)
    assert (h.down, h.fails, h.successes) == (False, 0, 1)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="max_fails must be 0"):
        UpstreamConfig(max_fails=-1)
    with pytest.raises(ConfigError, match="min_try_timeout <= try_timeout <= deadline"):
        UpstreamConfig(min_try_timeout=2.0, try_timeout=1.0)
    with pytest.raises(ConfigError, match="srtt_alpha"):
        UpstreamConfig(srtt_alpha=0)
    with pytest.raises(ConfigError, match="srtt_decay"):
        UpstreamConfig(srtt_decay=1.0)
    with pytest.raises(ConfigError, match="must be positive"):
        UpstreamConfig(probe_interval=0)


@given(st.lists(st.tuples(st.sampled_from([CHONGQING, CHENGDU, OTHER]), st.none() | st.floats(0, 5))))
def test_order_is_a_permutation_with_healthy_first(events: list[tuple[SiteServer, float | None]]) -> None:
    up, _ = make()
    for server, rtt in events:
        if rtt is None:
            up.failure(server.url, "timeout")
        else:
            up.success(server.url, rtt)
    servers = [CHONGQING, CHENGDU, OTHER]
    ordered = up.order(servers)
    assert sorted(s.url for s in ordered) == sorted(s.url for s in servers)
    downs = [up.health(s.url).down for s in ordered]
    assert downs == sorted(downs)
    for s in servers:
        assert 0.05 <= up.try_timeout(s.url) <= 1.0


# -- bounded state (issue 11, finding 7): a referral must not make the table, probes or metrics grow --


def test_the_table_keeps_at_most_max_servers_forgetting_the_least_recently_asked() -> None:
    forgotten: list[str] = []
    clock = FakeClock()
    up = Upstreams(UpstreamConfig(max_servers=3), clock=clock, on_forget=forgotten.append)
    urls = [f"http://127.0.0.{i}:9" for i in range(1, 6)]
    for url in urls[:3]:
        up.failure(url, "refused")
        clock.advance(1)
    up.success(urls[0], 0.01)  # asked again: now the most recent, so urls[1] goes first
    up.failure(urls[3], "refused")
    up.failure(urls[4], "refused")
    assert forgotten == [urls[1], urls[2]]
    assert len(up) == 3 and sorted(up.snapshot()) == sorted([urls[0], urls[3], urls[4]])
    assert not up.tracks(urls[1]) and up.health(urls[1]).failures == 0  # nothing is kept of it


def test_a_server_not_asked_for_forget_after_is_forgotten_and_no_longer_probed() -> None:
    up, clock = make(max_fails=1, forget_after=600)
    up.failure(OTHER.url, "refused")
    assert up.down_servers() == [OTHER.url]
    for _ in range(20):  # the driver probes it every interval; probes are not uses
        clock.advance(30)
        up.failure(OTHER.url, "health probe failed", probe=True)
    assert up.down_servers() == [] and not up.tracks(OTHER.url)
    up.success(OTHER.url, 0.01, probe=True)  # a late probe answer does not bring it back
    assert not up.tracks(OTHER.url) and up.snapshot() == {}


def test_asking_a_server_keeps_it() -> None:
    up, clock = make(max_fails=1, forget_after=600)
    up.failure(OTHER.url, "refused")
    clock.advance(599)
    up.failure(OTHER.url, "refused")
    clock.advance(599)
    assert up.down_servers() == [OTHER.url]
    clock.advance(1)
    assert up.down_servers() == []


def test_root_hints_are_never_forgotten_nor_counted_against_the_bound() -> None:
    clock = FakeClock()
    up = Upstreams(UpstreamConfig(max_fails=1, max_servers=1), clock=clock, keep=[CHONGQING.url, CHENGDU.url])
    up.failure(CHONGQING.url, "refused")
    up.success(CHENGDU.url, 0.01)
    for i in range(5):
        up.failure(f"http://127.0.0.{i}:9", "refused")
    clock.advance(100_000)
    assert up.down_servers() == [CHONGQING.url]  # still probed: every walk starts at the roots
    assert sorted(up.snapshot()) == sorted([CHONGQING.url, CHENGDU.url])


def test_bounds_are_checked() -> None:
    bad: list[Any] = [0, 10.5, True]
    for servers in bad:
        with pytest.raises(ConfigError, match="max_servers must be a whole number"):
            UpstreamConfig(max_servers=servers)
    for seconds in (0, -1, float("nan")):
        with pytest.raises(ConfigError, match="forget_after must be a positive number of seconds"):
            UpstreamConfig(forget_after=seconds)


def test_a_probe_brings_a_primary_back_ahead_of_its_mirror_whatever_the_probe_took() -> None:
    """Regression (CI, stop 17): the probe of a just-restarted primary took ~100 ms and was blended
    into its SRTT, so its CHENGDU kept answering for a hundred resolutions after it was back."""
    up, _ = make(max_fails=1)
    up.success(CHONGQING.url, 0.003)
    up.success(CHENGDU.url, 0.003)
    up.failure(CHONGQING.url, "refused")
    assert up.choose([CHONGQING, CHENGDU]) == CHENGDU
    up.success(CHONGQING.url, 0.120, probe=True)
    assert not up.is_down(CHONGQING.url)
    assert up.health(CHONGQING.url).srtt == pytest.approx(0.003)
    assert up.choose([CHONGQING, CHENGDU]) == CHONGQING
