"""A mirror's resync (``nodes.replication.follower``) against a scripted upstream: the snapshot is merged in
page by page (deleting what the upstream no longer holds, with no set of every key), a cut stream resumes
after the key stored in meta, even in a new process, and a mirror the upstream's trimmed log left
behind copies a snapshot by itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from nodes.replication import follower
from resolver.storage import Storage, Write
from resolver.storage.sqlite import SQLiteStorage
from tests.conftest import eventually
from tests.nodes.replication.scripted import VALUES, Upstream, applied, done, following, head, put


async def holding(store: SQLiteStorage, *keys: str, resync: bool = True) -> SQLiteStorage:
    """``store`` holding ``keys``, left as a demotion leaves it when ``resync``."""
    await store.write([Write(key, VALUES) for key in keys])
    if resync:
        for name, value in (("resync", "1"), ("snapshot_seq", ""), ("applied_seq", "")):
            await store.set_meta(name, value)
    return store


def spy_windows(store: Storage) -> list[tuple[str, str | None, int]]:
    """Record each ``keys_between`` window the puller asks ``store`` for: (after, upto, limit)."""
    windows: list[tuple[str, str | None, int]] = []
    real: Callable[[str, str | None, int], Awaitable[list[str]]] = store.keys_between

    async def keys_between(after_key: str, upto_key: str | None, limit: int) -> list[str]:
        windows.append((after_key, upto_key, limit))
        return await real(after_key, upto_key, limit)

    store.keys_between = keys_between  # type: ignore[method-assign]
    return windows


async def test_a_resync_merges_the_snapshot_page_by_page(
    monkeypatch: pytest.MonkeyPatch, mirror_store: SQLiteStorage
) -> None:
    monkeypatch.setattr(follower, "SNAPSHOT_CHUNK", 2)
    monkeypatch.setattr(follower, "RECONCILE_PAGE", 2)
    store = await holding(mirror_store, "88/a", "88/b", "88/c", "88/d", "88/e", "88/f", "88/g", "88/z")
    windows = spy_windows(store)
    upstream = Upstream(snapshots=[[head(4), put("88/a"), put("88/c"), put("88/g"), put("88/h"), done(4)]], last_seq=4)
    async with following(upstream, store) as mirror:
        await eventually(lambda: applied(mirror, "4"), 5, "the resync completes")
        assert await mirror.keys() == ["88/a", "88/c", "88/g", "88/h"], "what the upstream lacks is gone"
        assert await store.get_meta("resync") == "" and await store.get_meta("snapshot_key") == ""
    # Memory is bounded by a page: the local keys are read in windows of RECONCILE_PAGE, each ending at
    # the last key of a snapshot page, the last window open-ended (after the final key).
    assert {limit for _, _, limit in windows} == {2}
    assert list(dict.fromkeys(upto for _, upto, _ in windows)) == ["88/c", "88/h", None]
    assert windows[0] == ("", "88/c", 2) and windows[-1][0] == "88/h"


async def test_a_first_copy_deletes_nothing_it_holds(mirror_store: SQLiteStorage) -> None:
    store = await holding(mirror_store, "88/local", resync=False)
    async with following(Upstream(snapshots=[[head(1), put("88/a"), done(1)]], last_seq=1), store) as mirror:
        await eventually(lambda: applied(mirror, "1"), 5, "the copy completes")
        assert await mirror.keys() == ["88/a", "88/local"]


async def test_a_cut_resync_resumes_after_the_stored_key_even_in_a_new_puller(
    monkeypatch: pytest.MonkeyPatch, mirror_store: SQLiteStorage
) -> None:
    monkeypatch.setattr(follower, "SNAPSHOT_CHUNK", 2)
    store = await holding(mirror_store, "88/a", "88/b", "88/c", "88/d", "88/y", "88/z")
    first = Upstream(snapshots=[[head(5), put("88/a"), put("88/c")]])  # cut: no trailer, then nothing more
    async with following(first, store):
        await eventually(lambda: _meta(store, "snapshot_key", "88/c"), 5, "the pages that arrived are applied")
    # Up to the cut, the merge is done: 88/b went; 88/d and after wait for the rest of the stream.
    assert await store.list_keys("88") == ["88/a", "88/c", "88/d", "88/y", "88/z"]

    # A new puller (a restarted node) resumes after the stored key, and replays from the first lastSeq.
    second = Upstream(snapshots=[[head(7), put("88/e"), put("88/y"), done(2)]], last_seq=7)
    async with following(second, store) as mirror:
        await eventually(lambda: applied(mirror, "5"), 5, "the resync completes")
        assert second.asked == [{"after_key": "88/c"}]
        assert await mirror.keys() == ["88/a", "88/c", "88/e", "88/y"]
        assert second.polled[0] == 5, "the log is replayed from the first attempt's lastSeq"
        assert await store.get_meta("resync") == ""


async def test_a_mirror_behind_the_trimmed_log_copies_a_snapshot_by_itself(mirror_store: SQLiteStorage) -> None:
    store = await holding(mirror_store, "88/a", "88/deleted-upstream", resync=False)
    for name, value in (("snapshot_seq", "1"), ("applied_seq", "3")):
        await store.set_meta(name, value)
    upstream = Upstream(
        snapshots=[[head(12), put("88/a"), put("88/new"), done(2)]],
        last_seq=12,
        first_seq=10,  # the entries after 3 are gone: 410
    )
    async with following(upstream, store) as mirror:
        await eventually(lambda: applied(mirror, "12"), 5, "the mirror copies a snapshot and follows again")
        assert await mirror.keys() == ["88/a", "88/new"], "a record deleted in the trimmed part is gone too"
        assert upstream.polled[0] == 3 and 12 in upstream.polled and upstream.asked == [{}]
        assert await store.get_meta("resync") == ""
        await eventually(lambda: _connected(mirror.state), 5, "the mirror reports it is in sync")


async def test_a_snapshot_out_of_key_order_is_refused(mirror_store: SQLiteStorage) -> None:
    upstream = Upstream(snapshots=[[head(1), put("88/b"), put("88/a"), done(2)]] * 3)
    async with following(upstream, mirror_store) as mirror:
        await eventually(lambda: mirror.errs("snapshot: key '88/a' out of order"), 5, "lastError names the key")
        assert await mirror.store.get_meta("applied_seq") is None


async def _meta(store: Storage, name: str, value: str) -> bool:
    return await store.get_meta(name) == value


async def _connected(state: follower.MirrorState) -> bool:
    return state.connected and state.caught_up and state.last_error is None
