"""What a mirror says about its link in ``/api/replication/status`` (``follower.MirrorState``): "connecting"
and no error while its primary restarts, an error once the failure lasts, lag 0 as soon as it is caught
up (after a restart, a snapshot, a promotion and back), never only once a 20 s long-poll ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgpack
import pytest
from aiohttp import web

from nodes.replication import follower, roles
from nodes.replication.follower import CONNECT_GRACE, POLL_WAIT, MirrorState, is_transient
from resolver.errors import Attempt, FailureKind, ReplicationError, UpstreamError
from resolver.storage.sqlite import SQLiteStorage
from tests.conftest import eventually
from tests.nodes.replication.pairs import Pair, pair_of, running_pair, two_nodes, url_value
from tests.nodes.replication.scripted import Upstream, done, following, head, put

# Well under POLL_WAIT: a mirror that only learnt it was caught up when a long-poll ended would miss it.
SOON = 6.0
assert SOON < POLL_WAIT


# -- the bookkeeping, with a fake clock ------------------------------------------------------------


def test_a_new_mirror_is_connecting_with_no_error_and_no_lag_known() -> None:
    state = MirrorState("http://127.0.0.1:1", "primary")
    assert (state.state, state.last_error, state.lag_seconds(None, now=10.0)) == ("connecting", None, None)


def test_an_unreachable_upstream_is_connecting_until_the_grace_ends_then_failing() -> None:
    state = MirrorState("http://127.0.0.1:1", "primary")
    assert not state.failed("cannot connect", transient=True, now=100.0)
    assert not state.failed("cannot connect", transient=True, now=100.0 + CONNECT_GRACE - 0.1)
    assert (state.state, state.last_error, state.retrying) == ("connecting", None, "cannot connect")
    assert state.failed("cannot connect", transient=True, now=100.0 + CONNECT_GRACE), "reported once"
    assert (state.state, state.last_error) == ("failing", "cannot connect")
    assert not state.failed("cannot connect", transient=True, now=200.0), "the same problem is not new"


def test_an_answer_the_mirror_refuses_is_an_error_at_once() -> None:
    state = MirrorState("http://127.0.0.1:1", "primary")
    assert state.failed("ReplicationError: bad page", transient=False, now=1.0)
    assert (state.state, state.last_error) == ("failing", "ReplicationError: bad page")


def test_an_answer_clears_the_error_and_a_new_streak_starts_its_own_grace() -> None:
    state = MirrorState("http://127.0.0.1:1", "primary")
    state.failed("cannot connect", transient=True, now=0.0)
    state.failed("cannot connect", transient=True, now=CONNECT_GRACE + 1)
    state.answered(caught_up=True, now=50.0)
    assert (state.state, state.last_error, state.lag_seconds(now=60.0)) == ("following", None, 0.0)
    assert not state.failed("connection lost", transient=True, now=61.0), "a fresh streak: connecting again"
    assert (state.state, state.last_error, state.lag_seconds(now=61.5)) == ("connecting", None, 11.5)


def test_while_a_snapshot_streams_in_the_mirror_is_copying_and_not_caught_up() -> None:
    state = MirrorState("http://127.0.0.1:1", "primary", primary_seq=9)
    state.answered(caught_up=False, now=1.0)
    state.copying = True
    assert (state.state, state.lag_seconds(9, now=2.0)) == ("copying", None)


def test_lag_is_zero_whenever_connected_and_applied_up_to_the_primarys_last_seq() -> None:
    state = MirrorState("http://127.0.0.1:1", "primary", primary_seq=7)
    state.answered(caught_up=False, now=1.0)  # e.g. the header of a snapshot ending at seq 7
    assert state.lag_seconds(7, now=5.0) == 0.0
    assert state.lag_seconds(6, now=5.0) is None, "behind, and never caught up"


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (UpstreamError("x", attempts=[Attempt("u", FailureKind.CANNOT_CONNECT, "refused")]), True),
        (UpstreamError("x", attempts=[Attempt("u", FailureKind.TIMEOUT, "timed out")]), True),
        (UpstreamError("x", attempts=[Attempt("u", FailureKind.BAD_ANSWER, "garbage")]), False),
        (aiohttp.ServerDisconnectedError(), True),
        (ConnectionResetError(), True),
        (ReplicationError("bad page"), False),
    ],
)
def test_only_failures_to_reach_the_upstream_get_the_grace(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


# -- a puller against an upstream whose long-poll really waits ---------------------------------------


class _WaitingUpstream(Upstream):
    """The scripted upstream, holding a poll with nothing new for the ``wait`` it asks, as a primary does."""

    async def log(self, request: web.Request) -> web.Response:
        self.polled.append(int(request.query["after"]))
        await asyncio.sleep(float(request.query.get("wait", "0")))
        return web.Response(
            body=msgpack.packb({"responseCode": 1, "lastSeq": self.last_seq, "changes": []}),
            content_type="application/msgpack",
        )


async def test_after_a_snapshot_the_mirror_is_at_lag_0_at_once_not_after_a_long_poll(
    mirror_store: SQLiteStorage,
) -> None:
    upstream = _WaitingUpstream(snapshots=[[head(2), put("88/a"), put("88/b"), done(2)]], last_seq=2)
    async with following(upstream, mirror_store) as mirror:

        async def caught_up() -> bool:
            return mirror.state.state == "following" and mirror.state.lag_seconds() == 0.0

        await eventually(caught_up, SOON, "the mirror knows it is caught up")
        assert mirror.state.last_error is None and upstream.polled[0] == 2


# -- real nodes ------------------------------------------------------------------------------------


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A primary and its mirror, running, the mirror caught up."""
    async for running in running_pair(two_nodes(), tmp_path):
        yield running


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Pair]:
    """A primary and its mirror, neither started yet."""
    async for not_started in pair_of(two_nodes(), tmp_path):
        yield not_started


async def _following_at_lag_0(pair: Pair) -> bool:
    status = await pair.mirror.status()
    return (status["state"], status["lagSeq"], status["lagSeconds"], status["lastError"]) == ("following", 0, 0.0, None)


async def test_a_restarting_primary_leaves_its_mirror_connecting_then_at_lag_0_at_once(pair: Pair) -> None:
    await pair.primary.put("88/before", url_value("https://example.cn/before"))
    await eventually(lambda: _following_at_lag_0(pair), SOON, "the mirror follows at lag 0")

    await pair.primary.stop()

    async def connecting() -> bool:
        return bool((await pair.mirror.status())["state"] == "connecting")

    await eventually(connecting, 5, "the mirror notices its primary went away")
    status = await pair.mirror.status()
    assert (status["connected"], status["lastError"]) == (False, None), "a restart is not an error yet"

    await pair.primary.start()  # same database, same port
    await eventually(lambda: _following_at_lag_0(pair), SOON, "the mirror says it is caught up once reconnected")
    mirrors = (await pair.primary.status())["mirrors"]
    assert mirrors["mirror"]["lagSeq"] == 0


async def test_a_primary_that_stays_away_is_named_in_last_error(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower, "CONNECT_GRACE", 0.5)
    await eventually(lambda: _following_at_lag_0(pair), SOON, "the mirror follows at lag 0")
    await pair.primary.stop()

    async def failing() -> bool:
        return bool((await pair.mirror.status())["state"] == "failing")

    await eventually(failing, 5, "the mirror reports the failure once it lasts")
    status = await pair.mirror.status()
    assert status["connected"] is False and "cannot connect" in status["lastError"]
    assert status["lagSeconds"] is not None and status["lagSeconds"] > 0


async def test_after_a_promotion_and_back_the_mirror_reports_lag_0(
    nodes: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "PEER_CHECK_SECONDS", 0.1)
    await nodes.primary.start()
    await nodes.mirror.start()
    await nodes.primary.put("88/x", url_value("https://example.cn/x"))
    await eventually(nodes.in_sync, 5, "the mirror catches up")
    assert (await nodes.mirror.promote())[0] == 200

    async def demoted() -> bool:
        return bool((await nodes.primary.status())["role"] == "mirror")

    await eventually(demoted, 5, "the old primary follows the promoted mirror")
    assert (await nodes.primary.promote())[0] == 200, "and is promoted back"

    async def back() -> bool:
        status = await nodes.mirror.status()
        return bool(status["role"] == "mirror") and await _following_at_lag_0(nodes)

    await eventually(back, SOON, "the mirror follows again, at lag 0")
