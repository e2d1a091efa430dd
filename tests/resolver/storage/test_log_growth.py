"""What keeps the change log from growing without need (SQLiteStorage and the in-memory fake alike): no
entry for a put that changes nothing, and trimming below a position or an age, after which every
entry still kept reads as it was written."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from resolver.records import Record
from resolver.storage.base import Storage, Write
from resolver.storage.sqlite import SQLiteStorage
from tests.resolver.storage.cases import EVERY_FORMAT, url

# -- no entry for a put that changes nothing ------------------------------------------------------


async def test_a_single_put_of_the_same_values_appends_nothing(storage: Storage) -> None:
    seq = await storage.write([Write("88.118.8/a", EVERY_FORMAT)])
    digest = await storage.digest()
    assert await storage.write([Write("88.118.8/a", EVERY_FORMAT)]) == seq  # the last seq, unchanged
    assert await storage.last_seq() == seq
    assert [c.seq for c in await storage.changes(0)] == [seq]
    assert await storage.digest() == digest and await storage.count_prefix("88.118.8") == 1
    # A different value is a change again.
    assert await storage.write([Write("88.118.8/a", url(1))]) == seq + 1


async def test_a_batch_logs_only_the_puts_that_change_something(storage: Storage) -> None:
    await storage.write([Write(f"88.118.8/{i}", url(i)) for i in range(5)], created=True)
    before = await storage.last_seq()
    seq = await storage.write(
        [
            Write("88.118.8/0", url(0)),  # the same: left out
            Write("88.118.8/1", url("changed")),
            Write("88.118.8/2", url(2)),  # the same: left out
            Write("88.118.8/new", url("n")),
            Write("88.118.8/3", None),
        ]
    )
    assert seq == before + 3
    assert [(c.key, c.op) for c in await storage.changes(before)] == [
        ("88.118.8/1", "put"),
        ("88.118.8/new", "put"),
        ("88.118.8/3", "delete"),
    ]
    assert await storage.count_prefix("88.118.8") == 5


async def test_a_batch_of_unchanged_records_appends_nothing_and_answers_the_last_seq(storage: Storage) -> None:
    writes = [Write(f"88.118.8/{i}", url(i)) for i in range(300)]
    last = await storage.write(writes, created=True)
    await storage.write([Write("0.NA/88.118.8", url("p"))])  # the last seq is no longer the batch's
    for _ in range(3):  # three upsert passes of the same content, as a re-run bulk load sends
        assert await storage.write(writes) == last + 1
    assert len(await storage.changes(0, limit=1000)) == last + 1


async def test_a_key_changed_and_changed_back_in_one_batch_is_logged_twice(storage: Storage) -> None:
    await storage.write([Write("88.118.8/a", url(1))])
    seq = await storage.write([Write("88.118.8/a", url(2)), Write("88.118.8/a", url(1)), Write("88.118.8/a", url(1))])
    assert seq == 3  # the third write is the same as the second: left out
    assert [(c.seq, c.values) for c in await storage.changes(0)] == [(1, url(1)), (2, url(2)), (3, url(1))]
    assert await storage.get("88.118.8/a") == Record("88.118.8/a", url(1))


# -- trimming ----------------------------------------------------------------------------------------


async def test_trimming_below_a_position_keeps_the_rest_readable(storage: Storage) -> None:
    assert await storage.first_seq() == 1 and await storage.trim_changes(10) == 0
    await storage.write([Write("88.118.8/a", url(1)), Write("88.118.8/b", url(1))])  # 1, 2
    await storage.write([Write("88.118.8/a", url(2))])  # 3
    await storage.write([Write("88.118.8/c", url(1)), Write("88.118.8/b", None)])  # 4, 5
    await storage.write([Write("88.118.8/a", url(3))])  # 6: a's latest put
    assert await storage.trim_changes(4) == 3
    assert await storage.first_seq() == 4 and await storage.last_seq() == 6
    expected = [(4, "88.118.8/c", "put", url(1)), (5, "88.118.8/b", "delete", ()), (6, "88.118.8/a", "put", url(3))]
    # A reader at the position just below the first kept entry reads every kept entry, values included.
    assert [(c.seq, c.key, c.op, c.values) for c in await storage.changes(3)] == expected
    assert [c.blob is not None for c in await storage.changes_packed(3)] == [True, False, True]
    assert await storage.trim_changes(4) == 0  # nothing below it any more
    # Writes after trimming: the trimmed rows' keys change again, numbering carries on.
    assert await storage.write([Write("88.118.8/a", url(4)), Write("88.118.8/c", url(2))]) == 8
    assert [(c.seq, c.values) for c in await storage.changes(5)] == [(6, url(3)), (7, url(4)), (8, url(2))]
    # Trimming everything: an empty log whose first seq is the next to be assigned.
    assert await storage.trim_changes(100) == 5
    assert (await storage.first_seq(), await storage.last_seq(), await storage.changes(0)) == (9, 8, [])
    assert await storage.write([Write("88.118.8/d", url(1))]) == 9
    assert await storage.get("88.118.8/a") == Record("88.118.8/a", url(4)) and await storage.count() == 3


async def test_trimming_by_age_stops_at_the_first_entry_young_enough(storage: Storage) -> None:
    for i in range(5):
        await storage.write([Write(f"88.118.8/{i}", url(i))])
    assert await storage.trim_changes_older(3600, below=6) == 0  # all written just now
    assert await storage.trim_changes_older(-60, below=3) == 2  # "older than a minute from now": all, but < 3
    assert await storage.first_seq() == 3
    assert await storage.trim_changes_older(-60, below=100) == 3
    assert await storage.first_seq() == 6 and await storage.changes(0) == []


async def test_trimming_by_age_reads_the_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "aged.db"
    store = await SQLiteStorage.open(path)
    try:
        for i in range(6):
            await store.write([Write(f"88.118.8/{i}", url(i))])
        now = int(time.time())
        with sqlite3.connect(path) as db:  # seqs 1-3 a day old, 4 an hour old, 5 a day old again (clock step)
            db.executemany(
                "UPDATE changes SET ts = ? WHERE seq = ?",
                [(now - 86400, 1), (now - 86400, 2), (now - 86400, 3), (now - 3600, 4), (now - 86400, 5)],
            )
        db.close()
        # Older than two hours: 1-3; seq 4 is younger, so 5 stays too (the log stays one run of seqs).
        assert await store.trim_changes_older(7200, below=100) == 3
        assert [c.seq for c in await store.changes(0)] == [4, 5, 6]
    finally:
        await store.close()


async def test_trimming_many_rows_runs_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resolver.storage import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "TRIM_CHUNK", 7)
    store = await SQLiteStorage.open(tmp_path / "chunks.db")
    try:
        await store.write([Write(f"88.118.8/{i}", url(i)) for i in range(50)], created=True)
        assert await store.trim_changes(45) == 44
        assert [c.seq for c in await store.changes(0)] == [45, 46, 47, 48, 49, 50]
    finally:
        await store.close()
