"""The recursive node's cache (resolver.cache), driven by a fake clock."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolver.bodies import answer_body
from resolver.cache import Cache, CacheConfig, CacheStats, Entry, Found, Refresh, Stale
from resolver.codec import JSON, MSGPACK
from resolver.errors import ConfigError
from resolver.values import HandleValue, value_to_wire
from tests.fakes import FakeClock

KEY = "88.118.8/VIN-001"


def value(index: int = 1, ttl: int = 3600, permissions: str = "1110", type_: str = "URL") -> HandleValue:
    return HandleValue(index, type_, "string", f"https://example.cn/{index}", ttl, 0, permissions)


def site(index: int = 1, ttl: int = 3600) -> HandleValue:
    return HandleValue(index, "HS_SITE", "site", {"servers": [{"address": f"10.0.0.{index}"}]}, ttl)


def make(clock: FakeClock | None = None, **config: Any) -> tuple[Cache, FakeClock]:
    clock = clock or FakeClock()
    return Cache(CacheConfig(**config), clock), clock


def freshness(cache: Cache, key: str = KEY) -> str | None:
    """What ``lookup`` finds, by name: "fresh", "refresh", "stale", or None (a miss)."""
    match cache.lookup(key):
        case Entry():
            return "fresh"
        case Refresh():
            return "refresh"
        case Stale():
            return "stale"
    return None


def entry_of(found: Found | None) -> Entry:
    assert found is not None, "a miss"
    return found.entry if isinstance(found, Refresh | Stale) else found


# -- TTLs ----------------------------------------------------------------------------------------------


def test_ttl_is_the_smallest_value_ttl() -> None:
    cache, clock = make()
    entry = cache.store_answer(KEY, (value(1, ttl=600), value(2, ttl=60), value(3, ttl=3600)))
    assert (entry.ttl, entry.expires) == (60, clock.now + 60)
    clock.advance(59.9)
    assert freshness(cache) == "fresh"
    clock.advance(0.1)
    assert freshness(cache) == "stale"


@pytest.mark.parametrize(("ttl", "expected"), [(0, 5.0), (3, 5.0), (100, 100.0), (10**9, 172_800.0)])
def test_ttl_is_clamped_both_ways(ttl: int, expected: float) -> None:
    cache, _ = make()
    assert cache.store_answer(KEY, (value(ttl=ttl),)).ttl == expected


def test_not_found_uses_the_negative_ttl() -> None:
    cache, clock = make(negative_ttl=30)
    entry = cache.store_not_found(KEY)
    assert (entry.values, entry.expires) == (None, clock.now + 30)
    # The clamp applies to it too: a negative TTL below min_ttl is raised to it.
    cache, _ = make(negative_ttl=1, min_ttl=5)
    assert cache.store_not_found(KEY).ttl == 5


def test_empty_answer_is_kept_as_long_as_a_not_found_one() -> None:
    cache, _ = make(negative_ttl=30)
    entry = cache.store_answer(KEY, ())
    assert (entry.values, entry.ttl) == ((), 30)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_ttl"):
        CacheConfig(min_ttl=10, max_ttl=5)
    with pytest.raises(ConfigError, match="max_entries"):
        CacheConfig(max_entries=0)
    with pytest.raises(ConfigError, match="prefetch_fraction"):
        CacheConfig(prefetch_fraction=1.0)


# -- counters ------------------------------------------------------------------------------------------


def test_hits_misses_and_negative_hits_are_counted() -> None:
    cache, clock = make(negative_ttl=30)
    assert cache.lookup(KEY) is None
    cache.store_answer(KEY, (value(),))
    cache.store_not_found("88.118.8/GONE")
    found = cache.lookup(KEY)
    assert entry_of(found).values == (value(),)
    gone = cache.lookup("88.118.8/GONE")
    assert entry_of(gone).values is None
    clock.advance(31)
    assert freshness(cache, "88.118.8/GONE") == "stale"  # a miss: the driver must go upstream
    cache.served_stale()
    assert cache.stats == CacheStats(hits=2, misses=2, negative_hits=1, stale_served=1, insertions=2)
    assert cache.stats.as_dict()["negative_hits"] == 1


# -- LRU -----------------------------------------------------------------------------------------------


def test_least_recently_used_entry_is_evicted_first() -> None:
    cache, _ = make(max_entries=3)
    for key in "abc":
        cache.store_answer(key, (value(),))
    cache.lookup("a")  # a is now the most recently used; b the least
    cache.store_answer("d", (value(),))
    assert len(cache) == 3
    assert cache.lookup("b") is None
    assert [freshness(cache, k) for k in "acd"] == ["fresh"] * 3
    cache.store_answer("c", (value(2),))  # replacing counts as use: a goes next
    cache.store_answer("e", (value(),))
    assert cache.lookup("a") is None
    assert cache.stats.evictions == 2


def test_bytes_served_without_a_lookup_still_keep_an_entry_from_eviction() -> None:
    cache, _ = make(max_entries=3)
    a = cache.store_answer("a", (value(),))
    cache.store_answer("b", (value(),))
    cache.store_answer("c", (value(),))  # LRU order: a b c
    assert cache.served_bytes("a") == a.record  # a hit that does not move a
    cache.store_answer("d", (value(),))
    assert cache.lookup("b") is None, "a was used after b: b is the least recently used"
    assert [freshness(cache, k) for k in "acd"] == ["fresh"] * 3
    assert cache.holds(a) and cache.stats.evictions == 1
    assert cache.stats.hits == 1 + 3


def test_stored_bodies_are_served_while_the_entry_is_fresh_and_not_near_expiry() -> None:
    cache, clock = make(prefetch_fraction=0.1, negative_ttl=100)
    cache.store_answer(KEY, (value(ttl=100),))
    cache.store_not_found("88.118.8/GONE")
    served, gone = cache.served_bytes(KEY), cache.served_bytes("88.118.8/GONE")
    assert served is not None and gone is not None
    assert (served[1], json.loads(served[0])) == (200, answer_body(KEY, (value(ttl=100),)))
    assert (gone[1], json.loads(gone[0])["responseCode"]) == (404, 100)
    assert cache.served_bytes("88.118.8/NEVER-STORED") is None
    assert (cache.stats.hits, cache.stats.negative_hits, cache.stats.misses) == (2, 1, 0)
    clock.advance(90)  # near expiry: lookup decides on the refresh, the bytes served counting as hits
    assert cache.served_bytes(KEY) is None and freshness(cache) == "refresh"
    cache.store_answer(KEY, (value(2, ttl=100),))
    newer = cache.served_bytes(KEY)
    assert newer is not None and json.loads(newer[0])["values"][0]["index"] == 2, "the new entry's body"
    cache.invalidate(KEY)
    assert cache.served_bytes(KEY) is None


def test_other_media_types_and_spellings_are_encoded_as_the_client_asked() -> None:
    cache, _ = make()
    entry = cache.store_answer(KEY, (value(),))
    assert cache.encoded(entry, KEY, JSON) is entry.record[0], "the stored body itself"
    packed = cache.encoded(entry, KEY, MSGPACK)
    assert msgpack.unpackb(packed) == answer_body(KEY, (value(),))
    assert cache.encoded(entry, KEY, MSGPACK) is packed, "encoded once while the entry is held"
    prefix_handle = cache.store_answer("0.NA/88.118", (value(),))  # asked for as "0.na/88.118" too
    assert json.loads(cache.encoded(prefix_handle, "0.na/88.118", JSON))["handle"] == "0.na/88.118"
    gone = cache.store_not_found("88.118.8/GONE")
    assert msgpack.unpackb(cache.encoded(gone, "88.118.8/GONE", MSGPACK))["responseCode"] == 100
    newer = cache.store_answer(KEY, (value(2),))
    assert msgpack.unpackb(cache.encoded(newer, KEY, MSGPACK))["values"] == [value_to_wire(value(2))]


def test_an_entry_the_cache_no_longer_holds_is_not_held() -> None:
    cache, _ = make(max_entries=1)
    cache.store_answer("a", (value(),))
    replaced = cache.lookup("a")
    cache.store_answer("a", (value(2),))
    invalidated = cache.lookup("a")
    cache.invalidate("a")
    cache.store_answer("b", (value(),))
    evicted = cache.lookup("b")
    cache.store_answer("c", (value(),))
    assert replaced and invalidated and evicted
    assert not any(cache.holds(entry_of(found)) for found in (replaced, invalidated, evicted))
    kept = cache.lookup("c")
    assert cache.holds(entry_of(kept))
    assert not cache.holds(cache.detached_entry("d", (value(),))), "never held by the cache"


def test_a_new_entry_is_never_the_one_evicted_to_make_room_for_itself() -> None:
    cache, _ = make(max_entries=1)
    cache.store_answer("a", (value(),))
    assert cache.served_bytes("a") is not None  # hit since it last moved: a second chance
    cache.store_answer("b", (value(),))  # but "b" must stay
    assert cache.lookup("a") is None and freshness(cache, "b") == "fresh"


def test_not_found_entries_share_the_bound() -> None:
    cache, _ = make(max_entries=2)
    cache.store_answer("a", (value(),))
    cache.store_not_found("b")
    cache.store_not_found("c")
    assert len(cache) == 2 and cache.lookup("a") is None


# -- freshness: fresh, prefetch, stale, gone -----------------------------------------------------------


def test_lifecycle_fresh_prefetch_once_stale_then_gone() -> None:
    cache, clock = make(prefetch_fraction=0.1, prefetch_min_hits=2, stale_window=1000)
    cache.store_answer(KEY, (value(ttl=100),))
    assert freshness(cache) == "fresh"
    clock.advance(91)  # in the last 10% of the TTL, and this is the second hit
    assert freshness(cache) == "refresh"
    assert freshness(cache) == "fresh"  # the refresh is already under way
    clock.advance(9)
    assert freshness(cache) == "stale"
    clock.advance(999)
    assert freshness(cache) == "stale"
    clock.advance(1)
    assert cache.lookup(KEY) is None
    assert len(cache) == 0
    assert (cache.stats.prefetches, cache.stats.expired) == (1, 1)


def test_cold_entry_is_not_prefetched() -> None:
    cache, clock = make(prefetch_min_hits=2)
    cache.store_answer(KEY, (value(ttl=100),))
    clock.advance(95)
    assert freshness(cache) == "fresh"  # only its first hit: let it expire
    assert freshness(cache) == "refresh"  # now it is hot


def test_store_replaces_the_entry_and_resets_prefetch() -> None:
    cache, clock = make(prefetch_min_hits=1)
    first = cache.store_answer(KEY, (value(ttl=100),))
    cache.encoded(first, KEY, MSGPACK)
    clock.advance(95)
    assert freshness(cache) == "refresh"
    second = cache.store_answer(KEY, (value(2, ttl=100),))
    assert second != first and cache.holds(second) and not cache.holds(first)
    assert msgpack.unpackb(cache.encoded(second, KEY, MSGPACK))["values"][0]["index"] == 2
    found = cache.lookup(KEY)
    assert found == second
    clock.advance(95)
    assert freshness(cache) == "refresh"  # the new entry may be refreshed once too


def test_answer_replaces_not_found_and_back() -> None:
    cache, _ = make()
    cache.store_not_found(KEY)
    cache.store_answer(KEY, (value(),))
    found = cache.lookup(KEY)
    assert entry_of(found).values == (value(),)
    cache.store_not_found(KEY)
    found = cache.lookup(KEY)
    assert entry_of(found).values is None


def test_invalidate() -> None:
    cache, _ = make()
    cache.store_answer(KEY, (value(),))
    cache.invalidate(KEY)
    cache.invalidate("never/stored")
    assert cache.lookup(KEY) is None and len(cache) == 0


def test_non_public_values_are_never_cached() -> None:
    cache, _ = make()
    secret = value(300, ttl=10, permissions="1100", type_="HS_SECKEY")
    entry = cache.store_answer(KEY, (value(1, ttl=600), secret))
    assert entry.values == (value(1, ttl=600),)
    assert entry.ttl == 600  # the dropped value's TTL does not count either
    found = cache.lookup(KEY)
    assert found is not None and secret not in (entry_of(found).values or ())


# -- referrals -----------------------------------------------------------------------------------------


def test_closest_referral_is_the_deepest_fresh_one() -> None:
    cache, _ = make()
    cache.store_referral("88", (site(1),))
    cache.store_referral("88.118", (site(2),))
    cache.store_referral("88.118.8", (site(3),))
    cache.store_referral("88.118.80", (site(4),))
    assert cache.closest_referral("88.118.8.1") == ("88.118.8", (site(3),))
    assert cache.closest_referral("88.118.8") == ("88.118.8", (site(3),))
    # A sibling that merely shares leading characters is not an ancestor.
    assert cache.closest_referral("88.118.9") == ("88.118", (site(2),))
    assert cache.closest_referral("88.200") == ("88", (site(1),))
    assert cache.closest_referral("86.1") is None


def test_referral_ttl_is_the_smallest_site_ttl() -> None:
    cache, clock = make(stale_window=100)
    cache.store_referral("88.118", (site(1),))  # an hour
    cache.store_referral("88.118.8", (site(1, ttl=600), site(2, ttl=60)))
    clock.advance(60)
    # The deeper one expired: the fresh ancestor is used, unless stale ones are allowed.
    assert cache.closest_referral("88.118.8.1") == ("88.118", (site(1),))
    assert cache.closest_referral("88.118.8.1", allow_stale=True) == ("88.118.8", (site(1, ttl=600), site(2, ttl=60)))
    clock.advance(100)  # past the stale window: gone even for allow_stale
    assert cache.closest_referral("88.118.8.1", allow_stale=True) == ("88.118", (site(1),))


def test_expired_referral_is_ignored_unless_stale_is_allowed() -> None:
    cache, clock = make()
    cache.store_referral("88.118", (site(ttl=10),))
    clock.advance(10)
    assert cache.closest_referral("88.118.8") is None
    assert cache.closest_referral("88.118.8", allow_stale=True) == ("88.118", (site(ttl=10),))


def test_referrals_have_their_own_bound() -> None:
    cache, _ = make(max_entries=1, max_referrals=2)
    cache.store_referral("88.1", (site(),))
    cache.store_referral("88.2", (site(),))
    cache.store_answer("a", (value(),))
    cache.store_answer("b", (value(),))  # answers evicting each other leave referrals alone
    assert cache.closest_referral("88.1") is not None
    cache.store_referral("88.3", (site(),))  # 88.1 was just used, so 88.2 goes
    assert cache.closest_referral("88.2") is None
    assert cache.closest_referral("88.1") is not None
    assert cache.stats.referral_evictions == 1


def test_forget_referral_and_referrals_without_public_sites() -> None:
    cache, _ = make()
    cache.store_referral("88.118", (site(),))
    cache.forget_referral("88.118")
    cache.store_referral("88.119", (HandleValue(1, "HS_SITE", "site", {}, 60, 0, "1100"),))
    assert cache.closest_referral("88.118.1") is None
    assert cache.closest_referral("88.119.1") is None


# -- properties ----------------------------------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c", "d", "e"])
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("store"), _keys, st.lists(st.integers(0, 400), min_size=1, max_size=3)),
        st.tuples(st.just("not_found"), _keys),
        st.tuples(st.just("lookup"), _keys),
        st.tuples(st.just("invalidate"), _keys),
        st.tuples(st.just("advance"), st.floats(0, 200)),
    ),
    max_size=60,
)


@given(operations=_operations, max_entries=st.integers(1, 4))
def test_cache_stays_bounded_and_never_serves_expired_as_fresh(
    operations: list[tuple[object, ...]], max_entries: int
) -> None:
    cache, clock = make(max_entries=max_entries, min_ttl=5, max_ttl=300, negative_ttl=30, stale_window=100)
    expiry: dict[str, float] = {}  # the model: when each stored key stops being fresh
    for operation in operations:
        match operation:
            case ("store", str(key), list(ttls)):
                cache.store_answer(key, tuple(value(i + 1, ttl=t) for i, t in enumerate(ttls)))
                expiry[key] = clock.now + min(max(min(ttls), 5), 300)
            case ("not_found", str(key)):
                cache.store_not_found(key)
                expiry[key] = clock.now + 30
            case ("lookup", str(key)):
                found = cache.lookup(key)
                if found is not None:
                    assert entry_of(found).key == key
                    fresh = not isinstance(found, Stale)
                    assert fresh == (clock.now < expiry[key])
                    assert clock.now < expiry[key] + 100
            case ("invalidate", str(key)):
                cache.invalidate(key)
            case ("advance", float(seconds)):
                clock.advance(seconds)
        assert len(cache) <= max_entries
    assert cache.stats.hits + cache.stats.misses == sum(op[0] == "lookup" for op in operations)
