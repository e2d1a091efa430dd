"""The resolution state machine and reply classification (resolver.resolution), no sockets, a fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.errors import Attempt, FailureKind, UpstreamError
from resolver.names import is_under, parse_handle
from resolver.resolution import (
    Answer,
    Failure,
    Hop,
    NotFound,
    Outcome,
    Query,
    Referral,
    Resolution,
    classify,
)
from resolver.sites import SiteServer, site_value
from resolver.upstream import UpstreamConfig, Upstreams
from resolver.values import HandleValue, value_to_wire
from tests.fakes import FakeClock

CHONGQING = SiteServer("http://127.0.0.1:8100", True, "Chongqing top")
CHENGDU = SiteServer("http://127.0.0.1:8101", False, "Chengdu top")
ROOTS = [CHONGQING, CHENGDU]
SECONDARY = SiteServer("http://127.0.0.1:8200", True, "Automotive")
ENTERPRISE = SiteServer("http://127.0.0.1:8300", True, "Carmaker")
VIN = parse_handle("88.118.8/VIN-1")
URL_VALUE = HandleValue(1, "URL", "string", "https://example.com/vin-1", 3600)


def sites(*servers: SiteServer) -> list[HandleValue]:
    out = []
    for i, s in enumerate(servers, 1):
        port = int(s.url.rsplit(":", 1)[1])
        out.append(site_value(i, "127.0.0.1", port, primary=s.primary, description=s.description))
    return out


def referral_body(prefix: str, *servers: SiteServer) -> dict[str, Any]:
    return {
        "responseCode": 303,
        "handle": VIN.text,
        "prefix": prefix,
        "message": f"prefix {prefix} is delegated: ask one of its sites",
        "values": [value_to_wire(v) for v in sites(*servers)],
    }


ANSWER = (200, {"responseCode": 1, "handle": VIN.text, "values": [value_to_wire(URL_VALUE)]})
NOT_FOUND = (404, {"responseCode": 100, "handle": VIN.text, "message": "Handle Not Found"})
TO_SECONDARY = (300, referral_body("88.118", SECONDARY))
TO_ENTERPRISE = (300, referral_body("88.118.8", ENTERPRISE))
REFUSED = Failure(FailureKind.CANNOT_CONNECT, "cannot connect (Connection refused)")
TIMED_OUT = Failure(FailureKind.TIMEOUT, "timed out")

Reply = tuple[int, Mapping[str, Any]] | Failure


def make(
    clock: FakeClock | None = None, config: UpstreamConfig | None = None, **kw: Any
) -> tuple[Resolution, Upstreams, FakeClock]:
    clock = clock or FakeClock(100.0)
    upstreams = Upstreams(config or UpstreamConfig(), clock=clock)
    return Resolution(VIN, ROOTS, upstreams, clock=clock, **kw), upstreams, clock


def drive(r: Resolution, clock: FakeClock, script: Mapping[str, Sequence[Reply]], rtt: float = 0.01) -> list[Query]:
    """The driver loop, with each server's replies scripted in order; returns the queries sent."""
    queries = []
    pending = {url: list(replies) for url, replies in script.items()}
    while (q := r.next_query()) is not None:
        queries.append(q)
        reply = pending[q.server.url].pop(0)
        clock.now += min(rtt, q.timeout)
        outcome = reply if isinstance(reply, Failure) else classify(*reply)
        r.on_outcome(q, outcome, min(rtt, q.timeout))
    return queries


# -- walking the tree ------------------------------------------------------------------------------


def test_three_level_walk_ends_in_an_answer() -> None:
    r, _, clock = make()
    script: dict[str, list[Reply]] = {
        CHONGQING.url: [TO_SECONDARY],
        SECONDARY.url: [TO_ENTERPRISE],
        ENTERPRISE.url: [ANSWER],
    }
    queries = drive(r, clock, script)
    assert [q.server for q in queries] == [CHONGQING, SECONDARY, ENTERPRISE]
    assert all(q.handle == "88.118.8/VIN-1" for q in queries)
    assert r.result == Answer((URL_VALUE,))
    assert r.failed is None and r.finished
    assert [ref.prefix for ref in r.referrals] == ["88.118", "88.118.8"]
    assert r.referrals[1].servers == [ENTERPRISE]
    assert r.hops == [
        Hop(CHONGQING.url, "Chongqing top", "referral", pytest.approx(10.0), "88.118"),  # type: ignore[arg-type]
        Hop(SECONDARY.url, "Automotive", "referral", pytest.approx(10.0), "88.118.8"),  # type: ignore[arg-type]
        Hop(ENTERPRISE.url, "Carmaker", "answer", pytest.approx(10.0)),  # type: ignore[arg-type]
    ]
    assert r.answered_by == ENTERPRISE
    assert r.primary_servers == (ENTERPRISE,)
    assert r.prefix == "88.118.8"
    assert r.next_query() is None  # finished stays finished


def test_starting_from_a_cached_referral_skips_levels() -> None:
    r, _, clock = make(start=("88.118.8", [ENTERPRISE]))
    queries = drive(r, clock, {ENTERPRISE.url: [ANSWER]})
    assert [q.server for q in queries] == [ENTERPRISE]
    assert r.result == Answer((URL_VALUE,))
    assert r.referrals == []


def test_start_must_cover_the_handle() -> None:
    with pytest.raises(ValueError, match="does not cover"):
        make(start=("88.119", [SECONDARY]))


def test_not_found_finishes() -> None:
    r, _, clock = make(start=("88.118", [SECONDARY]))
    drive(r, clock, {SECONDARY.url: [TO_ENTERPRISE], ENTERPRISE.url: [NOT_FOUND]})
    assert r.result == NotFound()
    assert r.failed is None
    assert [h.outcome for h in r.hops] == ["referral", "not found"]


def test_values_filtered_to_nothing_is_an_empty_answer() -> None:
    r, _, clock = make(start=("88.118.8", [ENTERPRISE]))
    drive(r, clock, {ENTERPRISE.url: [(200, {"responseCode": 200, "handle": VIN.text, "values": []})]})
    assert r.result == Answer(())


def test_failed_top_server_fails_over_to_the_mirror_in_the_same_request() -> None:
    r, upstreams, clock = make()
    script: dict[str, list[Reply]] = {
        CHONGQING.url: [REFUSED],
        CHENGDU.url: [TO_SECONDARY],
        SECONDARY.url: [TO_ENTERPRISE],
        ENTERPRISE.url: [ANSWER],
    }
    queries = drive(r, clock, script)
    assert [q.server for q in queries] == [CHONGQING, CHENGDU, SECONDARY, ENTERPRISE]
    assert r.result == Answer((URL_VALUE,))
    refused = "cannot connect (Connection refused)"
    assert r.hops[0] == Hop(CHONGQING.url, "Chongqing top", "failure", pytest.approx(10.0), refused)  # type: ignore[arg-type]
    assert r.hops[1].description == "Chengdu top"
    assert upstreams.health(CHONGQING.url).fails == 1
    assert upstreams.health(CHENGDU.url).successes == 1


def test_after_max_fails_the_mirror_is_asked_first_then_the_recovered_primary_again() -> None:
    clock = FakeClock(100.0)
    upstreams = Upstreams(UpstreamConfig(), clock=clock)
    for _ in range(2):
        r = Resolution(VIN, ROOTS, upstreams, start=None, clock=clock)
        drive(r, clock, {CHONGQING.url: [REFUSED], CHENGDU.url: [TO_SECONDARY], SECONDARY.url: [NOT_FOUND]})
    assert upstreams.down_servers() == [CHONGQING.url]
    r = Resolution(VIN, ROOTS, upstreams, clock=clock)
    queries = drive(r, clock, {CHENGDU.url: [TO_SECONDARY], SECONDARY.url: [NOT_FOUND]})
    assert queries[0].server == CHENGDU
    upstreams.success(CHONGQING.url, 0.01)  # the driver's probe got an answer
    r = Resolution(VIN, ROOTS, upstreams, clock=clock)
    queries = drive(r, clock, {CHONGQING.url: [TO_SECONDARY], SECONDARY.url: [NOT_FOUND]})
    assert queries[0].server == CHONGQING


def test_all_servers_of_a_step_fail_and_the_error_lists_each_attempt() -> None:
    r, _, clock = make()
    script: dict[str, list[Reply]] = {
        CHONGQING.url: [REFUSED],
        CHENGDU.url: [(503, {"responseCode": 3, "message": "busy"})],
    }
    queries = drive(r, clock, script)
    assert len(queries) == 2
    assert r.result is None
    assert isinstance(r.failed, UpstreamError)
    assert r.failed.attempts == (
        Attempt(CHONGQING.url, FailureKind.CANNOT_CONNECT, "cannot connect (Connection refused)"),
        Attempt(CHENGDU.url, FailureKind.SERVER_ERROR, "HTTP 503, responseCode 3: busy"),
    )
    assert "every server for the top-level node failed" in r.failed.message
    assert CHONGQING.url in r.failed.message and CHENGDU.url in r.failed.message
    assert r.failed.handle == VIN.text
    assert r.failed.http_status == 502


def test_lame_delegation_moves_to_the_next_server() -> None:
    lame = (400, {"responseCode": 301, "message": "prefix 88.118.8 is not served here"})
    r, _, clock = make()
    drive(r, clock, {CHONGQING.url: [lame], CHENGDU.url: [TO_SECONDARY], SECONDARY.url: [NOT_FOUND]})
    assert r.result == NotFound()
    assert r.attempts == [
        Attempt(CHONGQING.url, FailureKind.NOT_RESPONSIBLE, "not responsible: prefix 88.118.8 is not served here")
    ]


def test_no_http_server_to_ask() -> None:
    r, _, _ = make(start=("88.118", [SiteServer("tcp://127.0.0.1:2641", True)]))
    assert r.next_query() is None
    assert r.failed is not None and "no HTTP server" in r.failed.message


# -- deadline and timeouts -------------------------------------------------------------------------


def test_deadline_exhaustion_finishes_with_failure_and_no_query_outlives_it() -> None:
    config = UpstreamConfig(deadline=1.5, try_timeout=1.0)
    r, _, clock = make(config=config)
    script: dict[str, list[Reply]] = {
        CHONGQING.url: [TIMED_OUT],
        CHENGDU.url: [TO_SECONDARY],
        SECONDARY.url: [TIMED_OUT],
    }
    queries = []
    while (q := r.next_query()) is not None:
        assert q.timeout <= r.time_left() + 1e-9
        queries.append(q)
        reply = script[q.server.url].pop(0)
        clock.now += q.timeout  # every try runs to its timeout
        r.on_outcome(q, reply if isinstance(reply, Failure) else classify(*reply), q.timeout)
    assert [q.timeout for q in queries] == [pytest.approx(1.0), pytest.approx(0.5)]
    assert [q.server for q in queries] == [CHONGQING, CHENGDU]
    assert r.failed is not None and "deadline of 1.5 s passed" in r.failed.message
    assert r.failed.attempts == (Attempt(CHONGQING.url, FailureKind.TIMEOUT, "timed out"),)


def test_try_timeout_adapts_only_when_there_is_a_server_to_fail_over_to() -> None:
    r, upstreams, _ = make()
    upstreams.success(CHONGQING.url, 0.02)
    upstreams.success(CHENGDU.url, 0.02)
    q = r.next_query()
    assert q is not None and q.server == CHONGQING and q.timeout == pytest.approx(0.08)
    r.on_outcome(q, TIMED_OUT, 0.08)
    q = r.next_query()
    assert q is not None and q.server == CHENGDU and q.timeout == pytest.approx(1.0)  # the last one: full try


# -- bad referrals ---------------------------------------------------------------------------------


def test_referral_loop_is_rejected_and_the_next_server_asked() -> None:
    r, upstreams, clock = make(start=("88.118", [SECONDARY, SiteServer("http://127.0.0.1:8201", False)]))
    loop = (300, referral_body("88.118", SECONDARY))
    drive(r, clock, {SECONDARY.url: [loop], "http://127.0.0.1:8201": [TO_ENTERPRISE], ENTERPRISE.url: [ANSWER]})
    assert r.result == Answer((URL_VALUE,))
    assert r.attempts == [
        Attempt(SECONDARY.url, FailureKind.BAD_REFERRAL, "bad referral: prefix 88.118 again (a referral loop)")
    ]
    assert r.hops[0].outcome == "failure"
    assert upstreams.health(SECONDARY.url).fails == 1
    assert [ref.prefix for ref in r.referrals] == ["88.118.8"]


@pytest.mark.parametrize(
    ("start", "prefix", "why"),
    [
        (None, "88.119", "bad referral: prefix 88.119 does not cover 88.118.8"),
        ("88.118", "88.119", "bad referral: prefix 88.119 is not below 88.118"),
        ("88.118", "88.118.8.1", "bad referral: prefix 88.118.8.1 does not cover 88.118.8"),
        ("88.118", "88", "bad referral: prefix 88 is not below 88.118"),
    ],
)
def test_referral_elsewhere_is_rejected(start: str | None, prefix: str, why: str) -> None:
    server = CHONGQING if start is None else SECONDARY
    r, _, clock = make(start=None if start is None else (start, [server]))
    if start is None:
        r = Resolution(VIN, [CHONGQING], r.upstreams, clock=clock)
    drive(r, clock, {server.url: [(300, referral_body(prefix, ENTERPRISE))]})
    assert r.result is None and r.failed is not None
    assert r.failed.attempts == (Attempt(server.url, FailureKind.BAD_REFERRAL, why),)
    assert why in r.failed.message


def test_max_referrals() -> None:
    r, _, clock = make(max_referrals=1)
    drive(r, clock, {CHONGQING.url: [TO_SECONDARY], SECONDARY.url: [TO_ENTERPRISE]})
    assert r.failed is not None and "more than 1 referrals" in r.failed.message
    assert [ref.prefix for ref in r.referrals] == ["88.118"]
    assert len(r.hops) == 2


def test_prefix_handle_is_resolved_at_the_parent_of_its_prefix() -> None:
    upstreams = Upstreams(clock=FakeClock(100.0))
    r = Resolution(parse_handle("0.NA/88.118.8"), ROOTS, upstreams, clock=FakeClock(100.0))
    q = r.next_query()
    assert q is not None and q.handle == "0.NA/88.118.8"
    r.on_outcome(q, classify(*TO_SECONDARY), 0.01)
    q = r.next_query()
    assert q is not None and q.server == SECONDARY


# -- misuse ----------------------------------------------------------------------------------------


def test_one_query_outstanding_at_a_time() -> None:
    r, _, _ = make()
    q = r.next_query()
    assert q is not None
    with pytest.raises(RuntimeError):
        r.next_query()
    with pytest.raises(RuntimeError):
        r.on_outcome(Query(CHENGDU, VIN.text, 1.0), NotFound(), 0.01)
    r.on_outcome(q, NotFound(), 0.01)
    with pytest.raises(RuntimeError):
        r.on_outcome(q, NotFound(), 0.01)


# -- classify --------------------------------------------------------------------------------------


def test_classify_answer_keeps_values_and_their_timestamps() -> None:
    wire = value_to_wire(URL_VALUE.with_timestamp(1_700_000_000))
    assert classify(200, {"responseCode": 1, "values": [wire]}) == Answer((URL_VALUE.with_timestamp(1_700_000_000),))
    wire["timestamp"] = "2023-11-14T22:13:20.000Z"
    assert classify(200, {"responseCode": 1, "values": [wire]}) == Answer((URL_VALUE.with_timestamp(1_700_000_000),))
    wire["timestamp"] = "yesterday"
    assert classify(200, {"responseCode": 1, "values": [wire]}) == Answer((URL_VALUE,))


NOT_RESPONSIBLE, SERVER, BAD = FailureKind.NOT_RESPONSIBLE, FailureKind.SERVER_ERROR, FailureKind.BAD_ANSWER


def test_classify_every_reply_shape() -> None:
    assert classify(*ANSWER) == Answer((URL_VALUE,))
    assert classify(200, {"responseCode": 200, "values": []}) == Answer(())
    assert classify(*NOT_FOUND) == NotFound()
    assert classify(*TO_SECONDARY) == Referral("88.118", tuple(sites(SECONDARY)))
    assert classify(400, {"responseCode": 301, "message": "no"}) == Failure(NOT_RESPONSIBLE, "not responsible: no")
    assert classify(500, {"responseCode": 2, "message": "boom"}) == Failure(SERVER, "HTTP 500, responseCode 2: boom")
    assert classify(502, {}) == Failure(SERVER, "HTTP 502, responseCode None: (no message)")
    assert classify(401, {"responseCode": 402, "message": "creds"}) == Failure(BAD, "HTTP 401, responseCode 402: creds")
    # a status and code that do not belong together
    assert classify(200, {"responseCode": 100}) == Failure(BAD, "HTTP 200, responseCode 100: (no message)")
    assert classify(404, {"responseCode": 1, "values": []}) == Failure(BAD, "HTTP 404, responseCode 1: (no message)")
    assert classify(200, {"responseCode": True, "values": []}) == Failure(
        BAD, "HTTP 200, responseCode None: (no message)"
    )
    assert classify(500, {"message": "x" * 300}).reason.endswith("x…")  # type: ignore[union-attr]


def test_classify_referral_normalises_the_prefix_and_keeps_only_site_values() -> None:
    body = referral_body("88.118", SECONDARY)
    body["prefix"] = "88.118"
    body["values"].append(value_to_wire(URL_VALUE))
    outcome = classify(300, body)
    assert isinstance(outcome, Referral) and outcome.sites == tuple(sites(SECONDARY))
    body["prefix"] = "0.NA/88.118"
    assert classify(300, body) == outcome


def test_classify_referral_without_an_http_server_is_a_failure() -> None:
    body = referral_body("88.118", SECONDARY)
    body["values"][0]["data"]["value"]["servers"][0]["interfaces"][0]["protocol"] = "TCP"
    no_server = Failure(FailureKind.BAD_REFERRAL, "the referral to prefix 88.118 names no HTTP server")
    assert classify(300, body) == no_server
    body["values"] = []
    assert classify(300, body) == no_server


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, [1, 2], "HTTP 200: malformed reply (the body is not an object)"),
        (200, "text", "HTTP 200: malformed reply (the body is not an object)"),
        (200, {"responseCode": 1}, 'HTTP 200: malformed answer: "values" is not a list'),
        (200, {"responseCode": 1, "values": {"a": 1}}, 'HTTP 200: malformed answer: "values" is not a list'),
        (200, {"responseCode": 1, "values": [7]}, "HTTP 200: malformed answer: value 1: each value must be"),
        (200, {"responseCode": 1, "values": [{"index": 1, "type": "URL"}]}, "HTTP 200: malformed answer: value 1"),
        (300, {"responseCode": 303, "values": []}, 'HTTP 300: malformed referral: no "prefix"'),
        (300, {"responseCode": 303, "prefix": 88, "values": []}, 'HTTP 300: malformed referral: no "prefix"'),
        (300, {"responseCode": 303, "prefix": "99.1", "values": []}, "HTTP 300: malformed referral: prefix must"),
        (300, {"responseCode": 303, "prefix": "88.1"}, 'HTTP 300: malformed referral: "values" is not a list'),
        (300, {"responseCode": 303, "prefix": "88.1", "values": [None]}, "HTTP 300: malformed referral: value 1"),
    ],
)
def test_classify_malformed_bodies(status: int, body: Any, reason: str) -> None:
    outcome = classify(status, body)
    assert isinstance(outcome, Failure)
    assert outcome.kind is FailureKind.BAD_ANSWER
    assert outcome.reason.startswith(reason)


def test_failure_of_a_transport_error_keeps_its_kind_and_reason() -> None:
    error = UpstreamError.one(CHONGQING.url, FailureKind.TIMEOUT, "timed out", what="GET /api/handles/88.118.8/VIN-1")
    assert Failure.of(error) == TIMED_OUT
    assert error.message == f"GET /api/handles/88.118.8/VIN-1 failed: {CHONGQING.url}: timed out"
    assert Failure.of(UpstreamError("nobody said why")) == Failure(FailureKind.BAD_ANSWER, "nobody said why")


# -- properties ------------------------------------------------------------------------------------

DEEP = parse_handle("88.1.2.3.4/X")
POOL = [SiteServer(f"http://10.0.0.{i}:80", i % 2 == 0, f"node {i}") for i in range(5)]
PREFIXES = ["88", "88.1", "88.1.2", "88.1.2.3", "88.1.2.3.4", "88.2", "88.1.2.3.4.5"]

outcomes = st.one_of(
    st.just(TIMED_OUT),
    st.just(Answer(())),
    st.just(NotFound()),
    st.builds(
        lambda prefix, servers: Referral(prefix, tuple(sites(*servers))),
        st.sampled_from(PREFIXES),
        st.lists(st.sampled_from(POOL), min_size=1, max_size=3),
    ),
)


@settings(max_examples=300)
@given(
    roots=st.lists(st.sampled_from(POOL), min_size=1, max_size=3),
    script=st.lists(st.tuples(outcomes, st.floats(0, 0.6)), max_size=40),
    max_referrals=st.integers(0, 6),
)
def test_any_script_terminates_and_never_repeats_a_server_in_a_step(
    roots: list[SiteServer], script: list[tuple[Outcome, float]], max_referrals: int
) -> None:
    clock = FakeClock(100.0)
    upstreams = Upstreams(clock=clock)
    r = Resolution(DEEP, roots, upstreams, max_referrals=max_referrals, clock=clock)
    replies = iter(script)
    asked_in_step: set[str] = set()
    steps = 0
    queries = 0
    bound = (max_referrals + 1) * len(POOL)
    while (q := r.next_query()) is not None:
        queries += 1
        assert queries <= bound
        assert 0 < q.timeout <= r.time_left()
        if len(r.referrals) != steps:  # a referral was accepted: a new step
            steps, asked_in_step = len(r.referrals), set()
        assert q.server.url not in asked_in_step
        asked_in_step.add(q.server.url)
        outcome, rtt = next(replies, (TIMED_OUT, 0.3))
        clock.now += rtt
        r.on_outcome(q, outcome, rtt)
    assert r.finished
    assert (r.result is None) != (r.failed is None)
    assert len(r.referrals) <= max_referrals
    assert len(r.hops) == queries
    prefixes = [ref.prefix for ref in r.referrals]
    assert all(is_under(DEEP.zone, p) for p in prefixes)
    assert all(is_under(deeper, p) and deeper != p for p, deeper in itertools.pairwise(prefixes))
