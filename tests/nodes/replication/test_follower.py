"""The mirror's puller (``nodes.replication.follower``) against a scripted upstream on 127.0.0.1: it copies a
snapshot, follows the change log, resumes a cut stream, resyncs after a demotion, and refuses what it
cannot apply, saying why in ``lastError``."""

from __future__ import annotations

from typing import Any

import pytest

from resolver.errors import ReplicationError
from resolver.storage import Write
from resolver.storage.sqlite import SQLiteStorage
from tests.conftest import eventually
from tests.nodes.replication.scripted import BLOB, VALUES, Upstream, applied, done, following, head, log_of, put


async def test_it_copies_a_snapshot_then_follows_the_log(mirror_store: SQLiteStorage) -> None:
    upstream = Upstream(
        snapshots=[[head(2, epoch=1), put("88/a"), put("88/b"), done(2)]],
        changes=log_of(
            {"seq": 3, "key": "88/c", "op": "put", "values": BLOB},
            {"seq": 4, "key": "88/a", "op": "delete", "values": None},
            epoch=1,
        ),
    )
    async with following(upstream, mirror_store) as mirror:
        await eventually(lambda: applied(mirror, "4"), 5, "the mirror applies the log up to seq 4")
        assert await mirror.keys() == ["88/b", "88/c"]
        record = await mirror.store.get("88/c")
        assert record is not None and record.values == VALUES, "stored as the upstream packed it"
        assert await mirror.store.get_meta("snapshot_seq") == "2"
        assert mirror.state.connected and mirror.state.caught_up and mirror.state.last_error is None
        assert mirror.state.primary_epoch == 1 and set(mirror.epochs) == {1}
        assert mirror.state.lag_seconds() == 0.0


async def test_a_cut_snapshot_resumes_after_the_last_key_and_replays_from_the_first_attempt(
    mirror_store: SQLiteStorage,
) -> None:
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
    async with following(upstream, mirror_store) as mirror:
        await eventually(lambda: applied(mirror, "7"), 5, "the mirror applies the log up to seq 7")
        assert upstream.asked == [{}, {"after_key": "88/b"}]
        assert await mirror.store.get_meta("snapshot_seq") == "5", "replayed from the first attempt's lastSeq"
        assert await mirror.keys() == ["88/b", "88/c", "88/d"]


async def test_a_resync_deletes_what_the_new_primary_does_not_hold(mirror_store: SQLiteStorage) -> None:
    store = mirror_store
    await store.write([Write("88/kept", VALUES), Write("88/diverged", VALUES)])
    for name, value in (("resync", "1"), ("applied_seq", "")):
        await store.set_meta(name, value)  # as a demotion leaves them
    upstream = Upstream(snapshots=[[head(1), put("88/kept"), done(1)]], last_seq=1)
    async with following(upstream, store) as mirror:
        await eventually(lambda: applied(mirror, "1"), 5, "the resync completes")
        assert await mirror.keys() == ["88/kept"]
        assert await store.get_meta("resync") == ""


async def test_a_bad_change_stops_the_follower_before_it_isapplied(mirror_store: SQLiteStorage) -> None:
    upstream = Upstream(
        snapshots=[[head(0), done(0)]],
        changes=log_of(
            {"seq": 1, "key": "88/a", "op": "put", "values": BLOB},
            {"seq": 1, "key": "88/b", "op": "put", "values": BLOB},  # the same seq again: out of order
        ),
    )
    async with following(upstream, mirror_store) as mirror:
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
    item: dict[str, Any], words: str, mirror_store: SQLiteStorage
) -> None:
    upstream = Upstream(snapshots=[[head(0), done(0)]], changes=log_of(item))
    async with following(upstream, mirror_store) as mirror:
        await eventually(lambda: mirror.errs(words), 5, f"lastError says {words!r}")
        assert await mirror.keys() == []


async def test_an_upstream_whose_log_is_behind_the_mirror_is_reported_and_the_data_kept(
    mirror_store: SQLiteStorage,
) -> None:
    store = mirror_store
    await store.write([Write("88/a", VALUES)])
    await store.set_meta("applied_seq", "7")
    async with following(Upstream(last_seq=3), store) as mirror:
        await eventually(lambda: mirror.errs("the upstream's lastSeq 3 is behind the applied seq 7"), 5, "reported")
        assert await mirror.keys() == ["88/a"]


async def test_a_refused_snapshot_says_the_http_status(mirror_store: SQLiteStorage) -> None:
    async with following(Upstream(snapshot_status=401), mirror_store) as mirror:
        await eventually(lambda: mirror.errs("snapshot: HTTP 401"), 5, "lastError names the refusal")
        assert mirror.state.synced_at is None and mirror.state.lag_seconds() is None


async def test_a_snapshot_without_a_proper_header_is_refused(mirror_store: SQLiteStorage) -> None:
    async with following(Upstream(snapshots=[[{"responseCode": 2, "message": "broken"}]]), mirror_store) as mirror:
        await eventually(lambda: mirror.errs("snapshot: bad header"), 5, "lastError names the bad header")


async def test_nothing_is_applied_from_an_upstream_whose_epoch_is_refused(mirror_store: SQLiteStorage) -> None:
    def refuse(epoch: int) -> None:
        raise ReplicationError(f"the upstream is at epoch {epoch}, below this node's 3")

    upstream = Upstream(snapshots=[[head(1, epoch=2), put("88/a"), done(1)]] * 5)
    async with following(upstream, mirror_store, check_epoch=refuse) as mirror:
        await eventually(lambda: mirror.errs("at epoch 2, below this node's 3"), 5, "the epoch is refused")
        assert await mirror.keys() == [] and await mirror.store.get_meta("applied_seq") is None


async def test_a_bad_epoch_is_refused(mirror_store: SQLiteStorage) -> None:
    upstream = Upstream(snapshots=[[head(1, epoch=-1), done(0)]] * 5)
    async with following(upstream, mirror_store) as mirror:
        await eventually(lambda: mirror.errs("the upstream sent a bad epoch -1"), 5, "the bad epoch is named")
