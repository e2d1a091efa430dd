"""The change log and what replication reads (SQLiteStorage and the in-memory fake alike): one change per
write in order, paging, replay, concurrent writers, prefixes and the digest that mirrors compare."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import zlib
from pathlib import Path

from resolver.codec import pack_values
from resolver.records import Record
from resolver.storage.base import Storage, Write, digest_records
from resolver.storage.buckets import BUCKETS
from resolver.storage.sqlite import SQLiteStorage
from resolver.values import HandleValue
from tests.fakes import MemoryStorage
from tests.resolver.storage.cases import EVERY_FORMAT, url

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


# -- digest and prefixes ---------------------------------------------------------------------------


async def test_prefixes_lists_each_prefix_holding_a_record_once(storage: Storage) -> None:
    assert await storage.prefixes() == []
    await storage.write([Write(k, url(k)) for k in ("88/a", "88.118/b", "0.NA/88", "88/c", "88.118.8/d")])
    await storage.write([Write("88.118.8/d", None)])
    assert await storage.prefixes() == ["0.NA", "88", "88.118"]


async def test_digest_covers_every_record_and_not_the_order_of_writes(storage: Storage) -> None:
    empty = digest_records([])
    assert empty == (0, hashlib.sha256(bytes(40 * BUCKETS)).hexdigest())
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


async def test_digest_is_sha256_over_buckets_of_xored_record_hashes(storage: Storage) -> None:
    records = {"88/x": url("x"), "88.1/y": url("y"), "88/é": url("e")}
    await storage.write([Write(k, v) for k, v in records.items()])
    buckets: dict[int, tuple[int, int]] = {}
    for key, values in records.items():
        raw, blob = key.encode(), pack_values(values)
        record = hashlib.sha256(len(raw).to_bytes(4, "big") + raw + len(blob).to_bytes(4, "big") + blob).digest()
        bucket = zlib.crc32(raw) % BUCKETS
        count, xor = buckets.get(bucket, (0, 0))
        buckets[bucket] = (count + 1, xor ^ int.from_bytes(record, "big"))
    expected = hashlib.sha256()
    for bucket in range(BUCKETS):
        count, xor = buckets.get(bucket, (0, 0))
        expected.update(count.to_bytes(8, "big") + xor.to_bytes(32, "big"))
    assert await storage.digest() == (3, expected.hexdigest())
    assert await storage.digest_buckets() == [
        (bucket, count, xor.to_bytes(32, "big").hex()) for bucket, (count, xor) in sorted(buckets.items())
    ]


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
