"""The SQLite file (resolver.storage.sqlite): reopening, schema upgrades, how the change log is stored,
background WAL checkpoints, multi-row statements, rollback, what it refuses to open, and kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resolver.codec import pack_values
from resolver.errors import HandleError
from resolver.records import Record
from resolver.storage.base import Write
from resolver.storage.sqlite import SCHEMA_VERSION, SQLiteStorage
from tests.resolver.storage.cases import EVERY_FORMAT, make_v3_file, url

PROJECT_ROOT = Path(__file__).resolve().parents[3]

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
        assert await reopened.list_keys("0.NA") == ["0.NA/88.118.8"]
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
        assert await store.list_keys("88.118.8", offset=1000, limit=5) == [
            f"88.118.8/{i:04d}" for i in range(1000, 1005)
        ]
        assert await store.count_prefix("88.118.8") == 1200
        assert await store.prefixes() == ["0.NA", "88", "88.118.8"]
        assert await store.last_seq() == len(records) and await store.get_meta("epoch") == "3"
        assert await store.write([Write("88.118.8/new", url("n"))]) == len(records) + 1
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
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


async def test_a_version_3_file_gets_its_counts_and_digest_buckets_once(tmp_path: Path) -> None:
    history: list[tuple[str, bytes | None]] = [(f"88.118.8/{i:04d}", pack_values(url(i))) for i in range(1500)]
    history += [("88.118.8/0007", pack_values(url("again"))), ("88.118.8/0008", None), ("0.NA/88.118.8", b"\x90")]
    records = make_v3_file(str(tmp_path / "v3.db"), history)
    fresh = await SQLiteStorage.open(tmp_path / "fresh.db")
    store = await SQLiteStorage.open(tmp_path / "v3.db")
    try:
        await fresh.write([Write.packed(k, v) for k, v in records.items()], created=True)
        assert await store.count_prefix("88.118.8") == 1499 and await store.count() == 1500
        assert await store.prefixes() == ["0.NA", "88.118.8"]
        assert await store.digest() == await fresh.digest()
        assert await store.digest_buckets() == await fresh.digest_buckets()
        # The version-3 log reads as it was written, the latest puts included, and goes on from there.
        changes = await store.changes(1500)
        assert [(c.seq, c.key, c.op, c.values) for c in changes] == [
            (1501, "88.118.8/0007", "put", url("again")),
            (1502, "88.118.8/0008", "delete", ()),
            (1503, "0.NA/88.118.8", "put", ()),
        ]
        assert [(c.key, c.values) for c in await store.changes(7, limit=2)] == [
            ("88.118.8/0007", url(7)),
            ("88.118.8/0008", url(8)),
        ]
        assert await store.write([Write("88.118.8/0007", url("third"))]) == 1504
        await fresh.write([Write("88.118.8/0007", url("third"))])
        assert await store.digest() == await fresh.digest()
    finally:
        await store.close()
        await fresh.close()
    with sqlite3.connect(tmp_path / "v3.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


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
        assert await store.list_keys("88.118.8") == ["88.118.8/keep", "88.118.8/next"]
        assert await store.count_prefix("88.118.8") == 2
        assert [c.key for c in await store.changes(0)] == ["88.118.8/keep", "88.118.8/next"]
    finally:
        await store.close()


async def test_open_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"synchronous must be one of .*, not 'SOMETIMES'"):
        await SQLiteStorage.open(tmp_path / "a.db", synchronous="SOMETIMES")
    with pytest.raises(HandleError, match="':memory:' cannot use WAL journaling"):
        await SQLiteStorage.open(":memory:")
    with pytest.raises(HandleError, match=r"cannot open .*missing-dir"):
        await SQLiteStorage.open(tmp_path / "missing-dir" / "a.db")

    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(HandleError, match="schema version 99"):
        await SQLiteStorage.open(newer)

    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_bytes(b"this is not a database, just some text that is long enough" * 20)
    with pytest.raises(
        HandleError, match=r"storage error: .*notes\.txt is damaged \(SQLite found: file is not a database\)"
    ):
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
