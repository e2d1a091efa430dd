"""Behaviour of the storage layer, run against SQLiteStorage and the in-memory fake alike."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from resolver.codec import pack_values
from resolver.errors import HandleError
from resolver.records import Record
from resolver.storage.base import Storage, Write
from resolver.storage.sqlite import SQLiteStorage
from resolver.values import HandleValue, Reference, value_from_wire
from tests.fakes import MemoryStorage

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000


def wire(raw: dict[str, object]) -> HandleValue:
    return value_from_wire(raw, position=1, now=NOW)


def url(n: int | str, index: int = 1) -> tuple[HandleValue, ...]:
    return (HandleValue(index, "URL", "string", f"https://example.org/{n}", timestamp=NOW),)


EVERY_FORMAT: tuple[HandleValue, ...] = (
    wire(
        {
            "index": 1,
            "type": "URL",
            "data": {"format": "string", "value": "https://example.org/车架号"},
            "ttl": 3600,
            "references": [{"index": 300, "handle": "88.118.8/other"}],
        }
    ),
    wire({"index": 2, "type": "CERT", "data": {"format": "base64", "value": "AAEC/w=="}}),
    wire(
        {
            "index": 3,
            "type": "HASH",
            "data": {"format": "hex", "value": "00ff10"},
            "permissions": "1100",
        }
    ),
    wire(
        {
            "index": 100,
            "type": "HS_ADMIN",
            "data": {
                "format": "admin",
                "value": {"handle": "0.NA/88.118.8", "index": 200, "permissions": "011111110011"},
            },
        }
    ),
    wire(
        {
            "index": 200,
            "type": "HS_VLIST",
            "data": {
                "format": "vlist",
                "value": [
                    {"handle": "88.118.8/admin1", "index": 300},
                    {"handle": "88.118.8/admin2", "index": 301},
                ],
            },
        }
    ),
    wire(
        {
            "index": 1000,
            "type": "HS_SITE",
            "data": {
                "format": "site",
                "value": {
                    "servers": [{"address": "127.0.0.1", "interfaces": [{"protocol": "http", "port": 8000}]}],
                    "attributes": [{"name": "desc", "value": "primary"}],
                },
            },
        }
    ),
)


@pytest.fixture(params=["sqlite", "memory"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    store: Storage
    if request.param == "sqlite":
        store = await SQLiteStorage.open(tmp_path / "handles.db")
    else:
        store = MemoryStorage()
    yield store
    await store.close()


# -- records ---------------------------------------------------------------------------------------


async def test_every_data_format_round_trips(storage: Storage) -> None:
    assert {v.format for v in EVERY_FORMAT} == {"string", "base64", "hex", "admin", "vlist", "site"}
    await storage.write([Write("88.118.8/VIN-001", EVERY_FORMAT)])

    record = await storage.get("88.118.8/VIN-001")

    assert record == Record("88.118.8/VIN-001", EVERY_FORMAT)
    assert record is not None
    assert record.values[0].references == (Reference(300, "88.118.8/other"),)
    assert record.values[2].permissions == "1100"
    assert await storage.count() == 1


async def test_missing_key_reads_as_none(storage: Storage) -> None:
    await storage.write([Write("88.118.8/a", url("a"))])
    assert await storage.get("88.118.8/b") is None
    assert await storage.get("88.118.8/A") is None  # keys are exact; canonicalising is the caller's job


async def test_overwrite_replaces_the_whole_record(storage: Storage) -> None:
    await storage.write([Write("88.118.8/a", EVERY_FORMAT)])
    await storage.write([Write("88.118.8/a", url("new", index=7))])

    assert await storage.get("88.118.8/a") == Record("88.118.8/a", url("new", index=7))
    assert await storage.count() == 1


async def test_delete_removes_the_record(storage: Storage) -> None:
    await storage.write([Write("88.118.8/a", url("a")), Write("88.118.8/b", url("b"))])
    await storage.write([Write("88.118.8/a", None)])

    assert await storage.get("88.118.8/a") is None
    assert await storage.get("88.118.8/b") == Record("88.118.8/b", url("b"))
    assert await storage.count() == 1
    assert await storage.list_keys("88.118.8") == (1, ["88.118.8/b"])


async def test_deleting_a_missing_key_is_still_logged(storage: Storage) -> None:
    seq = await storage.write([Write("88.118.8/never", None)])

    assert seq == 1
    [change] = await storage.changes(0)
    assert (change.key, change.op, change.values) == ("88.118.8/never", "delete", ())
    assert await storage.count() == 0


async def test_a_record_with_no_values_is_still_a_record(storage: Storage) -> None:
    await storage.write([Write("88.118.8/empty", ())])
    assert await storage.get("88.118.8/empty") == Record("88.118.8/empty", ())
    assert await storage.count() == 1


async def test_get_many_returns_only_what_exists(storage: Storage) -> None:
    # More keys than one IN list may carry, so the SQLite implementation has to chunk.
    await storage.write([Write(f"88.118.8/{i:05d}", url(i)) for i in range(2500)])
    wanted = [f"88.118.8/{i:05d}" for i in range(0, 5000, 2)] + ["88.118.8/00000", "0.NA/88.118.8"]

    found = await storage.get_many(wanted)

    assert set(found) == {f"88.118.8/{i:05d}" for i in range(0, 2500, 2)}
    assert found["88.118.8/02498"] == Record("88.118.8/02498", url(2498))
    assert await storage.get_many([]) == {}


async def test_list_keys_pages_through_one_prefix_in_key_order(storage: Storage) -> None:
    names = [f"88.118.8/item-{i:02d}" for i in range(25)]
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    others = [
        "88.118.80/item-00",
        "88.118.80/item-01",
        "88.118/top",
        "0.NA/88.118.8",
        "88.118.8.1/sub",
    ]
    await storage.write([Write(k, url(k)) for k in shuffled + others])

    assert await storage.list_keys("88.118.8", limit=10) == (25, names[:10])
    assert await storage.list_keys("88.118.8", offset=10, limit=10) == (25, names[10:20])
    assert await storage.list_keys("88.118.8", offset=20, limit=10) == (25, names[20:])
    assert await storage.list_keys("88.118.8", offset=30, limit=10) == (25, [])
    assert await storage.list_keys("88.118.8") == (25, names)
    assert await storage.list_keys("88.118.8", offset=24) == (25, names[24:])
    # Neighbouring prefixes never leak into each other's listings.
    assert await storage.list_keys("88.118.80") == (2, ["88.118.80/item-00", "88.118.80/item-01"])
    assert await storage.list_keys("88.118") == (1, ["88.118/top"])
    assert await storage.list_keys("0.NA") == (1, ["0.NA/88.118.8"])
    assert await storage.list_keys("88.118.8.1") == (1, ["88.118.8.1/sub"])
    assert await storage.list_keys("99.999") == (0, [])


async def test_listing_a_prefix_is_exactly_its_keys_whatever_sorts_next_to_them(storage: Storage) -> None:
    # "-" < "." < "/" < "0": the neighbours a key range scan must keep out (and Unicode suffixes in).
    keys = ["88/a", "88/\U0001f697", "88/" + "\uffff" * 3, "88-x/b", "88.1/c", "880/d", "88./e", "8/f", "88/"]
    await storage.write([Write(k, url(k)) for k in keys])
    assert await storage.list_keys("88") == (4, sorted(["88/", "88/a", "88/\U0001f697", "88/" + "\uffff" * 3]))
    assert await storage.list_keys("88", offset=1, limit=2) == (4, sorted(k for k in keys if k.startswith("88/"))[1:3])
    assert await storage.list_keys("88.1") == (1, ["88.1/c"])
    assert await storage.prefixes() == ["8", "88", "88-x", "88.", "88.1", "880"]


async def test_existing_says_which_keys_have_a_record(storage: Storage) -> None:
    await storage.write([Write(f"88.118.8/{i:05d}", url(i)) for i in range(0, 3000, 3)])
    await storage.write([Write("88.118.8/00003", None), Write("0.NA/88.118.8", ())])
    wanted = [f"88.118.8/{i:05d}" for i in range(0, 3000)] + ["88.118.8/00000", "0.NA/88.118.8", "88.118.8/x\u00e9"]
    assert await storage.existing(wanted) == {f"88.118.8/{i:05d}" for i in range(0, 3000, 3)} - {"88.118.8/00003"} | {
        "0.NA/88.118.8"
    }
    assert await storage.existing([]) == set()


async def test_a_packed_write_stores_its_blob_as_it_is(storage: Storage) -> None:
    blob = pack_values(EVERY_FORMAT)
    write = Write.packed("88.118.8/p", blob)
    assert write == Write("88.118.8/p", EVERY_FORMAT) and not write.is_delete and Write("x", None).is_delete
    assert write.blob is blob and write.values == EVERY_FORMAT
    seq = await storage.write([Write.packed("88.118.8/q", blob), Write.packed("88.118.8/p", blob)])
    assert await storage.get("88.118.8/p") == Record("88.118.8/p", EVERY_FORMAT)
    assert [(c.seq, c.key, c.values) for c in await storage.changes(0)] == [
        (seq - 1, "88.118.8/q", EVERY_FORMAT),
        (seq, "88.118.8/p", EVERY_FORMAT),
    ]


# -- the change log --------------------------------------------------------------------------------


async def test_one_change_per_write_in_order(storage: Storage) -> None:
    before = int(time.time())
    first = await storage.write([Write("88.118.8/a", url(1)), Write("88.118.8/b", url(2))])
    last = await storage.write(
        [
            Write("88.118.8/a", url(3)),
            Write("88.118.8/b", None),
            Write("88.118.8/a", EVERY_FORMAT),  # the later write to the same key wins
            Write("88.118.8/c", url(4)),
        ]
    )
    after = int(time.time())

    assert (first, last) == (2, 6)
    assert await storage.last_seq() == 6
    changes = await storage.changes(0)
    assert [(c.seq, c.key, c.op, c.values) for c in changes] == [
        (1, "88.118.8/a", "put", url(1)),
        (2, "88.118.8/b", "put", url(2)),
        (3, "88.118.8/a", "put", url(3)),
        (4, "88.118.8/b", "delete", ()),
        (5, "88.118.8/a", "put", EVERY_FORMAT),
        (6, "88.118.8/c", "put", url(4)),
    ]
    assert all(before <= c.timestamp <= after for c in changes)
    assert await storage.get("88.118.8/a") == Record("88.118.8/a", EVERY_FORMAT)
    assert await storage.get("88.118.8/b") is None
    assert await storage.count() == 2


async def test_changes_pages_after_a_position(storage: Storage) -> None:
    for i in range(25):
        await storage.write([Write(f"88.118.8/{i}", url(i))])

    seen: list[int] = []
    position = 0
    while page := await storage.changes(position, limit=10):
        assert len(page) <= 10
        seen.extend(c.seq for c in page)
        position = page[-1].seq

    assert seen == list(range(1, 26))
    assert [c.key for c in await storage.changes(22)] == [
        "88.118.8/22",
        "88.118.8/23",
        "88.118.8/24",
    ]
    assert await storage.changes(25) == []
    assert await storage.changes(0, limit=0) == []


async def test_empty_storage_and_empty_batch(storage: Storage) -> None:
    assert await storage.last_seq() == 0
    assert await storage.count() == 0
    assert await storage.changes(0) == []
    assert await storage.write([]) == 0
    await storage.write([Write("88.118.8/a", url(1))])
    assert await storage.write([]) == 1  # nothing appended: still the last seq
    assert len(await storage.changes(0)) == 1


async def test_replaying_the_change_log_rebuilds_the_records(storage: Storage) -> None:
    # What a replica does: apply every change in order; it must end with the primary's records.
    rng = random.Random(7)
    keys = [f"88.118.8/k{i}" for i in range(30)]
    for batch in range(40):
        writes = [
            Write(k, None) if rng.random() < 0.3 else Write(k, url(f"{batch}-{k}"))
            for k in rng.choices(keys, k=rng.randint(1, 12))
        ]
        await storage.write(writes)

    replica: dict[str, tuple[HandleValue, ...]] = {}
    for change in await storage.changes(0, limit=100_000):
        if change.op == "put":
            replica[change.key] = change.values
        else:
            replica.pop(change.key, None)

    stored = await storage.get_many(keys)
    assert {k: r.values for k, r in stored.items()} == replica
    assert await storage.count() == len(replica)
    assert len(await storage.changes(0, limit=100_000)) == await storage.last_seq()


async def test_concurrent_writers_get_distinct_consecutive_seqs(storage: Storage) -> None:
    seqs = await asyncio.gather(
        *(storage.write([Write(f"88.118.8/{i}", url(i)), Write(f"88.118.9/{i}", url(i))]) for i in range(40))
    )

    assert sorted(seqs) == list(range(2, 81, 2))
    changes = await storage.changes(0, limit=1000)
    assert [c.seq for c in changes] == list(range(1, 81))
    # Each batch's two changes are adjacent: batches never interleave.
    for put_a, put_b in zip(changes[::2], changes[1::2], strict=True):
        assert put_a.key.split("/")[1] == put_b.key.split("/")[1]
    assert await storage.count() == 80


# -- atomicity -------------------------------------------------------------------------------------


async def _snapshot(storage: Storage) -> tuple[object, ...]:
    keys = (await storage.list_keys("88.118.8"))[1]
    return (
        await storage.get_many(keys),
        await storage.changes(0),
        await storage.last_seq(),
        await storage.count(),
    )


async def test_a_batch_that_fails_midway_leaves_no_trace(storage: Storage) -> None:
    await storage.write([Write("88.118.8/keep", url("keep")), Write("88.118.8/doomed", url("d"))])
    before = await _snapshot(storage)

    with pytest.raises(HandleError, match="storage error"):
        await storage.write(
            [
                Write("88.118.8/doomed", None),
                Write("88.118.8/new", url("new")),
                Write("88.118.8/keep", url("changed")),
                Write("88.118.8/bad-\ud800", url("bad")),  # a lone surrogate: SQLite cannot store it
                Write("88.118.8/after", url("after")),
            ]
        )

    assert await _snapshot(storage) == before
    assert await storage.get("88.118.8/keep") == Record("88.118.8/keep", url("keep"))
    assert await storage.get("88.118.8/new") is None
    # The storage still works afterwards.
    assert await storage.write([Write("88.118.8/new", url("new"))]) == 3


async def test_values_that_cannot_be_encoded_are_refused(storage: Storage) -> None:
    await storage.write([Write("88.118.8/keep", url("keep"))])
    before = await _snapshot(storage)
    broken = (HandleValue(1, "URL", "string", object()),)

    with pytest.raises(HandleError, match="storage error"):
        await storage.write([Write("88.118.8/new", url("new")), Write("88.118.8/broken", broken)])

    assert await _snapshot(storage) == before


# -- metadata and lifecycle ------------------------------------------------------------------------


async def test_meta_get_and_set(storage: Storage) -> None:
    assert await storage.get_meta("replica.position") is None
    await storage.set_meta("replica.position", "41")
    await storage.set_meta("replica.position", "42")
    await storage.set_meta("node.id", "secondary-1")

    assert await storage.get_meta("replica.position") == "42"
    assert await storage.get_meta("node.id") == "secondary-1"
    assert await storage.last_seq() == 0  # metadata is not a change


async def test_close_is_idempotent_and_later_use_fails_cleanly(storage: Storage) -> None:
    await storage.write([Write("88.118.8/a", url(1))])
    await storage.close()
    await storage.close()

    with pytest.raises(HandleError, match="storage error"):
        await storage.get("88.118.8/a")
    with pytest.raises(HandleError, match="storage error"):
        await storage.write([Write("88.118.8/b", url(2))])
    with pytest.raises(HandleError, match="storage error"):
        await storage.set_meta("x", "y")


# -- digest and prefixes ---------------------------------------------------------------------------


async def test_prefixes_lists_each_prefix_holding_a_record_once(storage: Storage) -> None:
    assert await storage.prefixes() == []
    await storage.write([Write(k, url(k)) for k in ("88/a", "88.118/b", "0.NA/88", "88/c", "88.118.8/d")])
    await storage.write([Write("88.118.8/d", None)])
    assert await storage.prefixes() == ["0.NA", "88", "88.118"]


async def test_digest_covers_every_record_and_not_the_order_of_writes(storage: Storage) -> None:
    empty = (0, hashlib.sha256().hexdigest())
    assert await storage.digest() == empty
    await storage.write([Write("88/b", url(2)), Write("88/a", url(1)), Write("0.NA/88", EVERY_FORMAT)])
    count, first = await storage.digest()
    assert count == 3 and len(first) == 64
    assert await storage.digest() == (3, first)  # nothing changed, same answer
    await storage.write([Write("88/a", url("changed"))])
    assert (await storage.digest())[1] != first  # a new value changes it at once
    await storage.write([Write("88/a", url(1))])
    assert await storage.digest() == (3, first)  # the same records again, whatever the log says
    await storage.write([Write("88/c", url(3)), Write("88/c", None)])
    assert await storage.digest() == (3, first)
    await storage.write([Write(k, None) for k in ("88/a", "88/b", "0.NA/88")])
    assert await storage.digest() == empty


async def test_digest_is_sha256_over_length_prefixed_keys_and_blobs_in_key_order(storage: Storage) -> None:
    records = {"88/x": url("x"), "88.1/y": url("y"), "88/é": url("e")}  # "88.1/y" sorts before "88/x"
    await storage.write([Write(k, v) for k, v in records.items()])
    expected = hashlib.sha256()
    for key in sorted(records):
        raw, blob = key.encode(), pack_values(records[key])
        expected.update(len(raw).to_bytes(4, "big") + raw + len(blob).to_bytes(4, "big") + blob)
    assert await storage.digest() == (3, expected.hexdigest())


async def test_sqlite_and_memory_agree_on_the_digest(tmp_path: Path) -> None:
    sqlite = await SQLiteStorage.open(tmp_path / "handles.db")
    memory = MemoryStorage()
    try:
        rng = random.Random(7)
        for _ in range(20):
            batch = [Write(f"88.{rng.randrange(3)}/{rng.randrange(50)}", url(rng.randrange(9))) for _ in range(30)]
            batch += [Write(f"88.{rng.randrange(3)}/{rng.randrange(50)}", None) for _ in range(5)]
            await sqlite.write(batch)
            await memory.write(batch)
        assert await sqlite.digest() == await memory.digest()
        assert await sqlite.prefixes() == await memory.prefixes()
    finally:
        await sqlite.close()


# -- SQLite only -----------------------------------------------------------------------------------


async def test_reopening_the_file_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "handles.db"
    store = await SQLiteStorage.open(path)
    await store.write(
        [
            Write("88.118.8/a", EVERY_FORMAT),
            Write("88.118.8/b", url("b")),
            Write("0.NA/88.118.8", url("prefix")),
        ]
    )
    await store.write([Write("88.118.8/b", None)])
    await store.set_meta("replica.position", "17")
    await store.close()

    reopened = await SQLiteStorage.open(str(path))
    try:
        assert await reopened.get("88.118.8/a") == Record("88.118.8/a", EVERY_FORMAT)
        assert await reopened.get("88.118.8/b") is None
        assert await reopened.list_keys("0.NA") == (1, ["0.NA/88.118.8"])
        assert await reopened.count() == 2
        assert await reopened.last_seq() == 4
        assert [(c.key, c.op) for c in await reopened.changes(0)] == [
            ("88.118.8/a", "put"),
            ("88.118.8/b", "put"),
            ("0.NA/88.118.8", "put"),
            ("88.118.8/b", "delete"),
        ]
        assert await reopened.get_meta("replica.position") == "17"
        # Numbering carries on from where it stopped.
        assert await reopened.write([Write("88.118.8/c", url("c"))]) == 5
    finally:
        await reopened.close()


SCHEMA_V1 = """
CREATE TABLE handles (key TEXT PRIMARY KEY, prefix TEXT NOT NULL, vals BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX handles_prefix_key ON handles (prefix, key);
CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('put', 'delete')), vals BLOB, ts INTEGER NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version = 1;
"""


async def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    records = {f"88.118.8/{i:04d}": url(i) for i in range(1200)} | {"0.NA/88.118.8": url("p"), "88/x": EVERY_FORMAT}
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)
        db.executemany(
            "INSERT INTO handles VALUES (?, ?, ?)",
            [(k, k.partition("/")[0], pack_values(v)) for k, v in records.items()],
        )
        db.executemany(
            "INSERT INTO changes (key, op, vals, ts) VALUES (?, 'put', ?, 1)",
            [(k, pack_values(v)) for k, v in records.items()],
        )
        db.execute("INSERT INTO meta VALUES ('epoch', '3')")
    db.close()
    store = await SQLiteStorage.open(path)
    try:
        assert await store.count() == len(records)
        assert await store.get_many(list(records)) == {k: Record(k, v) for k, v in records.items()}
        assert await store.list_keys("88.118.8", offset=1000, limit=5) == (
            1200,
            [f"88.118.8/{i:04d}" for i in range(1000, 1005)],
        )
        assert await store.prefixes() == ["0.NA", "88", "88.118.8"]
        assert await store.last_seq() == len(records) and await store.get_meta("epoch") == "3"
        assert await store.write([Write("88.118.8/new", url("n"))]) == len(records) + 1
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert [row[1] for row in db.execute("PRAGMA table_info(handles)")] == ["key", "vals", "seq"]
        assert (
            db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'handles' AND sql IS NOT NULL"
            ).fetchall()
            == []
        )
    db.close()


async def test_a_version_2_file_keeps_its_change_log_and_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE handles (key TEXT PRIMARY KEY, vals BLOB NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,"
            "    op TEXT NOT NULL CHECK (op IN ('put', 'delete')), vals BLOB, ts INTEGER NOT NULL);"
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "PRAGMA user_version = 2;"
        )
        db.execute("INSERT INTO handles VALUES ('88.118.8/a', ?)", (pack_values(url(2)),))
        db.executemany(
            "INSERT INTO changes (key, op, vals, ts) VALUES ('88.118.8/a', 'put', ?, 1)",
            [(pack_values(url(1)),), (pack_values(url(2)),)],
        )
    db.close()
    store = await SQLiteStorage.open(path)
    try:
        await store.write([Write("88.118.8/a", url(3))])
        assert [(c.seq, c.values) for c in await store.changes(0)] == [(1, url(1)), (2, url(2)), (3, url(3))]
        assert await store.get("88.118.8/a") == Record("88.118.8/a", url(3))
    finally:
        await store.close()


async def test_the_latest_put_of_a_key_is_stored_once_and_history_reads_as_written(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(tmp_path / "once.db")
    try:
        await store.write([Write("88.118.8/a", url(1)), Write("88.118.8/b", url(1))], created=True)
        await store.write([Write("88.118.8/a", url(2)), Write("88.118.8/a", url(3)), Write("88.118.8/c", url(1))])
        await store.write([Write("88.118.8/b", None), Write("88.118.8/c", EVERY_FORMAT)])
        await store.write([Write("88.118.8/b", url(4))])
        expected = [
            (1, "88.118.8/a", "put", url(1)),
            (2, "88.118.8/b", "put", url(1)),
            (3, "88.118.8/a", "put", url(2)),
            (4, "88.118.8/a", "put", url(3)),
            (5, "88.118.8/c", "put", url(1)),
            (6, "88.118.8/b", "delete", ()),
            (7, "88.118.8/c", "put", EVERY_FORMAT),
            (8, "88.118.8/b", "put", url(4)),
        ]
        assert [(c.seq, c.key, c.op, c.values) for c in await store.changes(0)] == expected
        assert [(c.seq, c.values) for c in await store.changes(4, limit=2)] == [(5, url(1)), (6, ())]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "once.db") as db:
        # Only the changes that are some key's latest put have no copy: their values are the record's.
        assert [seq for (seq,) in db.execute("SELECT seq FROM changes WHERE op = 'put' AND vals IS NULL")] == [4, 7, 8]
        assert dict(db.execute("SELECT key, seq FROM handles")) == {"88.118.8/a": 4, "88.118.8/c": 7, "88.118.8/b": 8}
    db.close()


async def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resolver.storage import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "CHECKPOINT_SECONDS", 0.05)
    path = tmp_path / "ckpt.db"
    store = await SQLiteStorage.open(path)
    try:
        empty = path.stat().st_size
        await store.write([Write(f"88/{i}", url("x" * 500)) for i in range(2_000)])  # ~1 MB, in the WAL
        deadline = time.monotonic() + 5
        while path.stat().st_size < empty + 500_000:  # commits do not checkpoint below 256 MiB of WAL
            assert time.monotonic() < deadline, "no checkpoint copied the WAL into the database file"
            await asyncio.sleep(0.02)
        assert await store.count() == 2_000
    finally:
        await store.close()


async def test_big_batches_are_written_in_multi_row_statements(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(tmp_path / "big.db")
    try:
        for size in (1, 199, 200, 201, 401, 1000):  # around ROWS_PER_STATEMENT
            base = await store.last_seq()
            writes = [Write(f"88/{size}-{i}", url(i)) for i in range(size)]
            assert await store.write(writes) == base + size
            assert await store.count() == base + size
            changes = await store.changes(base, limit=size + 1)
            assert [c.key for c in changes] == [w.key for w in writes]
            assert [c.seq for c in changes] == list(range(base + 1, base + size + 1))
    finally:
        await store.close()


async def test_failure_while_logging_rolls_back_the_records(tmp_path: Path) -> None:
    # The records are written before the change rows; make the very last step fail and check that
    # the records written just before it are undone too.
    path = tmp_path / "handles.db"
    store = await SQLiteStorage.open(path, synchronous="FULL")
    await store.write([Write("88.118.8/keep", url("keep"))])
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON changes WHEN NEW.key LIKE '%/boom' "
            "BEGIN SELECT RAISE(ABORT, 'change log refused'); END"
        )
    db.close()
    try:
        with pytest.raises(HandleError, match="change log refused"):
            await store.write(
                [
                    Write("88.118.8/keep", url("changed")),
                    Write("88.118.8/new", url(1)),
                    Write("88.118.8/boom", url(2)),
                ]
            )
        assert await store.get("88.118.8/keep") == Record("88.118.8/keep", url("keep"))
        assert await store.get("88.118.8/new") is None
        assert await store.count() == 1
        assert await store.last_seq() == 1
        # The next write commits on its own, without the failed batch's leftovers riding along.
        assert await store.write([Write("88.118.8/next", url("next"))]) == 2
        assert await store.list_keys("88.118.8") == (2, ["88.118.8/keep", "88.118.8/next"])
        assert [c.key for c in await store.changes(0)] == ["88.118.8/keep", "88.118.8/next"]
    finally:
        await store.close()


async def test_open_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SQLiteStorage.open(tmp_path / "a.db", synchronous="SOMETIMES")
    with pytest.raises(HandleError, match="WAL"):
        await SQLiteStorage.open(":memory:")
    with pytest.raises(HandleError, match="cannot open"):
        await SQLiteStorage.open(tmp_path / "missing-dir" / "a.db")

    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(HandleError, match="schema version 99"):
        await SQLiteStorage.open(newer)

    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_bytes(b"this is not a database, just some text that is long enough" * 20)
    with pytest.raises(HandleError, match="storage error"):
        await SQLiteStorage.open(not_a_db)


WRITER = textwrap.dedent("""
    import asyncio, sys
    from resolver.storage.base import Write
    from resolver.storage.sqlite import SQLiteStorage
    from resolver.values import HandleValue

    async def main() -> None:
        store = await SQLiteStorage.open(sys.argv[1])
        i = 0
        while True:
            i += 1
            value = HandleValue(1, "URL", "string", f"https://example.org/{i}")
            seq = await store.write([Write(f"88.118.8/rec-{i}", (value,))])
            print(seq, flush=True)

    asyncio.run(main())
""")


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "handles.db"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acknowledged: list[int] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < 300:
            line = child.stdout.readline()
            if not line:
                assert child.stderr is not None
                pytest.fail(f"the writer died: {child.stderr.read().decode()}")
            acknowledged.append(int(line))
        # Killed in the middle of its next transactions: no clean close, no checkpoint.
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert acknowledged == list(range(1, 301))

    async def check() -> None:
        store = await SQLiteStorage.open(path)
        try:
            records = await store.get_many([f"88.118.8/rec-{seq}" for seq in acknowledged])
            assert len(records) == len(acknowledged)
            for seq in acknowledged:
                [value] = records[f"88.118.8/rec-{seq}"].values
                assert value.value == f"https://example.org/{seq}"
            # Writes committed after the last acknowledgement may be there too, but the change log
            # and the records agree exactly: one change per committed write, numbered without gaps.
            written = await store.count()
            assert written >= len(acknowledged)
            changes = await store.changes(0, limit=written + 10)
            assert [c.seq for c in changes] == list(range(1, written + 1))
            assert [c.key for c in changes] == [f"88.118.8/rec-{n}" for n in range(1, written + 1)]
            assert await store.last_seq() == written
        finally:
            await store.close()

    asyncio.run(check())
