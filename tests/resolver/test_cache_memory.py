"""How the cache holds answers (issue 12): nothing the cyclic collector tracks per answer, a bounded
number of bytes each, and the values decoded from a stored body equal to the values stored."""

from __future__ import annotations

import gc
import json
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

import resolver.cache
from resolver.bodies import answer_body
from resolver.cache import Cache, CacheConfig, Entry
from resolver.codec import encode
from resolver.values import HandleValue, Reference

STAMP = 1_796_000_000  # late 2026


def car(n: int) -> tuple[str, tuple[HandleValue, ...]]:
    """A record shaped like the benchmarks' cars (``benchmarks/datagen.py``): five values, one timestamp."""
    key = f"88.118.8/VIN-LS5A3CJC9PF{n:06d}"
    values = (
        HandleValue(1, "URL", "string", f"https://automaker.example.cn/vehicles/LS5A3CJC9PF{n:06d}", 86_400, STAMP),
        HandleValue(2, "MODEL", "string", "CQ-EV7", 86_400, STAMP),
        HandleValue(3, "MAKER", "string", "Chongqing Automotive Co., Ltd.", 86_400, STAMP),
        HandleValue(4, "BATCH", "string", f"88.118.8/BATCH-20260114-CQ-{n // 20:06d}", 86_400, STAMP),
        HandleValue(5, "DATE", "string", "2026-01-14", 86_400, STAMP),
    )
    return key, values


def fill(cache: Cache, start: int, count: int) -> None:
    for n in range(start, start + count):
        key, values = car(n)
        cache.store_answer(key, values)
        if n % 3 == 0:
            cache.lookup(key)  # some hit once the slow way, some the hot way, some never
        elif n % 3 == 1:
            cache.served_bytes(key)
    for n in range(start, start + count // 10):
        cache.store_not_found(f"88.118.8/NO-SUCH-{n}")


def test_held_answers_add_no_object_the_collector_tracks() -> None:
    cache = Cache(CacheConfig(max_entries=100_000))
    fill(cache, 0, 1_000)
    gc.collect()
    before = len(gc.get_objects())
    fill(cache, 1_000, 20_000)
    cache.store_referral("88.118.8", car(0)[1])
    gc.collect()
    assert len(cache) == 23_100
    # 22,000 answers held; a handful of objects may come and go around the test itself.
    assert len(gc.get_objects()) - before < 100
    served = cache.served_bytes(car(5_000)[0])
    assert served is not None and not gc.is_tracked(served), "a held answer is invisible to the collector"


def test_once_frozen_the_cache_tables_are_never_walked_again() -> None:
    """What ``nodes.recursive.hotpath.freeze_startup_objects`` relies on: the tables made with the
    cache stay in the permanent generation however they grow, so no collection walks them."""
    cache = Cache(CacheConfig(max_entries=100_000))
    gc.collect()
    gc.freeze()
    try:
        fill(cache, 0, 40_000)
        gc.collect()
        gc.collect()  # a full collection untracks a plain dict of untracked values ...
        fill(cache, 40_000, 100)  # ... and an insert tracked it again, in the youngest generation
        visible = [o for o in gc.get_objects() if isinstance(o, dict | list | set) and len(o) > 1_000]
        assert visible == [], "no table of the cache is in any generation the collector walks"
    finally:
        gc.unfreeze()


def test_an_answer_costs_well_under_one_and_a_half_kilobytes() -> None:
    """The issue's bound: a million answers in under 1.5 GB, the node's other memory included."""
    count = 10_000
    cache = Cache(CacheConfig(max_entries=count * 2))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(cache, 0, count)
        per_answer = (tracemalloc.get_traced_memory()[0] - before) / (count * 1.1)
    finally:
        tracemalloc.stop()
    body = len(encode(answer_body(*car(0)), "application/json"))
    assert per_answer < 1_250, f"{per_answer:.0f} bytes an answer, {body} of them its JSON body"


_characters = st.characters(blacklist_categories=["Cs"])  # no lone surrogates: UTF-8 cannot carry them
_text = st.text(_characters, max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_values = st.builds(
    HandleValue,
    index=st.integers(1, 2**31 - 1),
    type=st.text(_characters, min_size=1, max_size=12),
    format=st.sampled_from(["string", "admin", "vlist", "site", "key"]),
    value=_json,
    ttl=st.integers(0, 2**31 - 1),
    timestamp=st.one_of(st.just(0), st.integers(1, 253_402_300_799)),  # up to the year 9999
    permissions=st.sampled_from(["1110", "1111", "0010", "0011", "1010"]),  # all public-read
    references=st.lists(st.builds(Reference, st.integers(0, 2**31 - 1), _text), max_size=2).map(tuple),
)


@given(values=st.lists(_values, max_size=4))
def test_values_decoded_from_the_stored_body_are_the_values_stored(values: list[HandleValue]) -> None:
    cache = Cache()
    cache.store_answer("88.118.8/X", values)
    entry = cache.lookup("88.118.8/X")  # a first hit: never a Refresh
    assert isinstance(entry, Entry) and entry.values == tuple(values)
    assert json.loads(entry.record[0]) == json.loads(encode(answer_body("88.118.8/X", values), "application/json"))


def test_a_large_cache_is_split_into_shards_and_keeps_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table resizes all at once (an OrderedDict of 700,000 answers took 160 ms): past twice
    ``SHARD_SIZE`` answers the cache is split by key hash, so that growing never pauses the node long.
    It still holds ``max_entries`` answers, and a new one evicts the least recently used of its shard."""
    monkeypatch.setattr(resolver.cache, "SHARD_SIZE", 8)
    cache = Cache(CacheConfig(max_entries=35))  # 4 shards
    held = {key: cache.store_answer(key, car(0)[1]) for key in (car(n)[0] for n in range(100))}
    assert len(cache) == 35 and cache.stats.evictions == 65
    shards: dict[int, list[str]] = {}
    for key, entry in held.items():  # oldest first
        if cache.holds(entry):
            shards.setdefault(hash(key) & 3, []).append(key)
    assert len(shards) == 4 and all(len(keys) >= 2 for keys in shards.values())
    for keys in shards.values():
        for key in keys[:-1]:  # all but the newest of each shard are served again ...
            cache.served_bytes(key)
    newcomers: dict[int, str] = {}
    for key in (car(n)[0] for n in range(100, 200)):  # ... and one new answer goes into each shard
        newcomers.setdefault(hash(key) & 3, key)
    for key in newcomers.values():
        held[key] = cache.store_answer(key, car(0)[1])
    for shard, keys in shards.items():
        gone = [key for key in keys if not cache.holds(held[key])]
        assert gone == [keys[-1]], "the one not used since it was stored"
        assert cache.holds(held[newcomers[shard]])
    assert len(cache) == 35 and cache.stats.evictions == 69
    cache.invalidate(newcomers[0])
    assert len(cache) == 34
