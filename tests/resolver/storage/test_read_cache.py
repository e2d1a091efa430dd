"""The record cache (resolver.storage.record_cache) and SQLiteStorage's use of it: hot records from memory,
bounded by count and bytes, every write invalidating what it wrote, and no stale record from a read
that raced a write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resolver.codec import pack_values
from resolver.records import Record
from resolver.storage.base import Write
from resolver.storage.record_cache import RecordCache
from resolver.storage.sqlite import SQLiteStorage
from tests.resolver.storage.cases import EVERY_FORMAT, url

# -- the cache on its own --------------------------------------------------------------------------


def test_least_recently_used_records_go_first() -> None:
    cache = RecordCache(max_records=3)
    for key in "abc":
        cache.put(key, key.encode(), cache.generation)
    assert cache.get("a") == b"a"  # now the most recent
    cache.put("d", b"d", cache.generation)
    assert (cache.get("b"), cache.get("a"), cache.get("c"), cache.get("d")) == (None, b"a", b"c", b"d")
    assert (cache.hits, cache.misses, len(cache)) == (4, 1, 3)


def test_bytes_are_bounded_whatever_the_record_sizes() -> None:
    cache = RecordCache(max_records=1000, max_bytes=1000, max_record_bytes=400)
    cache.put("huge", bytes(401), cache.generation)
    assert cache.get("huge") is None and len(cache) == 0  # larger than one record may be: never kept
    for i in range(10):
        cache.put(str(i), bytes(300), cache.generation)
    assert len(cache) == 3 and cache.size_bytes == 900
    cache.put("9", bytes(10), cache.generation)  # replacing a record counts only its new size
    assert cache.size_bytes == 610


def test_a_read_from_before_an_invalidation_is_not_kept() -> None:
    cache = RecordCache()
    cache.put("a", b"old", cache.generation)
    started = cache.generation  # a read starts
    cache.invalidate(["a"])  # a write commits meanwhile
    cache.put("a", b"old", started)  # the read ends with what it found before the write
    assert cache.get("a") is None
    cache.put("a", b"new", cache.generation)
    assert cache.get("a") == b"new"


# -- the cache in SQLiteStorage ------------------------------------------------------------------


async def test_a_record_read_twice_is_read_from_storage_once(sqlite_store: SQLiteStorage) -> None:
    await sqlite_store.write([Write("88/a", EVERY_FORMAT), Write("88/b", url("b"))])
    assert await sqlite_store.get("88/a") == Record("88/a", EVERY_FORMAT)
    hits = sqlite_store.cache.hits
    assert await sqlite_store.get("88/a") == Record("88/a", EVERY_FORMAT)
    assert sqlite_store.cache.hits == hits + 1
    found = await sqlite_store.get_many(["88/a", "88/b", "88/missing"])
    assert found == {"88/a": Record("88/a", EVERY_FORMAT), "88/b": Record("88/b", url("b"))}
    assert await sqlite_store.get("88/b") == Record("88/b", url("b")) and sqlite_store.cache.hits == hits + 3


async def test_every_kind_of_write_invalidates_what_it_wrote(sqlite_store: SQLiteStorage) -> None:
    await sqlite_store.write([Write(f"88/{i}", url(i)) for i in range(5)], created=True)
    await sqlite_store.get_many([f"88/{i}" for i in range(5)])
    assert len(sqlite_store.cache) == 5
    await sqlite_store.write([Write("88/0", url("new"))])  # a single put
    await sqlite_store.write([Write("88/1", None)])  # a delete
    await sqlite_store.write([Write("88/2", url("x")), Write("88/3", url("y")), Write("88/2", url("z"))])  # a batch
    await sqlite_store.write([Write.packed("88/4", pack_values(url("packed")))])  # a replicated write's form
    assert await sqlite_store.get_many([f"88/{i}" for i in range(5)]) == {
        "88/0": Record("88/0", url("new")),
        "88/2": Record("88/2", url("z")),
        "88/3": Record("88/3", url("y")),
        "88/4": Record("88/4", url("packed")),
    }
    assert await sqlite_store.get("88/1") is None


async def test_a_read_that_raced_a_write_never_leaves_the_old_record_cached(
    sqlite_store: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sqlite_store.write([Write("88/a", url("old"))])
    pool = sqlite_store._readers
    real_fetch = pool.fetch
    read_done, write_done = asyncio.Event(), asyncio.Event()

    async def slow_fetch(sql: str, params: Any = (), *, scan: bool = False) -> list[Any]:
        rows = await real_fetch(sql, params, scan=scan)  # reads the old record...
        read_done.set()
        await write_done.wait()  # ...and is slow to come back, after the write committed
        return rows

    monkeypatch.setattr(pool, "fetch", slow_fetch)
    reader = asyncio.create_task(sqlite_store.get("88/a"))
    await read_done.wait()
    monkeypatch.setattr(pool, "fetch", real_fetch)
    await sqlite_store.write([Write("88/a", url("new"))])
    write_done.set()
    assert await reader == Record("88/a", url("old"))  # it started before the write: either answer is right
    assert await sqlite_store.get("88/a") == Record("88/a", url("new"))  # but the old one was not kept
    assert await sqlite_store.get("88/a") == Record("88/a", url("new"))


async def test_a_cached_record_is_never_shared_with_the_caller(sqlite_store: SQLiteStorage) -> None:
    await sqlite_store.write([Write("88/a", EVERY_FORMAT)])
    first = await sqlite_store.get("88/a")
    assert first is not None
    admin = next(v for v in first.values if v.type == "HS_ADMIN")
    admin.value["index"] = 999  # a caller mutating what it read (values of some formats are dicts)
    assert await sqlite_store.get("88/a") == Record("88/a", EVERY_FORMAT)


async def test_the_cache_size_is_an_open_parameter(tmp_path: Any) -> None:
    store = await SQLiteStorage.open(tmp_path / "small.db", cache_records=2)
    try:
        await store.write([Write(f"88/{i}", url(i)) for i in range(5)])
        await store.get_many([f"88/{i}" for i in range(5)])
        assert len(store.cache) == 2
    finally:
        await store.close()
