"""Listing at scale (SQLiteStorage and the in-memory fake alike): keyset pages that neither skip nor repeat a
key while writes go on, and the per-prefix counts kept by every kind of write."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

from resolver.codec import unpack_values
from resolver.records import Record
from resolver.storage.base import Storage, Write
from resolver.storage.sqlite import SQLiteStorage
from tests.resolver.storage.cases import url


async def _page_through(storage: Storage, prefix: str, size: int) -> list[str]:
    seen: list[str] = []
    after: str | None = None
    while page := await storage.list_keys(prefix, after=after, limit=size):
        seen.extend(page)
        after = page[-1]
        await asyncio.sleep(0)  # let the writers in between two pages
    return seen


async def test_keyset_pages_never_skip_or_repeat_a_key_that_exists_throughout(storage: Storage) -> None:
    rng = random.Random(12)
    stable = sorted(f"88.118.8/s{rng.randrange(10**9):09d}" for _ in range(400))
    await storage.write([Write(k, url(k)) for k in stable])
    transient: list[str] = []
    stop = asyncio.Event()

    async def churn() -> None:
        # Inserts before, between and after the stable keys, deletes some of them again, and
        # rewrites stable keys with new values: none of it may disturb the pages of stable keys.
        n = 0
        while not stop.is_set():
            n += 1
            new = [f"88.118.8/s{rng.randrange(10**9):09d}x{n}" for _ in range(5)]
            gone = rng.sample(transient, min(len(transient), 3))
            writes = [Write(k, url(n)) for k in new] + [Write(k, None) for k in gone]
            writes.append(Write(rng.choice(stable), url(f"v{n}")))
            await storage.write(writes)
            transient.extend(new)
            for k in gone:
                transient.remove(k)
            await asyncio.sleep(0)

    writer = asyncio.create_task(churn())
    try:
        for size in (1, 7, 50):
            seen = await _page_through(storage, "88.118.8", size)
            assert seen == sorted(set(seen)), "a key repeated or out of order"
            assert set(stable) <= set(seen), "a key that existed throughout was skipped"
    finally:
        stop.set()
        await writer
    assert transient, "the writer never ran between pages"
    assert await storage.count_prefix("88.118.8") == len(stable) + len(transient)


async def test_counts_follow_puts_deletes_and_batches(storage: Storage) -> None:
    rng = random.Random(3)
    prefixes = ["88.118.8", "88.118", "0.NA", "88.118.80"]
    keys = [f"{p}/{i}" for p in prefixes for i in range(40)]
    for round_ in range(30):
        writes = [
            Write(k, None) if rng.random() < 0.35 else Write(k, url(rng.randrange(3)))
            for k in rng.choices(keys, k=rng.randint(1, 25))
        ]
        await storage.write(writes)
        if round_ % 10 == 0:
            await storage.write([Write(f"88.99/{round_}-{i}", url(i)) for i in range(20)], created=True)
        for prefix in [*prefixes, "88.99"]:
            assert await storage.count_prefix(prefix) == len(await storage.list_keys(prefix))
    assert await storage.count() == sum([await storage.count_prefix(p) for p in [*prefixes, "88.99"]])
    await storage.write([Write(k, None) for k in keys])
    assert [await storage.count_prefix(p) for p in prefixes] == [0, 0, 0, 0]
    assert await storage.prefixes() == ["88.99"]


async def test_kept_counts_equal_a_count_of_the_records(tmp_path: Path) -> None:
    path = tmp_path / "counts.db"
    store = await SQLiteStorage.open(path)
    try:
        await store.write([Write(f"88.{i % 7}/{i}", url(i)) for i in range(2000)], created=True)
        await store.write([Write(f"88.{i % 7}/{i}", None) for i in range(0, 2000, 3)])
        await store.write([Write(f"88.{i % 5}/{i}", url(i + 1)) for i in range(0, 2000, 2)])
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        counted = dict(
            db.execute("SELECT substr(key, 1, instr(key, '/') - 1) AS p, count(*) FROM handles GROUP BY p").fetchall()
        )
        assert dict(db.execute("SELECT prefix, n FROM prefix_counts").fetchall()) == counted
    db.close()


async def test_cursor_pages_and_deep_offset_pages_of_a_large_prefix(sqlite_store: SQLiteStorage) -> None:
    await sqlite_store.write([Write(f"88.118.8/{i:06d}", url(i)) for i in range(20_000)], created=True)
    with_cursor = await sqlite_store.list_keys("88.118.8", after="88.118.8/019000", limit=3)
    assert with_cursor == ["88.118.8/019001", "88.118.8/019002", "88.118.8/019003"]
    # Deep pages by number find their range of keys first (resolver.storage.ranks), cursor or not,
    # and follow the writes.
    assert await sqlite_store.list_keys("88.118.8", offset=19_998, limit=5) == ["88.118.8/019998", "88.118.8/019999"]
    assert await sqlite_store.list_keys("88.118.8", offset=12_345, limit=2) == ["88.118.8/012345", "88.118.8/012346"]
    from_cursor = await sqlite_store.list_keys("88.118.8", after="88.118.8/000999", offset=10_000, limit=1)
    assert from_cursor == ["88.118.8/011000"]
    await sqlite_store.write([Write(f"88.118.8/{i:06d}", None) for i in range(0, 20_000, 2)])
    await sqlite_store.write([Write(f"88.118.8/{i:06d}a", url(i)) for i in range(5)])
    assert await sqlite_store.list_keys("88.118.8", offset=9_000, limit=2) == ["88.118.8/017991", "88.118.8/017993"]
    assert await sqlite_store.count_prefix("88.118.8") == 10_005


async def test_a_snapshot_reads_every_record_by_cursor_and_a_resync_finds_keys_between(storage: Storage) -> None:
    keys = [*sorted(f"88.{i % 3}/{i:03d}" for i in range(60)), "0.NA/88.1"]
    await storage.write([Write(k, url(k)) for k in keys])
    read: list[tuple[str, bytes]] = []
    while page := await storage.records_after(read[-1][0] if read else "", 8):
        assert len(page) <= 8
        read.extend(page)
    assert [k for k, _ in read] == sorted(keys)
    assert {k: r.values for k, r in (await storage.get_many(keys)).items()} == {
        k: Record(k, unpack_values(blob)).values for k, blob in read
    }
    ordered = sorted(keys)
    assert await storage.keys_between(ordered[3], ordered[9], 100) == ordered[4:10]
    assert await storage.keys_between(ordered[3], ordered[9], 2) == ordered[4:6]
    assert await storage.keys_between(ordered[-3], None, 100) == ordered[-2:]
    assert await storage.keys_between(ordered[5], ordered[5], 100) == []
    assert await storage.records_after(ordered[-1], 10) == []
