"""Every server the driver asks is in the trace: of an answer, of an unregistered prefix (a "not found"
made of failures), of a failed request, of a stale answer, and of a retry from an expired referral
(resolver.driver over the fake transport and clock, no sockets)."""

from __future__ import annotations

import pytest

from resolver.cache import CacheConfig
from resolver.names import parse_handle
from resolver.resolution import Hop, ResolutionFailed
from resolver.upstream import UpstreamConfig
from tests.resolver.driver_fakes import (
    CARMAKER,
    CARMAKER_MIRROR,
    CHENGDU,
    CHONGQING,
    ROOTS,
    SECONDARY,
    VIN,
    VIN2,
    Reply,
    make,
)

UNREGISTERED = "88.122/Z"


def not_responsible(handle: str) -> Reply:
    return 400, {"responseCode": 301, "handle": handle, "message": "prefix 88.122 is not served here"}


def hops_of(hops: tuple[Hop, ...]) -> list[tuple[str, str]]:
    return [(hop.url, hop.outcome) for hop in hops]


async def test_an_unregistered_prefix_is_not_found_and_its_trace_names_both_top_nodes() -> None:
    resolver, fake, _ = make()
    for root in ROOTS:
        fake.script(root.url, UNREGISTERED, not_responsible(UNREGISTERED))
    resolved = await resolver.resolve(parse_handle(UNREGISTERED))
    assert resolved.cache == "miss" and resolved.entry.values is None
    assert hops_of(resolved.hops) == [(CHONGQING.url, "failure"), (CHENGDU.url, "failure")]
    assert all("not responsible: prefix 88.122 is not served here" in hop.detail for hop in resolved.hops)
    assert [hop.description for hop in resolved.hops] == [CHONGQING.description, CHENGDU.description]


async def test_a_failed_request_carries_every_try_refused_and_timed_out_and_the_referrals_before() -> None:
    resolver, fake, _ = make(upstream=UpstreamConfig(try_timeout=0.1, deadline=2.0))
    fake.refusing.add(CARMAKER.url)
    fake.delays[CARMAKER_MIRROR.url] = 0.5  # past its try timeout
    with pytest.raises(ResolutionFailed) as caught:
        await resolver.resolve(parse_handle(VIN))
    error = caught.value
    assert (error.http_status, error.response_code) == (502, 2)
    assert hops_of(error.hops) == [
        (CHONGQING.url, "referral"),
        (SECONDARY.url, "referral"),
        (CARMAKER.url, "failure"),
        (CARMAKER_MIRROR.url, "failure"),
    ]
    assert "Connection refused" in error.hops[2].detail and "timed out" in error.hops[3].detail
    assert [a.server for a in error.attempts] == [CARMAKER.url, CARMAKER_MIRROR.url]


async def test_a_stale_answer_carries_the_tries_that_failed() -> None:
    resolver, fake, clock = make(CacheConfig(stale_window=3600))
    await resolver.resolve(parse_handle(VIN))
    clock.advance(150)
    fake.refusing |= {CARMAKER.url, CARMAKER_MIRROR.url}
    resolved = await resolver.resolve(parse_handle(VIN))
    assert resolved.cache == "stale"
    assert hops_of(resolved.hops) == [(CARMAKER.url, "failure"), (CARMAKER_MIRROR.url, "failure")]


async def test_a_retry_from_an_expired_referral_keeps_the_first_walks_tries_too() -> None:
    resolver, fake, clock = make(CacheConfig(max_ttl=100, stale_window=3600))
    await resolver.resolve(parse_handle(VIN))
    clock.advance(150)
    fake.refusing |= {s.url for s in (*ROOTS, SECONDARY)}
    resolved = await resolver.resolve(parse_handle(VIN2))
    assert resolved.cache == "miss" and resolved.entry.values is not None
    assert hops_of(resolved.hops) == [(CHONGQING.url, "failure"), (CHENGDU.url, "failure"), (CARMAKER.url, "answer")]

    # Both walks fail: the error is the first walk's (what the tree said), its trace both walks' tries.
    fake.refusing |= {CARMAKER.url, CARMAKER_MIRROR.url}
    with pytest.raises(ResolutionFailed) as caught:
        await resolver.resolve(parse_handle("88.118.8/VIN-THIRD"))
    roots, sites = {CHONGQING.url, CHENGDU.url}, {CARMAKER.url, CARMAKER_MIRROR.url}
    assert {a.server for a in caught.value.attempts} == roots
    hops = hops_of(caught.value.hops)
    assert {url for url, _ in hops[:2]} == roots and {url for url, _ in hops[2:]} == sites
    assert all(outcome == "failure" for _, outcome in hops)
