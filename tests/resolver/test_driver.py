"""The recursive resolver's async driver (resolver.driver) over a fake transport and a fake clock, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from resolver.cache import Cache, CacheConfig
from resolver.driver import RecursiveResolver, TransportError
from resolver.errors import UpstreamError
from resolver.names import parse_handle
from resolver.sites import SiteServer, site_data
from resolver.upstream import UpstreamConfig, Upstreams
from resolver.values import HandleValue, value_to_wire
from tests.fakes import FakeClock

HOST = "127.0.0.1"
CHONGQING = SiteServer(f"http://{HOST}:8100", True, "National top-level node, Chongqing")
CHENGDU = SiteServer(f"http://{HOST}:8101", False, "Top-level hosting node, Chengdu")
ROOTS = (CHONGQING, CHENGDU)
SECONDARY = SiteServer(f"http://{HOST}:8200", True, "Automotive secondary node")
CARMAKER = SiteServer(f"http://{HOST}:8300", True, "Carmaker enterprise node")
CARMAKER_MIRROR = SiteServer(f"http://{HOST}:8301", False, "Carmaker backup node")

VIN = "88.118.8/VIN-LFV3A23C5K3000417"
VIN2 = "88.118.8/VIN-LFV3A23C5K3000418"
ABSENT = "88.118.8/NO-SUCH-CAR"

Reply = tuple[int, Mapping[str, Any]]


class FakeTransport:
    """Scripted replies per (url, handle); counts calls; can fail a server, hold it on an Event or slow it down."""

    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], Reply] = {}
        self.calls: list[tuple[str, str]] = []
        self.timeouts: list[float] = []
        self.refusing: set[str] = set()  # every query to these raises TransportError
        self.gates: dict[str, asyncio.Event] = {}  # queries to these wait for the event first
        self.delays: dict[str, float] = {}  # real seconds a reply takes (the driver times tries itself)
        self.on_query: Callable[[str], None] | None = None
        self.healthy: set[str] = set()  # probes of these succeed
        self.probes: list[str] = []

    def script(self, url: str, handle: str, reply: Reply) -> None:
        self.replies[(url, handle)] = reply

    def calls_to(self, server: SiteServer) -> int:
        return sum(1 for url, _ in self.calls if url == server.url)

    async def query(self, url: str, handle: str, timeout: float) -> Reply:
        self.calls.append((url, handle))
        self.timeouts.append(timeout)
        if self.on_query is not None:
            self.on_query(url)
        # The node reads the record when the query arrives; a gate or a delay holds back only the reply.
        reply = self.replies.get((url, handle))
        gate = self.gates.get(url)
        if gate is not None:
            await gate.wait()
        if url in self.delays:
            await asyncio.sleep(self.delays[url])
        if url in self.refusing:
            raise TransportError(f"cannot connect to {url} (Connection refused)")
        if reply is None:
            raise AssertionError(f"unscripted query for {handle} to {url}")
        return reply

    async def probe(self, url: str, timeout: float) -> bool:
        self.probes.append(url)
        return url in self.healthy


# -- bodies exactly as nodes.authoritative.app writes them -------------------------------------------------


def sites(*servers: SiteServer, ttl: int = 86_400) -> list[HandleValue]:
    values = []
    for i, server in enumerate(servers, start=1):
        port = int(server.url.rsplit(":", 1)[1])
        data = site_data(HOST, port, primary=server.primary, description=server.description)
        values.append(HandleValue(i, "HS_SITE", "site", data, ttl))
    return values


def referral(handle: str, prefix: str, *servers: SiteServer) -> Reply:
    return 300, {
        "responseCode": 303,
        "handle": handle,
        "prefix": prefix,
        "message": f"prefix {prefix} is delegated: ask one of its sites",
        "values": [value_to_wire(v) for v in sites(*servers)],
    }


def answer(handle: str, values: list[HandleValue]) -> Reply:
    return 200, {"responseCode": 1, "handle": handle, "values": [value_to_wire(v) for v in values]}


def not_found(handle: str) -> Reply:
    return 404, {"responseCode": 100, "handle": handle, "message": "Handle Not Found"}


def url_value(url: str, ttl: int = 3600) -> HandleValue:
    return HandleValue(1, "URL", "string", url, ttl)


CAR = [
    url_value("https://automaker.example.cn/vehicles/LFV3A23C5K3000417", 100),
    HandleValue(2, "MODEL", "string", "CQ-EV7"),
]


def wire(values: tuple[HandleValue, ...] | None) -> list[tuple[int, str, Any]] | None:
    return None if values is None else [(v.index, v.type, v.value) for v in values]


def script_tree(fake: FakeTransport, handle: str, final: Reply) -> None:
    """Roots refer to the secondary, the secondary to the carmaker (primary and backup site), which answer ``final``."""
    for root in ROOTS:
        fake.script(root.url, handle, referral(handle, "88.118", SECONDARY))
    fake.script(SECONDARY.url, handle, referral(handle, "88.118.8", CARMAKER, CARMAKER_MIRROR))
    fake.script(CARMAKER.url, handle, final)
    fake.script(CARMAKER_MIRROR.url, handle, final)


def make(
    cache: CacheConfig | None = None, upstream: UpstreamConfig | None = None
) -> tuple[RecursiveResolver, FakeTransport, FakeClock]:
    clock = FakeClock()
    fake = FakeTransport()
    resolver = RecursiveResolver(
        ROOTS,
        fake,
        cache=Cache(cache or CacheConfig(), clock=clock),
        upstreams=Upstreams(upstream or UpstreamConfig(), clock=clock),
        clock=clock,
    )
    script_tree(fake, VIN, answer(VIN, CAR))
    script_tree(fake, VIN2, answer(VIN2, [url_value("https://automaker.example.cn/vehicles/418")]))
    script_tree(fake, ABSENT, not_found(ABSENT))
    return resolver, fake, clock


async def eventually(check: Callable[[], bool], what: str, within: float = 2.0) -> None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(0.005)


async def settle(resolver: RecursiveResolver) -> None:
    """Let background refreshes and walks nobody awaits any more run to the end."""
    await eventually(lambda: not resolver._background and not resolver._inflight, "background work finished")


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
    assert again.cache == "hit" and again.entry is resolved.entry and again.hops == ()
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


# -- single-flight ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_misses_make_one_query_per_level() -> None:
    resolver, fake, _ = make()
    gate = fake.gates[CHONGQING.url] = asyncio.Event()
    clients = [asyncio.create_task(resolver.resolve(parse_handle(VIN))) for _ in range(50)]
    await eventually(lambda: len(fake.calls) == 1, "the walk reached the root")
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
    await eventually(lambda: fake.calls_to(CARMAKER) == 1, "the walk reached the enterprise node")
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
    await eventually(lambda: fake.calls_to(CARMAKER) == 1, "the walk reached the enterprise node")
    alone.cancel()
    gate.set()
    await settle(resolver)
    resolved = await resolver.resolve(parse_handle(VIN))
    assert resolved.cache == "hit" and wire(resolved.entry.values) == wire(tuple(CAR))
    assert len(fake.calls) == 3


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
    await eventually(lambda: fake.calls_to(CARMAKER) == 2, "the background refresh started")
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
    assert resolved.cache == "stale" and resolved.entry is first.entry
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
    assert [url for url, _ in error.attempts] == [CARMAKER.url, CARMAKER_MIRROR.url]
    assert CARMAKER.url in error.message and CARMAKER_MIRROR.url in error.message
    assert "Connection refused" in error.message and error.handle == VIN
    assert (error.http_status, error.response_code) == (502, 2)
    assert resolver.cache.stats.stale_served == 0

    # Once the delegations are gone as well, the walk starts again at the roots: both are named.
    clock.advance(200_000)
    with pytest.raises(UpstreamError) as caught:
        await resolver.resolve(parse_handle(VIN))
    assert [url for url, _ in caught.value.attempts] == [CHONGQING.url, CHENGDU.url]
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


# -- failover, health and probes -------------------------------------------------------------------------


def script_top(fake: FakeTransport, *handles: str) -> None:
    """Handles directly under 88: the top-level node answers them itself."""
    for handle in handles:
        for root in ROOTS:
            fake.script(root.url, handle, answer(handle, [url_value(f"https://top.example.cn/{handle}")]))


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
        await eventually(lambda: fake.probes.count(CHONGQING.url) >= 2, "the down root is probed")
        assert resolver.upstreams.is_down(CHONGQING.url), "a failed probe keeps it down"
        fake.refusing.discard(CHONGQING.url)
        fake.healthy.add(CHONGQING.url)
        await eventually(lambda: not resolver.upstreams.is_down(CHONGQING.url), "the root is probed back up")
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
    assert [url for url, _ in caught.value.attempts] == [CARMAKER.url, CARMAKER_MIRROR.url]


async def test_close_cancels_a_walk_in_flight() -> None:
    resolver, fake, _ = make()
    fake.gates[CARMAKER.url] = asyncio.Event()
    client = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await eventually(lambda: fake.calls_to(CARMAKER) == 1, "the walk reached the enterprise node")
    await resolver.close()
    with pytest.raises(asyncio.CancelledError):
        await client
    assert len(resolver.cache) == 0


async def test_a_write_acknowledged_during_a_walk_is_not_undone_by_the_walks_older_answer() -> None:
    resolver, fake, _ = make()
    await resolver.resolve(parse_handle(VIN2))  # the referral to 88.118.8 is cached
    gate = fake.gates[CARMAKER.url] = asyncio.Event()
    before = asyncio.create_task(resolver.resolve(parse_handle(VIN)))
    await eventually(lambda: fake.calls_to(CARMAKER) == 2, "the walk read the record on the enterprise node")
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
