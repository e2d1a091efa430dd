"""Change-log retention (``nodes.replication.retention``): the log is trimmed below what every mirror applied
and past its age limit, never on account of a mirror not heard from; a mirror the trimmed log left behind
gets 410 and copies a snapshot by itself, ending with what the primary holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodes.replication import retention
from nodes.replication.acks import AckTracker
from nodes.replication.retention import Retention, ack_floor
from resolver.storage import Write
from resolver.storage.sqlite import SQLiteStorage
from resolver.values import HandleValue
from tests.conftest import auth, eventually
from tests.nodes.replication.pairs import OP, Pair, pair_of, running_pair, two_nodes, url_value

VALUES = (HandleValue(1, "URL", "string", "https://example.cn/"),)


@pytest.fixture
def fast_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "TRIM_EVERY", 0.1)


@pytest.fixture
def store(mirror_store: SQLiteStorage) -> SQLiteStorage:
    """An empty store (conftest's), here a primary's log to trim."""
    return mirror_store


async def writes(store: SQLiteStorage, count: int, tag: str = "w") -> None:
    for n in range(count):  # one change each
        await store.write([Write(f"88/{tag}-{n}", VALUES)])


def test_the_floor_is_one_past_the_lowest_acknowledgement_of_the_peers() -> None:
    assert ack_floor([], {"someone": 5}) is None, "no peers: the acknowledgements decide nothing"
    assert ack_floor(["m1", "m2"], {"m1": 5}) == 0, "m2 has not reported: keep everything"
    assert ack_floor(["m1", "m2"], {"m1": 5, "m2": 9, "not-a-peer": 1}) == 6


async def test_trimming_waits_for_every_mirror_and_keeps_the_newest_entry(
    store: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "TRIM_CHUNK", 3)  # several chunks per pass
    await writes(store, 10)
    acks = AckTracker()
    trimmer = Retention(store, ["m1", "m2"], acks, max_age=None)
    assert await trimmer.trim() == 0, "no mirror reported since the start: nothing goes"
    acks.report("m1", 7)
    assert await trimmer.trim() == 0, "m2 has not reported"
    acks.report("m2", 4)
    assert await trimmer.trim() == 4 and await store.first_seq() == 5
    acks.report("m2", 10)
    assert await trimmer.trim() == 3 and await store.first_seq() == 8, "m1 still needs 8 on"
    acks.report("m1", 10)
    assert await trimmer.trim() == 2
    assert [c.seq for c in await store.changes(0)] == [10], "the newest entry stays"
    assert await store.last_seq() == 10


async def test_past_its_age_an_entry_goes_even_if_a_mirror_never_applied_it(store: SQLiteStorage) -> None:
    await writes(store, 4, "old")
    await asyncio.sleep(2.1)  # the log's timestamps are whole seconds
    await writes(store, 2, "young")
    assert await Retention(store, [], AckTracker(), max_age=None).trim() == 0, "no peers, no age limit"
    assert await Retention(store, ["m1"], AckTracker(), max_age=1.0).trim() == 4
    assert await store.first_seq() == 5 and await store.count() == 6, "the records themselves stay"


# -- a primary and its mirror -------------------------------------------------------------------


@pytest.fixture
async def pair(tmp_path: Path, fast_trim: None) -> AsyncIterator[Pair]:
    async for running in running_pair(two_nodes(), tmp_path):
        yield running


async def test_the_log_is_trimmed_once_the_mirror_applied_it_and_the_mirror_still_follows(pair: Pair) -> None:
    for n in range(5):
        code, _ = await pair.primary.put(f"88/t-{n}", url_value(f"https://example.cn/{n}"))
        assert code in (200, 201)

    async def trimmed() -> bool:
        status = await pair.primary.status()
        return bool(status["firstSeq"] == status["lastSeq"] and status["lastSeq"] >= 6)

    await eventually(trimmed, 10, "the primary trims what its mirror acknowledged")
    await pair.primary.put("88/after-trim", url_value("https://example.cn/after"))
    await eventually(lambda: pair.resolves_on_mirror("88/after-trim"), 5, "the mirror still follows")
    await eventually(pair.same_digest, 5, "and holds what the primary holds")
    assert (await pair.mirror.status())["lastError"] is None


@pytest.fixture
async def aging(tmp_path: Path, fast_trim: None) -> AsyncIterator[Pair]:
    """A primary keeping its log one second at most, and its mirror; neither started yet."""
    async for pair in pair_of(two_nodes(change_log_max_age=1), tmp_path):
        yield pair


async def test_a_mirror_left_behind_by_the_age_limit_resyncs_and_ends_equal(aging: Pair) -> None:
    pair = aging
    await pair.primary.start()
    await pair.mirror.start()
    for key in ("88/keep", "88/gone"):
        await pair.primary.put(key, url_value(f"https://example.cn/{key}"))
    await eventually(pair.in_sync, 5, "the mirror catches up")
    applied = (await pair.mirror.status())["appliedSeq"]
    await pair.mirror.stop()

    code, _ = await pair.primary.call("DELETE", "/api/handles/88/gone", headers=auth(OP))
    assert code == 200
    for key in ("88/new-1", "88/new-2"):
        await pair.primary.put(key, url_value(f"https://example.cn/{key}"))

    async def past_the_mirror() -> bool:
        return bool((await pair.primary.status())["firstSeq"] > applied + 1)

    await eventually(past_the_mirror, 10, "entries past the age limit go though the mirror never applied them")
    params = {"after": str(applied), "node": "mirror", "epoch": "0"}
    code, body = await pair.primary.call("GET", "/api/replication/changes", params=params, headers=auth(OP))
    assert (code, body["responseCode"]) == (410, 2)
    assert "was trimmed" in body["message"] and "copy a snapshot" in body["message"]
    assert body["firstSeq"] > applied + 1

    await pair.mirror.start()
    await eventually(pair.same_digest, 10, "the mirror copies a snapshot by itself and ends equal")
    assert (await pair.mirror.get("88/gone"))[0] == 404, "the delete it never saw is applied by the resync"
    assert (await pair.mirror.get("88/new-2"))[0] == 200
    assert await pair.mirror.records() == await pair.primary.records()
