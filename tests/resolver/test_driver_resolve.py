"""The driver walks the tree, caches answers and referrals, fails over between servers and finds the
primary that takes writes (resolver.driver over a fake transport and a fake clock, no sockets)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from resolver.cache import CacheConfig
from resolver.driver import RecursiveResolver
from resolver.errors import UpstreamError
from resolver.names import parse_handle
from resolver.upstream import UpstreamConfig
from resolver.values import HandleValue
from tests.resolver.driver_fakes import (
    ABSENT,
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
    referral,
    script_top,
    sites,
    until,
    wire,
)

# -- walking, and what the cache saves -------------------------------------------------------------------


async def test_three_level_walk_then_a_cache_hit_without_any_query() -> None:
    resolver, fake, _ = make()
    resolved = await resolver.resolve(parse_handle(VIN))
    assert resolved.cache == "miss"
    assert wire(resolved.entry.values) == wire(tuple(CAR))
    assert fake.calls == [(CHONGQING.url, VIN), (SECONDARY.url, VIN), (CARMAKER.url, VIN)]
    assert [(h.url, h.outcome, h.detail) for h in resolved.hops] == [
        (CHONGQING.url, "referral", "88.118"),
        (SECONDARY.url, "referral", "88.118.8"),
        (CARMAKER.url, "answer", ""),
    ]
    assert [h.description for h in resolved.hops] == [
        CHONGQING.description,
        SECONDARY.description,
        CARMAKER.description,
    ]

    again = await resolver.resolve(parse_handle(VIN))
    assert again.cache == "hit" and again.entry == resolved.entry and again.hops == ()
    assert len(fake.calls) == 3, "a cache hit must not touch the transport"
    assert (resolver.cache.stats.hits, resolver.cache.stats.misses) == (1, 1)


async def test_the_answer_ttl_is_the_smallest_value_ttl() -> None:
    resolver, _, clock = make()
    resolved = await resolver.resolve(parse_handle(VIN))
    assert resolved.entry.ttl == 100 and resolved.entry.expires == clock.now + 100


async def test_a_second_handle_under_the_same_enterprise_goes_straight_to_its_node() -> None:
    resolver, fake, _ = make()
    await resolver.resolve(parse_handle(VIN))
    fake.calls.clear()
    resolved = await resolver.resolve(parse_handle(VIN2))
    assert resolved.cache == "miss" and wire(resolved.entry.values) == [
        (1, "URL", "https://automaker.example.cn/vehicles/418")
    ]
    assert fake.calls == [(CARMAKER.url, VIN2)], "the cached referral to 88.118.8 skips the root and the secondary"


async def test_not_found_is_cached_as_a_negative_answer() -> None:
    resolver, fake, clock = make(CacheConfig(negative_ttl=30))
    resolved = await resolver.resolve(parse_handle(ABSENT))
    assert resolved.cache == "miss" and resolved.entry.values is None
    assert [h.outcome for h in resolved.hops] == ["referral", "referral", "not found"]
    calls = len(fake.calls)
    for _ in range(3):
        again = await resolver.resolve(parse_handle(ABSENT))
        assert again.cache == "hit" and again.entry.values is None
    assert len(fake.calls) == calls
    assert resolver.cache.stats.negative_hits == 3
    clock.advance(30)  # the negative TTL is over: ask again, straight at the enterprise node
    again = await resolver.resolve(parse_handle(ABSENT))
    assert again.cache == "miss" and fake.calls[calls:] == [(CARMAKER.url, ABSENT)]


# -- failover, health and probes -------------------------------------------------------------------------


async def test_failover_to_the_second_root_within_one_resolve() -> None:
    resolver, fake, _ = make()
    fake.refusing.add(CHONGQING.url)
    resolved = await resolver.resolve(parse_handle(VIN))
    assert resolved.cache == "miss" and wire(resolved.entry.values) == wire(tuple(CAR))
    assert fake.calls == [(CHONGQING.url, VIN), (CHENGDU.url, VIN), (SECONDARY.url, VIN), (CARMAKER.url, VIN)]
    assert [(h.url, h.outcome) for h in resolved.hops] == [
        (CHONGQING.url, "failure"),
        (CHENGDU.url, "referral"),
        (SECONDARY.url, "referral"),
        (CARMAKER.url, "answer"),
    ]
    assert "Connection refused" in resolved.hops[0].detail


async def test_a_failing_root_is_marked_down_and_probed_back_then_preferred_again() -> None:
    config = UpstreamConfig(max_fails=2, probe_interval=0.01)
    resolver, fake, _ = make(upstream=config)
    script_top(fake, "88/A", "88/B", "88/C", "88/D")
    fake.refusing.add(CHONGQING.url)
    # A measurably slower stand-in (SRTT >= 10 ms, 15 ms with the mirror penalty): the primary is tried
    # again until it is marked down, and wins on SRTT once it is back.
    fake.delays[CHENGDU.url] = 0.01
    for handle in ("88/A", "88/B"):
        resolved = await resolver.resolve(parse_handle(handle))
        assert resolved.cache == "miss" and [h.outcome for h in resolved.hops] == ["failure", "answer"]
    assert resolver.upstreams.down_servers() == [CHONGQING.url]

    # While it is down, the mirror is asked first and the down primary not at all.
    fake.calls.clear()
    await resolver.resolve(parse_handle("88/C"))
    assert fake.calls == [(CHENGDU.url, "88/C")]

    probes = asyncio.create_task(resolver.probe_forever())
    try:
        await until(lambda: fake.probes.count(CHONGQING.url) >= 2, "the down root is probed")
        assert resolver.upstreams.is_down(CHONGQING.url), "a failed probe keeps it down"
        fake.refusing.discard(CHONGQING.url)
        fake.healthy.add(CHONGQING.url)
        await until(lambda: not resolver.upstreams.is_down(CHONGQING.url), "the root is probed back up")
        probed = len(fake.probes)
        await asyncio.sleep(0.05)
        assert len(fake.probes) == probed, "servers that are up are not probed"
        assert set(fake.probes) == {CHONGQING.url}
    finally:
        probes.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probes

    fake.calls.clear()
    resolved = await resolver.resolve(parse_handle("88/D"))
    assert fake.calls == [(CHONGQING.url, "88/D")], "the recovered primary is preferred again"
    assert [(h.url, h.outcome) for h in resolved.hops] == [(CHONGQING.url, "answer")]


async def test_the_deadline_follows_the_resolvers_clock() -> None:
    resolver, fake, clock = make(upstream=UpstreamConfig(deadline=3.0, try_timeout=2.0))
    fake.refusing.add(CHONGQING.url)

    def slow(url: str) -> None:
        clock.advance(1.5)  # every try takes 1.5 s of the resolver's time

    fake.on_query = slow
    with pytest.raises(UpstreamError) as caught:
        await resolver.resolve(parse_handle(VIN))
    assert fake.calls == [(CHONGQING.url, VIN), (CHENGDU.url, VIN)], "no try is started once the budget is spent"
    assert fake.timeouts[1] <= 1.5, "a try never gets more than the time left"
    assert "deadline of 3 s passed" in caught.value.message and CHONGQING.url in caught.value.message


# -- locate ----------------------------------------------------------------------------------------------


async def test_locate_returns_the_primary_servers_of_the_answering_node() -> None:
    resolver, fake, _ = make()
    located = await resolver.locate(parse_handle(VIN))
    assert located.primary_servers == (CARMAKER,), "the carmaker's backup site takes no writes"
    assert located.prefix == "88.118.8" and located.answered_by == CARMAKER
    assert len(resolver.cache) == 0, "locate caches delegations, not answers"
    fake.calls.clear()
    again = await resolver.locate(parse_handle(VIN2))
    assert again.primary_servers == (CARMAKER,) and fake.calls == [(CARMAKER.url, VIN2)]

    await resolver.resolve(parse_handle(VIN))
    fake.calls.clear()
    await resolver.locate(parse_handle(VIN))
    assert fake.calls == [(CARMAKER.url, VIN)], "locate bypasses the answer cache"

    script_top(fake, "88/A")
    top = await resolver.locate(parse_handle("88/A"))
    assert top.primary_servers == (CHONGQING,) and top.prefix is None


async def test_locate_raises_when_the_owner_cannot_be_reached() -> None:
    resolver, fake, _ = make()
    fake.refusing |= {CARMAKER.url, CARMAKER_MIRROR.url}
    with pytest.raises(UpstreamError) as caught:
        await resolver.locate(parse_handle(VIN))
    assert [a.server for a in caught.value.attempts] == [CARMAKER.url, CARMAKER_MIRROR.url]
    assert f"{CARMAKER.url}: cannot connect" in caught.value.message, caught.value.message


async def test_close_cancels_a_walk_in_flight() -> None:
    resolver, fake, _ = make()
    fake.gates[CARMAKER.url] = asyncio.Event()
    client = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await until(lambda: fake.calls_to(CARMAKER) == 1, "the walk reached the enterprise node")
    await resolver.close()
    with pytest.raises(asyncio.CancelledError):
        await client
    assert len(resolver.cache) == 0


# -- prefix handles --------------------------------------------------------------------------------------


DELEGATION = "0.NA/88.118.8"


def admin(handle: str, index: int) -> HandleValue:
    return HandleValue(100, "HS_ADMIN", "admin", {"handle": handle, "index": index, "permissions": "011111110011"})


async def _resolve_delegation(warm: Callable[[RecursiveResolver], Awaitable[Any]]) -> tuple[list[str], Any]:
    resolver, fake, _ = make()
    on_parent = [*sites(CARMAKER, CARMAKER_MIRROR), admin("0.NA/88.118", 200)]
    on_child = [admin(DELEGATION, 200)]
    for root in ROOTS:
        fake.script(root.url, DELEGATION, referral(DELEGATION, "88.118", SECONDARY))
    # The parent keeps the delegation record (nodes.zone: "lives here, with the parent"); the child
    # has its own prefix handle under the same name.
    fake.script(SECONDARY.url, DELEGATION, answer(DELEGATION, on_parent))
    fake.script(CARMAKER.url, DELEGATION, answer(DELEGATION, on_child))
    await warm(resolver)
    fake.calls.clear()
    resolved = await resolver.resolve(parse_handle(DELEGATION))
    return [url for url, _ in fake.calls], wire(resolved.entry.values)


async def test_a_prefix_handle_resolves_at_the_parent_that_holds_the_delegation() -> None:
    async def nothing(resolver: RecursiveResolver) -> None:
        return None

    calls, values = await _resolve_delegation(nothing)
    assert calls == [CHONGQING.url, SECONDARY.url]
    assert values is not None and values[0][1] == "HS_SITE"


async def test_a_prefix_handle_resolves_at_the_parent_even_when_its_own_referral_is_cached() -> None:
    async def warm(resolver: RecursiveResolver) -> None:
        await resolver.resolve(parse_handle(VIN))  # caches the referral to 88.118.8

    calls, values = await _resolve_delegation(warm)
    assert calls == [SECONDARY.url], "the cached referral to 88.118 is the closest one holding 0.NA/88.118.8"
    assert values is not None and values[0][1] == "HS_SITE"
