"""The mirror's puller (``nodes.replication.follower``) against a scripted upstream on 127.0.0.1: it copies a
snapshot, follows the change log, resumes a cut stream, resyncs after a demotion, and refuses what it
cannot apply, saying why in ``lastError``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession, web

from nodes.authoritative.authority import Authority
from nodes.replication.follower import Mirror, MirrorState
from resolver.codec import pack_values
from resolver.config import DEFAULT_LIMITS
from resolver.errors import ReplicationError
from resolver.storage import Write
from resolver.values import HandleValue
from tests.conftest import eventually, free_port
from tests.fakes import MemoryStorage
from tests.nodes.replication.pairs import two_nodes

VALUES = (HandleValue(1, "URL", "string", "https://example.cn/"),)
BLOB = pack_values(VALUES)


@dataclass
class Upstream:
    """What the scripted upstream answers: each snapshot request takes the next stream of ``snapshots``;
    ``changes(after)`` gives the changes page (default: an empty log at ``last_seq``)."""

    snapshots: list[list[dict[str, Any]]] = field(default_factory=list)
    changes: Callable[[int], dict[str, Any]] | None = None
    snapshot_status: int = 200
    last_seq: int = 0
    asked: list[dict[str, str]] = field(default_factory=list)  # the snapshot requests' parameters

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(dict(request.query))
        if self.snapshot_status != 200:
            return web.json_response({"responseCode": 402, "message": "no"}, status=self.snapshot_status)
        response = web.StreamResponse(headers={"Content-Type": "application/msgpack"})
        await response.prepare(request)
        for item in self.snapshots.pop(0) if self.snapshots else []:
            await response.write(msgpack.packb(item))
        return response

    async def log(self, request: web.Request) -> web.Response:
        after = int(request.query["after"])
        if self.changes is not None:
            body = self.changes(after)
        else:
            body = {"responseCode": 1, "lastSeq": self.last_seq, "changes": []}
        if not body.get("changes"):
            await asyncio.sleep(0.05)  # a short long-poll
        return web.Response(body=msgpack.packb(body), content_type="application/msgpack")


@dataclass
class Following:
    """A running puller: its authority (over an in-memory store) and the state it reports."""

    authority: Authority
    state: MirrorState
    epochs: list[int]  # every epoch the upstream answered with, as check_epoch saw them

    @property
    def store(self) -> MemoryStorage:
        store = self.authority.store
        assert isinstance(store, MemoryStorage)
        return store

    async def keys(self) -> list[str]:
        return (await self.store.list_keys("88"))[1]

    async def errs(self, words: str) -> bool:
        return words in (self.state.last_error or "")


@asynccontextmanager
async def following(
    upstream: Upstream,
    store: MemoryStorage | None = None,
    check_epoch: Callable[[int], None] | None = None,
) -> AsyncIterator[Following]:
    """A mirror's puller following ``upstream``, served on a free port, until the block ends."""
    app = web.Application()
    app.router.add_get("/api/replication/snapshot", upstream.snapshot)
    app.router.add_get("/api/replication/changes", upstream.log)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    spec = two_nodes().node("mirror")
    authority = Authority(spec, store or MemoryStorage(), DEFAULT_LIMITS, read_only=True)
    state = MirrorState(f"http://127.0.0.1:{port}", "primary")
    epochs: list[int] = []

    async def check(epoch: int) -> None:
        epochs.append(epoch)
        if check_epoch is not None:
            check_epoch(epoch)

    async with ClientSession() as session:
        puller = Mirror(authority, state, session, "Basic x", check_epoch=check, epoch=lambda: 0)
        task = asyncio.create_task(puller.run())
        try:
            yield Following(authority, state, epochs)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await runner.cleanup()


def head(last_seq: int, **extra: Any) -> dict[str, Any]:
    return {"responseCode": 1, "lastSeq": last_seq, **extra}


def put(key: str) -> dict[str, Any]:
    return {"key": key, "values": BLOB}


def done(count: int) -> dict[str, Any]:
    return {"responseCode": 1, "done": True, "count": count}


def log_of(*changes: dict[str, Any], epoch: int = 0) -> Callable[[int], dict[str, Any]]:
    """A change log holding ``changes`` at ``epoch``: each page is the changes after ``after``."""
    last = max((c["seq"] for c in changes), default=0)
    return lambda after: {
        "responseCode": 1,
        "lastSeq": last,
        "epoch": epoch,
        "changes": [c for c in changes if c["seq"] > after],
    }


async def test_it_copies_a_snapshot_then_follows_the_log() -> None:
    upstream = Upstream(
        snapshots=[[head(2, epoch=1), put("88/a"), put("88/b"), done(2)]],
        changes=log_of(
            {"seq": 3, "key": "88/c", "op": "put", "values": BLOB},
            {"seq": 4, "key": "88/a", "op": "delete", "values": None},
            epoch=1,
        ),
    )
    async with following(upstream) as mirror:
        await eventually(lambda: _applied(mirror, "4"), 5, "the mirror applies the log up to seq 4")
        assert await mirror.keys() == ["88/b", "88/c"]
        record = await mirror.store.get("88/c")
        assert record is not None and record.values == VALUES, "stored as the upstream packed it"
        assert await mirror.store.get_meta("snapshot_seq") == "2"
        assert mirror.state.connected and mirror.state.caught_up and mirror.state.last_error is None
        assert mirror.state.primary_epoch == 1 and set(mirror.epochs) == {1}
        assert mirror.state.lag_seconds() == 0.0


async def test_a_cut_snapshot_resumes_after_the_last_key_and_replays_from_the_first_attempt() -> None:
    upstream = Upstream(
        snapshots=[
            [head(5), put("88/a"), put("88/b")],  # ends without its trailer
            [head(7), put("88/c"), done(1)],  # meanwhile 88/a was deleted (seq 6) and 88/d written (seq 7)
        ],
        changes=log_of(
            {"seq": 6, "key": "88/a", "op": "delete", "values": None},
            {"seq": 7, "key": "88/d", "op": "put", "values": BLOB},
        ),
    )
    async with following(upstream) as mirror:
        await eventually(lambda: _applied(mirror, "7"), 5, "the mirror applies the log up to seq 7")
        assert upstream.asked == [{}, {"after_key": "88/b"}]
        assert await mirror.store.get_meta("snapshot_seq") == "5", "replayed from the first attempt's lastSeq"
        assert await mirror.keys() == ["88/b", "88/c", "88/d"]


async def test_a_resync_deletes_what_the_new_primary_does_not_hold() -> None:
    store = MemoryStorage()
    await store.write([Write("88/kept", VALUES), Write("88/diverged", VALUES)])
    for name, value in (("resync", "1"), ("applied_seq", "")):
        await store.set_meta(name, value)  # as a demotion leaves them
    upstream = Upstream(snapshots=[[head(1), put("88/kept"), done(1)]], last_seq=1)
    async with following(upstream, store) as mirror:
        await eventually(lambda: _applied(mirror, "1"), 5, "the resync completes")
        assert await mirror.keys() == ["88/kept"]
        assert await store.get_meta("resync") == ""


async def test_a_bad_change_stops_the_follower_before_it_is_applied() -> None:
    upstream = Upstream(
        snapshots=[[head(0), done(0)]],
        changes=log_of(
            {"seq": 1, "key": "88/a", "op": "put", "values": BLOB},
            {"seq": 1, "key": "88/b", "op": "put", "values": BLOB},  # the same seq again: out of order
        ),
    )
    async with following(upstream) as mirror:
        await eventually(lambda: mirror.errs("bad or out-of-order item after seq 1"), 5, "the mirror refuses the page")
        assert (mirror.state.last_error or "").startswith("ReplicationError: changes: bad or out-of-order item")
        assert await mirror.keys() == [], "nothing of the page was applied"
        assert not mirror.state.connected


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ({"seq": 1, "op": "put", "values": BLOB}, "replicated item without a key"),
        ({"seq": 1, "key": "88/a", "op": "put", "values": [1]}, "replicated put of '88/a' carries no packed values"),
        ({"seq": 1, "key": "88/a", "op": "rename", "values": BLOB}, "bad or out-of-order item after seq 0"),
    ],
)
async def test_a_malformed_change_is_a_replication_error_that_says_what_is_wrong(
    item: dict[str, Any], words: str
) -> None:
    upstream = Upstream(snapshots=[[head(0), done(0)]], changes=log_of(item))
    async with following(upstream) as mirror:
        await eventually(lambda: mirror.errs(words), 5, f"lastError says {words!r}")
        assert await mirror.keys() == []


async def test_an_upstream_whose_log_is_behind_the_mirror_is_reported_and_the_data_kept() -> None:
    store = MemoryStorage()
    await store.write([Write("88/a", VALUES)])
    await store.set_meta("applied_seq", "7")
    async with following(Upstream(last_seq=3), store) as mirror:
        await eventually(lambda: mirror.errs("the upstream's lastSeq 3 is behind the applied seq 7"), 5, "reported")
        assert await mirror.keys() == ["88/a"]


async def test_a_refused_snapshot_says_the_http_status() -> None:
    async with following(Upstream(snapshot_status=401)) as mirror:
        await eventually(lambda: mirror.errs("snapshot: HTTP 401"), 5, "lastError names the refusal")
        assert mirror.state.synced_at is None and mirror.state.lag_seconds() is None


async def test_a_snapshot_without_a_proper_header_is_refused() -> None:
    async with following(Upstream(snapshots=[[{"responseCode": 2, "message": "broken"}]])) as mirror:
        await eventually(lambda: mirror.errs("snapshot: bad header"), 5, "lastError names the bad header")


async def test_nothing_is_applied_from_an_upstream_whose_epoch_is_refused() -> None:
    def refuse(epoch: int) -> None:
        raise ReplicationError(f"the upstream is at epoch {epoch}, below this node's 3")

    upstream = Upstream(snapshots=[[head(1, epoch=2), put("88/a"), done(1)]] * 5)
    async with following(upstream, check_epoch=refuse) as mirror:
        await eventually(lambda: mirror.errs("at epoch 2, below this node's 3"), 5, "the epoch is refused")
        assert await mirror.keys() == [] and await mirror.store.get_meta("applied_seq") is None


async def test_a_bad_epoch_is_refused() -> None:
    upstream = Upstream(snapshots=[[head(1, epoch=-1), done(0)]] * 5)
    async with following(upstream) as mirror:
        await eventually(lambda: mirror.errs("the upstream sent a bad epoch -1"), 5, "the bad epoch is named")


async def _applied(mirror: Following, seq: str) -> bool:
    return await mirror.store.get_meta("applied_seq") == seq
