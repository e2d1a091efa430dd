"""Reads in parallel (resolver.storage.read_pool): a long read on one connection, or any number queued on the
scan connection, never holds up a GET; closing stops the reads in progress."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from resolver.errors import HandleError
from resolver.records import Record
from resolver.storage.base import Write
from resolver.storage.sqlite import SQLiteStorage
from tests.resolver.storage.cases import url

# A statement that keeps its connection busy until interrupted (10^12 steps: hours).
ENDLESS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000000) SELECT count(*) FROM n"
)


async def _running(task: asyncio.Task[object]) -> None:
    await asyncio.sleep(0.05)  # in its connection's thread by now
    assert not task.done()


async def test_a_long_read_on_one_connection_does_not_block_a_get(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(tmp_path / "pool.db", readers=2, cache_records=0)
    try:
        await store.write([Write("88/a", url("a"))])
        endless = asyncio.create_task(store._readers.fetch(ENDLESS))
        await _running(endless)
        started = time.monotonic()
        for _ in range(20):  # each needs a connection (the cache is off): the free one serves them all
            assert await store.get("88/a") == Record("88/a", url("a"))
        assert time.monotonic() - started < 1.0 and not endless.done()
        await store._readers.interrupt()
        with pytest.raises(Exception, match="interrupted"):
            await endless
        assert await store.get("88/a") == Record("88/a", url("a"))  # its connection serves again
    finally:
        await store.close()


async def test_scans_queue_on_their_own_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resolver.storage import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "SHORT_READ_ROWS", 10)
    store = await SQLiteStorage.open(tmp_path / "scan.db", readers=1, cache_records=0)
    try:
        await store.write([Write(f"88/{i:03d}", url(i)) for i in range(100)])
        endless = asyncio.create_task(store._readers.fetch(ENDLESS, scan=True))
        await _running(endless)
        deep_page = asyncio.create_task(store.list_keys("88", offset=50, limit=5))  # past SHORT_READ_ROWS
        in_bucket = asyncio.create_task(store.bucket_keys(0, "", 10))
        # Short reads go on, on the one short-read connection, while the scan connection is held.
        assert await store.get("88/001") == Record("88/001", url(1))
        assert await store.list_keys("88", limit=3) == ["88/000", "88/001", "88/002"]
        assert [key for key, _ in await store.records_after("88/097", 5)] == ["88/098", "88/099"]
        assert (await store.digest())[0] == 100
        await asyncio.sleep(0.05)
        assert not deep_page.done() and not in_bucket.done(), "a scan did not wait for the scan connection"
        await store._readers.interrupt()
        with pytest.raises(Exception, match="interrupted"):
            await endless
        assert await deep_page == [f"88/{i:03d}" for i in range(50, 55)]
        assert all(key.startswith("88/") for key in await in_bucket)
    finally:
        await store.close()


async def test_closing_stops_a_scan_in_progress(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(tmp_path / "close.db")
    endless = asyncio.create_task(store._readers.fetch(ENDLESS, scan=True))
    await _running(endless)
    started = time.monotonic()
    await store.close()
    assert time.monotonic() - started < 2.0
    with pytest.raises(Exception, match="interrupted"):
        await endless
    with pytest.raises(HandleError, match="closed"):
        await store.get("88/a")


async def test_reads_keep_working_after_statements_fail(sqlite_store: SQLiteStorage) -> None:
    await sqlite_store.write([Write("88/a", url("a"))])
    for _ in range(10):  # more failures than connections: each connection is given back
        with pytest.raises(Exception, match="no such table"):
            await sqlite_store._readers.fetch("SELECT * FROM nowhere")
    assert await sqlite_store.keys_between("", None, 5) == ["88/a"]
