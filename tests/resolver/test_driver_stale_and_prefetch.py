"""Prefetch of hot entries near expiry and serve-stale when every upstream fails (RFC 8767), in the driver."""

from __future__ import annotations

import asyncio

import pytest

from resolver.cache import CacheConfig
from resolver.errors import UpstreamError
from resolver.names import parse_handle
from tests.resolver.driver_fakes import (
    CAR,
    CARMAKER,
    CARMAKER_MIRROR,
    CHENGDU,
    CHONGQING,
    ROOTS,
    SECONDARY,
    VIN,
    VIN2,
    answer,
    make,
    settle,
    until,
    url_value,
    wire,
)

# -- prefetch and serve-stale ----------------------------------------------------------------------------


async def test_a_hot_entry_near_expiry_is_answered_at_once_and_refreshed_in_the_background_once() -> None:
    resolver, fake, clock = make(CacheConfig(prefetch_fraction=0.1, prefetch_min_hits=2))
    await resolver.resolve(parse_handle(VIN))  # TTL 100 s: prefetch from 90 s on
    clock.advance(50)
    assert (await resolver.resolve(parse_handle(VIN))).cache == "hit"
    newer = [url_value("https://automaker.example.cn/vehicles/LFV3A23C5K3000417/v2", 100)]
    fake.script(CARMAKER.url, VIN, answer(VIN, newer))
    gate = fake.gates[CARMAKER.url] = asyncio.Event()
    clock.advance(45)
    # The refresh hangs on the gate, yet the client is answered from the cache right away.
    resolved = await asyncio.wait_for(resolver.resolve(parse_handle(VIN)), timeout=0.5)
    assert resolved.cache == "hit" and wire(resolved.entry.values) == wire(tuple(CAR))
    await until(lambda: fake.calls_to(CARMAKER) == 2, "the background refresh started")
    for _ in range(20):  # more hot hits while it runs start nothing more
        again = await resolver.resolve(parse_handle(VIN))
        assert again.cache == "hit" and wire(again.entry.values) == wire(tuple(CAR))
    gate.set()
    await settle(resolver)
    refreshed = await resolver.resolve(parse_handle(VIN))
    assert refreshed.cache == "hit" and wire(refreshed.entry.values) == wire(tuple(newer))
    assert refreshed.entry.expires == clock.now + 100
    assert fake.calls_to(CARMAKER) == 2 and len(fake.calls) == 4, "exactly one refresh, straight to the enterprise"
    assert resolver.cache.stats.prefetches == 1


async def test_a_failed_prefetch_keeps_serving_the_entry_until_it_expires() -> None:
    resolver, fake, clock = make()
    await resolver.resolve(parse_handle(VIN))
    await resolver.resolve(parse_handle(VIN))
    fake.refusing |= {CARMAKER.url, CARMAKER_MIRROR.url}
    clock.advance(95)
    assert (await resolver.resolve(parse_handle(VIN))).cache == "hit"
    await settle(resolver)
    assert fake.calls[3:] == [(CARMAKER.url, VIN), (CARMAKER_MIRROR.url, VIN)]
    assert (await resolver.resolve(parse_handle(VIN))).cache == "hit"
    assert len(fake.calls) == 5, "one refresh per entry, even a failed one"


async def test_serve_stale_when_every_upstream_fails() -> None:
    resolver, fake, clock = make(CacheConfig(stale_window=3600))
    first = await resolver.resolve(parse_handle(VIN))
    clock.advance(150)  # expired 50 s ago, well inside the stale window
    fake.refusing |= {s.url for s in (*ROOTS, SECONDARY, CARMAKER, CARMAKER_MIRROR)}
    resolved = await resolver.resolve(parse_handle(VIN))
    assert resolved.cache == "stale" and resolved.entry == first.entry
    assert wire(resolved.entry.values) == wire(tuple(CAR))
    assert fake.calls[3:] == [(CARMAKER.url, VIN), (CARMAKER_MIRROR.url, VIN)], "both enterprise sites were tried"
    assert resolver.cache.stats.stale_served == 1
    await resolver.resolve(parse_handle(VIN))
    assert resolver.cache.stats.stale_served == 2


async def test_an_expired_entry_is_replaced_when_upstream_answers() -> None:
    resolver, fake, clock = make()
    await resolver.resolve(parse_handle(VIN))
    clock.advance(150)
    resolved = await resolver.resolve(parse_handle(VIN))
    assert resolved.cache == "miss" and resolver.cache.stats.stale_served == 0
    assert fake.calls[3:] == [(CARMAKER.url, VIN)]


async def test_beyond_the_stale_window_the_error_names_every_server_tried() -> None:
    resolver, fake, clock = make(CacheConfig(stale_window=60))
    await resolver.resolve(parse_handle(VIN))
    fake.refusing |= {s.url for s in (*ROOTS, SECONDARY, CARMAKER, CARMAKER_MIRROR)}
    clock.advance(100 + 61)
    with pytest.raises(UpstreamError) as caught:
        await resolver.resolve(parse_handle(VIN))
    error = caught.value
    assert [a.server for a in error.attempts] == [CARMAKER.url, CARMAKER_MIRROR.url]
    assert CARMAKER.url in error.message and CARMAKER_MIRROR.url in error.message
    assert "Connection refused" in error.message and error.handle == VIN
    assert (error.http_status, error.response_code) == (502, 2)
    assert resolver.cache.stats.stale_served == 0

    # Once the delegations are gone as well, the walk starts again at the roots: both are named.
    clock.advance(200_000)
    with pytest.raises(UpstreamError) as caught:
        await resolver.resolve(parse_handle(VIN))
    assert [a.server for a in caught.value.attempts] == [CHONGQING.url, CHENGDU.url]
    assert CHONGQING.url in caught.value.message and CHENGDU.url in caught.value.message
    assert "top-level node" in caught.value.message


async def test_expired_referrals_are_used_when_the_tree_above_is_unreachable() -> None:
    # RFC 8767 for delegations: the top and secondary are down, the enterprise node is up, and the
    # referral to it has expired but is inside the stale window: a new handle still resolves.
    resolver, fake, clock = make(CacheConfig(max_ttl=100, stale_window=3600))
    await resolver.resolve(parse_handle(VIN))
    clock.advance(150)
    fake.refusing |= {s.url for s in (*ROOTS, SECONDARY)}
    fake.calls.clear()
    resolved = await resolver.resolve(parse_handle(VIN2))
    assert resolved.cache == "miss" and resolved.entry.values is not None
    assert [url for url, _ in fake.calls] == [CHONGQING.url, CHENGDU.url, CARMAKER.url]
