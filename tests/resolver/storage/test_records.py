"""Records in storage (SQLiteStorage and the in-memory fake alike): reads, writes, listings, atomic
batches, metadata and closing."""

from __future__ import annotations

import random

import pytest

from resolver.codec import pack_values
from resolver.errors import HandleError
from resolver.records import Record
from resolver.storage.base import Storage, Write
from resolver.values import HandleValue, Reference
from tests.resolver.storage.cases import EVERY_FORMAT, url

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
    assert await storage.list_keys("88.118.8") == ["88.118.8/b"]
    assert await storage.count_prefix("88.118.8") == 1


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

    assert await storage.list_keys("88.118.8", limit=10) == names[:10]
    assert await storage.list_keys("88.118.8", offset=10, limit=10) == names[10:20]
    assert await storage.list_keys("88.118.8", offset=20, limit=10) == names[20:]
    assert await storage.list_keys("88.118.8", offset=30, limit=10) == []
    assert await storage.list_keys("88.118.8") == names
    assert await storage.list_keys("88.118.8", offset=24) == names[24:]
    assert await storage.count_prefix("88.118.8") == 25
    # Neighbouring prefixes never leak into each other's listings or counts.
    assert await storage.list_keys("88.118.80") == ["88.118.80/item-00", "88.118.80/item-01"]
    assert await storage.list_keys("88.118") == ["88.118/top"]
    assert await storage.list_keys("0.NA") == ["0.NA/88.118.8"]
    assert await storage.list_keys("88.118.8.1") == ["88.118.8.1/sub"]
    assert await storage.list_keys("99.999") == []
    assert [await storage.count_prefix(p) for p in ("88.118.80", "88.118", "0.NA", "88.118.8.1", "99.999")] == [
        2,
        1,
        1,
        1,
        0,
    ]


async def test_list_keys_after_a_key_is_keyset_paging(storage: Storage) -> None:
    names = [f"88.118.8/item-{i:02d}" for i in range(25)]
    await storage.write([Write(k, url(k)) for k in [*names, "88.118.80/x", "88.118/y"]])
    assert await storage.list_keys("88.118.8", after=names[9], limit=10) == names[10:20]
    assert await storage.list_keys("88.118.8", after=names[9], offset=5, limit=3) == names[15:18]  # offset from there
    assert await storage.list_keys("88.118.8", after=names[24]) == []
    # A cursor need not be a key that exists, nor one of the prefix: the range still bounds it.
    assert await storage.list_keys("88.118.8", after="88.118.8/item-09x", limit=2) == names[10:12]
    assert await storage.list_keys("88.118.8", after="0", limit=2) == names[:2]
    assert await storage.list_keys("88.118.8", after="88.118.8/", limit=1) == names[:1]
    assert await storage.list_keys("88.118.8", after="88.118.80/a") == []


async def test_listing_a_prefix_is_exactly_its_keys_whatever_sorts_next_to_them(storage: Storage) -> None:
    # "-" < "." < "/" < "0": the neighbours a key range scan must keep out (and Unicode suffixes in).
    keys = ["88/a", "88/\U0001f697", "88/" + "\uffff" * 3, "88-x/b", "88.1/c", "880/d", "88./e", "8/f", "88/"]
    await storage.write([Write(k, url(k)) for k in keys])
    assert await storage.list_keys("88") == sorted(["88/", "88/a", "88/\U0001f697", "88/" + "\uffff" * 3])
    assert await storage.list_keys("88", offset=1, limit=2) == sorted(k for k in keys if k.startswith("88/"))[1:3]
    assert await storage.list_keys("88.1") == ["88.1/c"]
    assert [await storage.count_prefix(p) for p in ("88", "88.1", "88-x", "880", "88.", "8")] == [4, 1, 1, 1, 1, 1]
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


# -- atomicity -------------------------------------------------------------------------------------


async def _snapshot(storage: Storage) -> tuple[object, ...]:
    keys = await storage.list_keys("88.118.8")
    return (
        await storage.get_many(keys),
        await storage.changes(0),
        await storage.last_seq(),
        await storage.count(),
        await storage.count_prefix("88.118.8"),
        await storage.digest(),
    )


async def test_a_batch_that_fails_midway_leaves_no_trace(storage: Storage) -> None:
    await storage.write([Write("88.118.8/keep", url("keep")), Write("88.118.8/doomed", url("d"))])
    before = await _snapshot(storage)

    with pytest.raises(HandleError, match=r"storage error: .*surrogates not allowed"):
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

    with pytest.raises(HandleError, match=r"storage error: cannot (encode the values of|store) '88\.118\.8/broken'"):
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

    # aiosqlite says "no active connection" for a closed database once its thread is gone.
    closed = "storage error: (Connection closed|no active connection)"
    with pytest.raises(HandleError, match=closed):
        await storage.get("88.118.8/a")
    with pytest.raises(HandleError, match=closed):
        await storage.write([Write("88.118.8/b", url(2))])
    with pytest.raises(HandleError, match=closed):
        await storage.set_meta("x", "y")
