"""This process's own pauses never mark a healthy upstream down (issue 12): ``Pauses`` and
``Upstreams.timed_out`` with a fake clock, a resolution asking again after a spoiled try, and the
driver's loop watch against a deliberately blocking call on a real loop."""

from __future__ import annotations

import asyncio
import time

from resolver.cache import Cache
from resolver.driver import RecursiveResolver
from resolver.errors import FailureKind
from resolver.names import parse_handle
from resolver.resolution import Answer, Failure, Resolution
from resolver.upstream import PAUSE_TICK, Pauses, UpstreamConfig, Upstreams
from tests.fakes import FakeClock
from tests.resolver.driver_fakes import (
    CAR,
    CARMAKER,
    CHONGQING,
    ROOTS,
    VIN,
    FakeTransport,
    answer,
    not_found,
    script_tree,
    wire,
)

URL = CHONGQING.url
TIMED_OUT = "timed out"


def ticking(clock: FakeClock, pauses: Pauses, seconds: float) -> None:
    """The loop watch running undisturbed for ``seconds``."""
    for _ in range(round(seconds / PAUSE_TICK)):
        clock.advance(PAUSE_TICK)
        pauses.tick()


# -- Pauses ----------------------------------------------------------------------------------------------


def test_a_late_tick_is_a_pause_and_one_under_way_counts_too() -> None:
    clock = FakeClock()
    pauses = Pauses(clock)
    assert pauses.paused_since(clock.now - 10) == 0.0, "nothing is known before the first tick"
    pauses.tick()
    ticking(clock, pauses, 1.0)
    assert (pauses.count, pauses.paused_since(clock.now - 1.0)) == (0, 0.0), "on time: no pause"
    started = clock.now
    clock.advance(1.5)  # the loop is blocked: no tick
    assert abs(pauses.paused_since(started) - (1.5 - PAUSE_TICK)) < 1e-9, "under way, not ticked yet"
    pauses.tick()
    ticking(clock, pauses, 0.5)
    assert pauses.count == 1 and abs(pauses.worst - (1.5 - PAUSE_TICK)) < 1e-9
    assert abs(pauses.paused_since(started + 1.0) - 0.5) < 1e-9, "only the part after since"
    assert pauses.paused_since(clock.now - 0.4) == 0.0, "it ended before"


# -- Upstreams.timed_out ---------------------------------------------------------------------------------


def upstreams_with_watch(**config: float) -> tuple[Upstreams, FakeClock]:
    clock = FakeClock()
    upstreams = Upstreams(UpstreamConfig(**config), clock)  # type: ignore[arg-type]
    upstreams.pauses.tick()
    ticking(clock, upstreams.pauses, 1.0)
    return upstreams, clock


def test_a_timeout_during_a_pause_of_this_process_is_not_the_servers_failure() -> None:
    upstreams, clock = upstreams_with_watch(max_fails=2, try_timeout=1.0)
    for _ in range(5):
        ticking(clock, upstreams.pauses, 0.1)  # the try began, then the process stalled 1.5 s
        clock.advance(1.5)
        assert upstreams.timed_out(URL, TIMED_OUT, rtt=1.6, timeout=1.0) > 1.0
    assert not upstreams.is_down(URL) and upstreams.health(URL).fails == 0
    assert upstreams.pauses.excused == 5


def test_a_timeout_the_process_ran_through_still_counts() -> None:
    upstreams, clock = upstreams_with_watch(max_fails=2, try_timeout=1.0)
    ticking(clock, upstreams.pauses, 1.0)  # no pause at all
    assert upstreams.timed_out(URL, TIMED_OUT, rtt=1.0, timeout=1.0) == 0.0
    ticking(clock, upstreams.pauses, 0.9)  # a pause only after 90% of the try: the server had its time
    clock.advance(0.3)
    assert upstreams.timed_out(URL, TIMED_OUT, rtt=1.2, timeout=1.0) == 0.0
    assert upstreams.is_down(URL) and upstreams.health(URL).last_error == TIMED_OUT


def test_a_pause_is_left_out_of_the_rtt_sample() -> None:
    upstreams, clock = upstreams_with_watch()
    upstreams.success(URL, 0.02)
    ticking(clock, upstreams.pauses, 0.01)
    clock.advance(0.5)  # the reply sat in the socket while the process was paused
    upstreams.success(URL, 0.52)
    assert upstreams.health(URL).srtt < 0.03


# -- Resolution ------------------------------------------------------------------------------------------


def test_a_resolution_asks_a_server_again_after_a_try_the_pause_spoiled() -> None:
    upstreams, clock = upstreams_with_watch(max_fails=1)
    resolution = Resolution(parse_handle("88/TOP-1"), (CHONGQING,), upstreams, clock=clock)
    query = resolution.next_query()
    assert query is not None
    clock.advance(1.2)  # paused through the whole try
    resolution.on_outcome(query, Failure(FailureKind.TIMEOUT, TIMED_OUT), 1.2)
    again = resolution.next_query()
    assert again is not None and again.server == CHONGQING, "the only root is asked once more"
    resolution.on_outcome(again, Answer(()), 0.01)
    assert resolution.result == Answer(()) and not upstreams.is_down(URL)
    assert "paused" in resolution.attempts[0].reason and "not held against it" in resolution.hops[0].detail
    # A second spoiled try of the same server is not retried again: the walk stays finite.
    resolution = Resolution(parse_handle("88/TOP-2"), (CHONGQING,), upstreams, clock=clock)
    for _ in range(2):
        query = resolution.next_query()
        assert query is not None
        ticking(clock, upstreams.pauses, 0.01)
        clock.advance(1.0)
        resolution.on_outcome(query, Failure(FailureKind.TIMEOUT, TIMED_OUT), 1.01)
    assert resolution.next_query() is None and resolution.failed is not None
    assert not upstreams.is_down(URL)


# -- the driver's loop watch on a real loop -------------------------------------------------------------


def real_resolver() -> tuple[RecursiveResolver, FakeTransport]:
    fake = FakeTransport()
    script_tree(fake, VIN, answer(VIN, CAR))
    script_tree(fake, "88.118.8/OTHER", not_found("88.118.8/OTHER"))
    upstreams = Upstreams(UpstreamConfig(max_fails=1, try_timeout=0.2, min_try_timeout=0.05))
    resolver = RecursiveResolver(ROOTS, fake, cache=Cache(), upstreams=upstreams)
    fake.delays[CARMAKER.url] = 30.0  # the carmaker's first reply hangs ...

    def on_query(url: str) -> None:
        if url == CARMAKER.url and fake.calls_to(CARMAKER) == 1:
            # ... and meanwhile this process blocks its own loop for half a second.
            asyncio.get_running_loop().call_soon(time.sleep, 0.5)
        elif url == CARMAKER.url:
            fake.delays.pop(CARMAKER.url, None)  # asked again, it answers at once

    fake.on_query = on_query
    return resolver, fake


async def test_a_blocked_loop_marks_no_healthy_upstream_down() -> None:
    resolver, fake = real_resolver()
    watch = asyncio.ensure_future(resolver.probe_forever())  # the loop watch runs with the probes
    try:
        await asyncio.sleep(0.05)
        resolved = await resolver.resolve(parse_handle(VIN))
    finally:
        watch.cancel()
        await resolver.close()
    assert resolved.cache == "miss" and wire(resolved.entry.values) == wire(tuple(CAR))
    assert fake.calls_to(CARMAKER) == 2, "the spoiled try was asked again, at the same server"
    assert not resolver.upstreams.down_servers()
    pauses = resolver.upstreams.pauses
    assert pauses.excused == 1 and pauses.count >= 1 and pauses.worst > 0.4


async def test_without_the_watch_the_same_stall_is_blamed_on_the_server() -> None:
    """The control: what happened before (issue 12), a healthy carmaker marked down for our stall."""
    resolver, _ = real_resolver()
    try:
        resolved = await resolver.resolve(parse_handle(VIN))
    finally:
        await resolver.close()
    assert wire(resolved.entry.values) == wire(tuple(CAR))  # answered by the backup site
    assert resolver.upstreams.down_servers() == [CARMAKER.url]
