"""The digest buckets: equal records give equal digests however they were written (batch, one by one,
with deletes, upgraded from schema 3, the in-memory fake), the kept buckets always equal the slow
computation, and two nodes that differ find which keys differ through the buckets."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from resolver.codec import pack_values
from resolver.storage.base import Storage, Write, digest_records
from resolver.storage.buckets import digest_buckets, lanes_hex
from resolver.storage.sqlite import SQLiteStorage
from tests.fakes import MemoryStorage
from tests.resolver.storage.cases import EVERY_FORMAT, make_v3_file, url

RECORDS = {f"88.118.{i % 3}/{i:04d}": pack_values(url(i)) for i in range(300)} | {
    "0.NA/88.118.1": pack_values(EVERY_FORMAT),
    "88.118.1/é": pack_values(url("é")),
}


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[list[SQLiteStorage]]:
    stores: list[SQLiteStorage] = []
    yield stores
    for store in stores:
        await store.close()


async def _open(opened: list[SQLiteStorage], path: Path) -> SQLiteStorage:
    store = await SQLiteStorage.open(path)
    opened.append(store)
    return store


async def _all_records(store: Storage) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    while page := await store.records_after(found[-1][0] if found else "", 97):
        found.extend(page)
    return found


async def _view(store: Storage) -> tuple[object, ...]:
    prefixes = await store.prefixes()
    return (
        await store.digest(),
        await store.digest_buckets(),
        prefixes,
        [await store.count_prefix(p) for p in prefixes],
        await store.count(),
    )


async def test_equal_records_give_equal_digests_however_they_were_written(
    tmp_path: Path, opened: list[SQLiteStorage]
) -> None:
    batch = await _open(opened, tmp_path / "batch.db")
    await batch.write([Write.packed(k, v) for k, v in RECORDS.items()], created=True)

    rng = random.Random(5)
    history: list[tuple[str, bytes | None]] = []
    for key, blob in rng.sample(sorted(RECORDS.items()), len(RECORDS)):
        history += [(key, pack_values(url("old"))), (f"88.118.9/gone-{key}", blob), (key, blob)]
        history.append((f"88.118.9/gone-{key}", None))
    one_by_one = await _open(opened, tmp_path / "one.db")
    for key, written in history:
        await one_by_one.write([Write(key, None) if written is None else Write.packed(key, written)])
    await one_by_one.write([Write.packed(k, v) for k, v in list(RECORDS.items())[:50]])  # no-ops

    assert make_v3_file(str(tmp_path / "v3.db"), history) == RECORDS
    upgraded = await _open(opened, tmp_path / "v3.db")

    memory = MemoryStorage()
    await memory.write([Write.packed(k, v) for k, v in RECORDS.items()])

    expected = await _view(batch)
    assert expected[0] == digest_records(RECORDS.items())
    assert await _view(one_by_one) == expected
    assert await _view(upgraded) == expected
    if hasattr(memory, "digest_buckets"):
        assert await _view(memory) == expected
    assert expected[2] == ["0.NA", "88.118.0", "88.118.1", "88.118.2"] and expected[-1] == len(RECORDS)


async def test_kept_buckets_equal_the_slow_computation_after_random_writes(sqlite_store: SQLiteStorage) -> None:
    rng = random.Random(11)
    keys = [f"88.{rng.randrange(4)}/{rng.randrange(10**6)}" for _ in range(150)]
    for round_ in range(40):
        writes = [
            Write(k, None) if rng.random() < 0.3 else Write(k, url(rng.randrange(4)))
            for k in rng.choices(keys, k=rng.randint(1, 30))
        ]
        await sqlite_store.write(writes)
        if round_ % 8 == 0:
            records = await _all_records(sqlite_store)
            slow = digest_buckets(records)
            assert await sqlite_store.digest_buckets() == [(b, n, lanes_hex(four)) for b, (n, four) in slow.items()]
            assert await sqlite_store.digest() == digest_records(records)
    # Emptied again: every bucket back to nothing, the digest of no records.
    await sqlite_store.write([Write(k, None) for k in keys])
    assert await sqlite_store.digest_buckets() == []
    assert await sqlite_store.digest() == digest_records([])


async def test_buckets_locate_the_keys_where_two_nodes_differ(tmp_path: Path, opened: list[SQLiteStorage]) -> None:
    primary = await _open(opened, tmp_path / "primary.db")
    mirror = await _open(opened, tmp_path / "mirror.db")
    many = {f"88.118.8/{i:05d}": pack_values(url(i)) for i in range(3000)}
    await primary.write([Write.packed(k, v) for k, v in many.items()], created=True)
    await mirror.write([Write.packed(k, v) for k, v in many.items()], created=True)
    assert await primary.digest() == await mirror.digest()
    # A lost update, a lost delete and a lost create, as a mirror that missed three writes would be.
    await primary.write(
        [Write("88.118.8/01234", url("new")), Write("88.118.8/02000", None), Write("88.118.8/extra", url(1))]
    )
    assert await primary.digest() != await mirror.digest()

    theirs = {b: (n, h) for b, n, h in await mirror.digest_buckets()}
    ours = {b: (n, h) for b, n, h in await primary.digest_buckets()}
    differing = sorted(b for b in ours.keys() | theirs.keys() if ours.get(b) != theirs.get(b))
    assert 1 <= len(differing) <= 3

    found: set[str] = set()
    for bucket in differing:
        keys: dict[str, list[str]] = {}
        for name, store in (("primary", primary), ("mirror", mirror)):
            listed: list[str] = []
            while page := await store.bucket_keys(bucket, listed[-1] if listed else "", 2):
                listed.extend(page)
            keys[name] = listed
        both = set(keys["primary"]) | set(keys["mirror"])
        records = [await primary.get_many(sorted(both)), await mirror.get_many(sorted(both))]
        found |= {k for k in both if records[0].get(k) != records[1].get(k)}
    assert found == {"88.118.8/01234", "88.118.8/02000", "88.118.8/extra"}


async def test_bucket_keys_lists_one_bucket_in_key_order(storage: Storage) -> None:
    await storage.write([Write(f"88/{i}", url(i)) for i in range(500)])
    buckets = await storage.digest_buckets()
    listed = [await storage.bucket_keys(bucket, "", 1000) for bucket, _, _ in buckets]
    assert [len(keys) for keys in listed] == [n for _, n, _ in buckets]
    assert all(keys == sorted(keys) for keys in listed)
    assert sorted(k for keys in listed for k in keys) == sorted(f"88/{i}" for i in range(500))
    first_bucket, n, _ = buckets[0]
    everything = listed[0]
    assert await storage.bucket_keys(first_bucket, everything[0], 1000) == everything[1:]
    assert len(await storage.bucket_keys(first_bucket, "", max(n - 1, 0))) == max(n - 1, 0)
