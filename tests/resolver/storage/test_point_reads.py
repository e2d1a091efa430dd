"""GETs that reach storage in one turn of the event loop share one statement (resolver.storage.point_reads)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from resolver.errors import HandleError
from resolver.records import Record
from resolver.storage import point_reads
from resolver.storage.base import Write
from resolver.storage.point_reads import PointReads
from resolver.storage.sqlite import SQLiteStorage
from tests.resolver.storage.cases import url


async def test_concurrent_gets_share_one_statement_and_each_gets_its_own_record(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(tmp_path / "points.db", cache_records=0)
    try:
        await store.write([Write(f"88/{i:03d}", url(i)) for i in range(50)])
        keys = [f"88/{i:03d}" for i in range(0, 20, 2)] + ["88/missing", "88/000"]
        found = await asyncio.gather(*(store.get(key) for key in keys))
        assert found[:10] == [Record(f"88/{i:03d}", url(i)) for i in range(0, 20, 2)]
        assert found[10] is None, "a key with no record is None, whatever the others found"
        assert found[11] == Record("88/000", url(0)), "a key asked twice in one batch gets its record twice"
        assert (store._points.statements, store._points.keys) == (1, 11)
        assert await store.get("88/001") == Record("88/001", url(1)), "a lone GET is not held back"
        assert store._points.statements == 2
    finally:
        await store.close()


async def test_a_batch_is_sent_once_it_holds_max_batch_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(point_reads, "MAX_BATCH", 10)
    store = await SQLiteStorage.open(tmp_path / "big.db", cache_records=0)
    try:
        await store.write([Write(f"88/{i:03d}", url(i)) for i in range(25)])
        found = await asyncio.gather(*(store.get(f"88/{i:03d}") for i in range(25)))
        assert found == [Record(f"88/{i:03d}", url(i)) for i in range(25)]
        assert store._points.statements == 3, "10 + 10 + the 5 left at the end of the turn"
    finally:
        await store.close()


class FailingFetch:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    async def __call__(self, sql: str, params: Iterable[Any]) -> list[sqlite3.Row]:
        self.calls += 1
        await asyncio.sleep(0)
        raise self.error


async def test_a_failed_statement_fails_every_get_of_its_batch_with_its_error() -> None:
    fetch = FailingFetch(HandleError("storage error: disk I/O error"))
    reads = PointReads(fetch)
    results = await asyncio.gather(reads.get("88/a"), reads.get("88/b"), return_exceptions=True)
    assert [str(r) for r in results] == ["storage error: disk I/O error"] * 2
    assert fetch.calls == 1


async def test_a_get_whose_client_went_away_leaves_the_others_their_answer(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(tmp_path / "cancel.db", cache_records=0)
    try:
        await store.write([Write("88/a", url("a")), Write("88/b", url("b"))])
        gone = asyncio.ensure_future(store.get("88/a"))
        stays = asyncio.ensure_future(store.get("88/b"))
        await asyncio.sleep(0)  # both joined the batch
        gone.cancel()
        assert await stays == Record("88/b", url("b"))
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await store.close()


async def test_a_get_on_a_closed_store_says_so(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(tmp_path / "closed.db", cache_records=0)
    await store.close()
    with pytest.raises(HandleError, match="storage error"):
        await store.get("88/a")
