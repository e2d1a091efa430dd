"""Single-flight in the driver: concurrent misses for one key share one upstream walk, and a write
acknowledged during a walk starts a new one that later clients join."""

from __future__ import annotations

import asyncio

import pytest

from resolver.names import parse_handle
from tests.resolver.driver_fakes import (
    CAR,
    CARMAKER,
    CHONGQING,
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

# -- single-flight ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_misses_make_one_query_per_level() -> None:
    resolver, fake, _ = make()
    gate = fake.gates[CHONGQING.url] = asyncio.Event()
    clients = [asyncio.create_task(resolver.resolve(parse_handle(VIN))) for _ in range(50)]
    await until(lambda: len(fake.calls) == 1, "the walk reached the root")
    await asyncio.sleep(0.01)  # every client is waiting now
    gate.set()
    results = await asyncio.gather(*clients)
    assert fake.calls == [(CHONGQING.url, VIN), (SECONDARY.url, VIN), (CARMAKER.url, VIN)]
    assert {id(r.entry) for r in results} == {id(results[0].entry)}
    assert all(r.cache == "miss" and wire(r.entry.values) == wire(tuple(CAR)) for r in results)
    assert len(resolver.cache) == 1 and resolver.cache.stats.insertions == 1
    await settle(resolver)
    # Once the walk is over, the next client is a plain cache hit.
    assert (await resolver.resolve(parse_handle(VIN))).cache == "hit" and len(fake.calls) == 3


async def test_a_client_that_goes_away_does_not_cancel_the_walk_others_await() -> None:
    resolver, fake, _ = make()
    gate = fake.gates[CARMAKER.url] = asyncio.Event()
    leaving = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    staying = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await until(lambda: fake.calls_to(CARMAKER) == 1, "the walk reached the enterprise node")
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    gate.set()
    resolved = await staying
    assert resolved.cache == "miss" and wire(resolved.entry.values) == wire(tuple(CAR))
    assert fake.calls_to(CARMAKER) == 1 and len(fake.calls) == 3


async def test_a_walk_whose_only_client_left_still_fills_the_cache() -> None:
    resolver, fake, _ = make()
    gate = fake.gates[CARMAKER.url] = asyncio.Event()
    alone = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await until(lambda: fake.calls_to(CARMAKER) == 1, "the walk reached the enterprise node")
    alone.cancel()
    gate.set()
    await settle(resolver)
    resolved = await resolver.resolve(parse_handle(VIN))
    assert resolved.cache == "hit" and wire(resolved.entry.values) == wire(tuple(CAR))
    assert len(fake.calls) == 3


async def test_a_write_acknowledged_during_a_walk_is_not_undone_by_the_walks_older_answer() -> None:
    resolver, fake, _ = make()
    await resolver.resolve(parse_handle(VIN2))  # the referral to 88.118.8 is cached
    gate = fake.gates[CARMAKER.url] = asyncio.Event()
    before = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await until(lambda: fake.calls_to(CARMAKER) == 2, "the walk read the record on the enterprise node")
    # The write: the enterprise node stores the new value, then the recursive node drops its entry.
    newer = [url_value("https://automaker.example.cn/vehicles/LFV3A23C5K3000417/v2", 100)]
    fake.script(CARMAKER.url, VIN, answer(VIN, newer))
    resolver.invalidate(parse_handle(VIN))  # what the recursive node's write path does
    after = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await asyncio.sleep(0.01)
    gate.set()
    assert wire((await before).entry.values) == wire(tuple(CAR))  # it asked before the write: fine
    assert wire((await after).entry.values) == wire(tuple(newer)), "asked after the write was acknowledged"
    assert wire((await resolver.resolve(parse_handle(VIN))).entry.values) == wire(tuple(newer))


async def test_the_walk_a_write_made_obsolete_does_not_end_the_single_flight_of_the_walk_after_it() -> None:
    # Issue 10: the first walk's completion used to drop the second walk from the in-flight map, so a
    # third client started a duplicate upstream walk.
    resolver, fake, _ = make()
    await resolver.resolve(parse_handle(VIN2))  # the referral to 88.118.8 is cached: one query per walk

    def walks() -> int:
        return fake.calls.count((CARMAKER.url, VIN))

    first_gate = fake.gates[CARMAKER.url] = asyncio.Event()
    client_a = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await until(lambda: walks() == 1, "walk 1 read the record on the enterprise node")
    newer = [url_value("https://automaker.example.cn/vehicles/LFV3A23C5K3000417/v2", 100)]
    fake.script(CARMAKER.url, VIN, answer(VIN, newer))
    resolver.invalidate(parse_handle(VIN))  # a write through this node
    second_gate = fake.gates[CARMAKER.url] = asyncio.Event()
    client_b = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await until(lambda: walks() == 2, "walk 2 read the record on the enterprise node")
    first_gate.set()
    assert wire((await client_a).entry.values) == wire(tuple(CAR)), "walk 1 answers its own client"
    client_c = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await asyncio.sleep(0.01)  # client C joins walk 2 (or starts a walk of its own)
    second_gate.set()
    answered_b, answered_c = await asyncio.gather(client_b, client_c)
    assert walks() == 2, "client C joined walk 2 instead of asking upstream again"
    assert answered_b.entry is answered_c.entry and wire(answered_c.entry.values) == wire(tuple(newer))
    await settle(resolver)


async def test_close_cancels_the_walk_a_write_made_obsolete_too() -> None:
    resolver, fake, _ = make()
    fake.gates[CARMAKER.url] = asyncio.Event()
    client = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await until(lambda: fake.calls_to(CARMAKER) == 1, "the walk reached the enterprise node")
    resolver.invalidate(parse_handle(VIN))  # no later client joins that walk; its own still waits
    await resolver.close()
    with pytest.raises(asyncio.CancelledError):
        await client
    assert len(resolver.cache) == 0
