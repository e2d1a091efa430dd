"""Listing pages by number through the key ranks (resolver.storage.ranks): the same keys as a plain OFFSET
after any inserts and deletes, marks rebuilt on upgrade, and a deep page that reads few rows."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from bisect import bisect_right
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.codec import pack_values
from resolver.storage import ranks
from resolver.storage import sqlite as sqlite_module
from resolver.storage.base import Write
from resolver.storage.sqlite import SQLiteStorage
from tests.resolver.storage.cases import make_v3_file, url

# "88.1" is a prefix of "88.11" and "88.1.2" as text; "88/" is itself a key of prefix "88".
PREFIXES = ["88.1", "88.11", "88.1.2", "0.NA", "88"]


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> int:
    """Ranges of at most 4 records, and every page (offset 0 included) read through the ranks."""
    monkeypatch.setattr(ranks, "BOUND", 4)
    monkeypatch.setattr(ranks, "RANKED_OFFSET", 0)
    return 4


def marks_of(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, n FROM key_marks ORDER BY key").fetchall()
    db.close()
    return [(str(key), int(n)) for key, n in rows]


def check_marks(path: Path, bound: int) -> None:
    """Each prefix with records has marks from 'P/' on, each range counting exactly the records in it,
    none over ``bound`` and none empty but a prefix's first, adding up to the prefix's kept count; no
    marks for a prefix without records."""
    with sqlite3.connect(path) as db:
        keys = [str(row[0]) for row in db.execute("SELECT key FROM handles ORDER BY key")]
        counts = dict(db.execute("SELECT prefix, n FROM prefix_counts").fetchall())
    db.close()
    marks = marks_of(path)
    by_prefix: dict[str, list[tuple[str, int]]] = {}
    for mark, n in marks:
        by_prefix.setdefault(mark.partition("/")[0], []).append((mark, n))
    assert set(by_prefix) == {k.partition("/")[0] for k in keys if "/" in k}
    for prefix, ranges in by_prefix.items():
        assert ranges[0][0] == prefix + "/", f"{prefix} has no first mark"
        ends = [mark for mark, _ in ranges[1:]] + [prefix + "0"]
        for (mark, n), end in zip(ranges, ends, strict=True):
            assert n == sum(1 for k in keys if mark <= k < end), f"the range at {mark} miscounts"
            assert n <= bound and (n > 0 or mark == prefix + "/")
        assert sum(n for _, n in ranges) == counts[prefix] > 0  # as the kept count says


def expected(model: set[str], prefix: str, after: str | None, offset: int, limit: int) -> list[str]:
    keys = sorted(k for k in model if k.startswith(prefix + "/"))
    if after is not None:
        keys = [k for k in keys if k > after]
    return keys[offset : offset + limit]


async def test_pages_by_number_match_a_plain_offset_through_random_inserts_and_deletes(
    tmp_path: Path, small_ranges: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(1212)
    path = tmp_path / "ranks.db"
    store = await SQLiteStorage.open(path, cache_records=0)
    pool = [f"{p}/{i:03d}" for p in PREFIXES for i in range(40)] + ["88/", "88/\U0001f697"]
    model: set[str] = set()
    try:
        for round_ in range(60):
            if round_ % 15 == 7:  # one large batch: a range far over the bound is cut in many pieces
                fresh = [f"{rng.choice(PREFIXES)}/n{round_}-{i:03d}" for i in range(rng.randint(20, 60))]
                await store.write([Write(k, url(k)) for k in dict.fromkeys(fresh)], created=True)
                model.update(fresh)
            else:
                writes = [
                    Write(k, None) if rng.random() < 0.4 else Write(k, url(rng.randrange(3)))
                    for k in rng.choices(pool, k=rng.randint(1, 30))
                ]
                await store.write(writes)
                for w in writes:
                    (model.discard if w.values is None else model.add)(w.key)
            check_marks(path, small_ranges)
            for prefix in PREFIXES:
                total = await store.count_prefix(prefix)
                for offset in {0, 1, 3, 4, 5, total // 2, max(total - 1, 0), total, total + 3}:
                    size = rng.randint(1, 6)
                    got = await store.list_keys(prefix, offset=offset, limit=size)
                    assert got == expected(model, prefix, None, offset, size), (prefix, offset, size)
                after = rng.choice([*sorted(model), prefix + "/", prefix + "/5", "0", "99"])
                offset = rng.randint(0, 8)
                got = await store.list_keys(prefix, after=after, offset=offset, limit=3)
                assert got == expected(model, prefix, after if after >= prefix + "/" else None, offset, 3)
        # And the plain OFFSET, read the old way, agrees page for page.
        ranked = [await store.list_keys("88.1", offset=o, limit=2) for o in range(0, 40, 3)]
        monkeypatch.setattr(ranks, "RANKED_OFFSET", 10**9)
        assert ranked == [await store.list_keys("88.1", offset=o, limit=2) for o in range(0, 40, 3)]
    finally:
        await store.close()


async def test_an_emptied_first_range_stays_and_an_emptied_prefix_loses_its_marks(
    tmp_path: Path, small_ranges: int
) -> None:
    path = tmp_path / "empty.db"
    store = await SQLiteStorage.open(path)
    keys = [f"88.1/{i:02d}" for i in range(12)]
    try:
        await store.write([Write(k, url(k)) for k in keys], created=True)  # cut in pieces of 2 (bound / 2)
        assert marks_of(path) == [("88.1/", 2), *((f"88.1/{i:02d}", 2) for i in range(2, 12, 2))]
        await store.write([Write(k, None) for k in keys[:2]])  # the whole first range
        assert marks_of(path)[:2] == [("88.1/", 0), ("88.1/02", 2)]
        assert await store.list_keys("88.1", offset=5, limit=10) == keys[7:]
        await store.write([Write(k, None) for k in keys[2:10]])  # ranges after the first: removed
        assert marks_of(path) == [("88.1/", 0), ("88.1/10", 2)]
        await store.write([Write("88.1/00", url(0)), Write("88.1/10", None)])
        assert marks_of(path) == [("88.1/", 1), ("88.1/10", 1)]
        assert await store.list_keys("88.1", offset=1, limit=10) == ["88.1/11"]
        await store.write([Write(k, None) for k in ["88.1/00", "88.1/11"]])
        assert marks_of(path) == [] and await store.list_keys("88.1", offset=0) == []
    finally:
        await store.close()


MARKS = st.lists(st.sampled_from(["a", "b", "c", "m", "t", "z"]), unique=True).map(sorted)
KEY_SUFFIXES = st.sampled_from(["", "a", "b", "bb", "c", "m", "n", "t", "z", "zz"])
KEYS = st.lists(st.tuples(st.sampled_from(["88.1", "88.11", "88"]), KEY_SUFFIXES), max_size=30)


@given(st.dictionaries(st.sampled_from(["88.1", "88.11", "88"]), MARKS), KEYS)
@settings(max_examples=200, deadline=None)
def test_deltas_count_each_key_in_the_range_that_holds_it(
    marked: dict[str, list[str]], pairs: list[tuple[str, str]]
) -> None:
    # Every marked prefix has its first mark ('P/', the suffix ""), as the table always does.
    marks = sorted({f"{p}/{s}" for p, suffixes in marked.items() for s in ["", *suffixes]})
    keys = sorted([*(f"{p}/{s}" for p, s in pairs), "88"])  # a key with no "/" is in no range
    counted: dict[str, int] = {}
    ranks.deltas(marks, keys, 1, counted)
    want: dict[str, int] = {}
    for key in keys:
        prefix, slash, _ = key.partition("/")
        if not slash:
            continue
        own = [m for m in marks if m.partition("/")[0] == prefix]
        mark = own[bisect_right(own, key) - 1] if own else prefix + "/"
        want[mark] = want.get(mark, 0) + 1
    assert counted == want


def test_pieces_cut_a_range_into_parts_of_about_half_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranks, "BOUND", 8192)
    assert ranks.pieces(8193) == [4096]
    assert ranks.pieces(13_192) == [4397, 8794]
    cuts = ranks.pieces(100_000)
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, 100_000], strict=True)]
    assert len(sizes) == 24 and all(4096 <= size <= 4200 for size in sizes)


async def test_ranges_cut_in_halves_or_in_many_pieces_count_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ranges of at most 16: one grown past it at its end, one at its start, and one grown many times
    # over it by one batch (cut in pieces of about 8, each walked to from the previous cut).
    monkeypatch.setattr(ranks, "BOUND", 16)
    path = tmp_path / "cuts.db"
    store = await SQLiteStorage.open(path)
    try:
        await store.write([Write(f"88.1/m{i:03d}", url(i)) for i in range(16)], created=True)
        await store.write([Write("88.11/a", url(0)), Write("88.1/m900", url(0))])  # past the bound at the end
        assert marks_of(path) == [("88.1/", 8), ("88.1/m008", 9), ("88.11/", 1)]
        await store.write([Write(f"88.1/a{i:02d}", url(i)) for i in range(9)], created=True)  # at the start
        assert marks_of(path)[:3] == [("88.1/", 8), ("88.1/a08", 9), ("88.1/m008", 9)]
        await store.write([Write(f"88.1/z{i:03d}", url(i)) for i in range(100)], created=True)
        check_marks(path, 16)
        assert len(marks_of(path)) == 2 + 109 // 8 + 1  # 88.1/, a08, 13 pieces of m008 and 88.11/
        keys = sorted([*(f"88.1/m{i:03d}" for i in range(16)), "88.1/m900", *(f"88.1/a{i:02d}" for i in range(9))])
        keys += [f"88.1/z{i:03d}" for i in range(100)]
        for offset in range(0, len(keys), 7):
            assert await store.list_keys("88.1", offset=offset, limit=7) == keys[offset : offset + 7]
    finally:
        await store.close()


def _as_version_4(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE key_marks")
        db.execute("PRAGMA user_version = 4")
    db.close()


async def test_a_version_4_file_gets_the_marks_one_load_would_make(
    tmp_path: Path, small_ranges: int, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(4)
    path, fresh_path = tmp_path / "v4.db", tmp_path / "fresh.db"
    store = await SQLiteStorage.open(path)
    try:  # a history of inserts and deletes, its ranges cut and emptied along the way
        keys = [f"{p}/{i:03d}" for p in PREFIXES for i in range(30)] + ["88/"]
        await store.write([Write(k, url(k)) for k in keys], created=True)
        await store.write([Write(k, None) for k in rng.sample(keys, 70)])
        await store.write([Write(f"88.11/x{i}", url(i)) for i in range(9)])
        final = {k: r.values for k, r in (await store.get_many(keys + [f"88.11/x{i}" for i in range(9)])).items()}
    finally:
        await store.close()
    _as_version_4(path)
    caplog.set_level(logging.INFO, logger="idres.storage")
    store = await SQLiteStorage.open(path)
    fresh = await SQLiteStorage.open(fresh_path)
    try:
        await fresh.write([Write(k, v) for k, v in sorted(final.items())], created=True)
        assert any("schema version 5" in r.getMessage() for r in caplog.records)
        for prefix in PREFIXES:
            total = await store.count_prefix(prefix)
            for offset in range(total + 1):
                want = sorted(k for k in final if k.startswith(prefix + "/"))[offset : offset + 3]
                assert await store.list_keys(prefix, offset=offset, limit=3) == want
    finally:
        await store.close()
        await fresh.close()
    assert marks_of(path) == marks_of(fresh_path)
    check_marks(path, small_ranges)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (5,)
    db.close()


async def test_a_version_3_file_is_upgraded_through_4_to_ranked_pages(tmp_path: Path, small_ranges: int) -> None:
    history: list[tuple[str, bytes | None]] = [(f"88.1/{i:03d}", pack_values(url(i))) for i in range(30)]
    history += [("88.1/005", None), ("88.11/a", pack_values(url("a")))]
    make_v3_file(str(tmp_path / "v3.db"), history)
    store = await SQLiteStorage.open(tmp_path / "v3.db")
    try:
        assert await store.list_keys("88.1", offset=20, limit=3) == ["88.1/021", "88.1/022", "88.1/023"]
        assert await store.list_keys("88.11", offset=0, limit=3) == ["88.11/a"]
    finally:
        await store.close()
    check_marks(tmp_path / "v3.db", small_ranges)


def _steps(db: sqlite3.Connection, sql: str, params: list[object]) -> tuple[list[str], int]:
    """The rows of ``sql`` and how many virtual-machine instructions SQLite ran for it (in hundreds):
    a measure of the rows it visited that no timing noise can upset."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    db.set_progress_handler(tick, 100)
    try:
        return [str(row[0]) for row in db.execute(sql, params)], count[0]
    finally:
        db.set_progress_handler(None, 0)


async def test_a_deep_page_reads_about_as_few_rows_as_a_shallow_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~40-80 marks (each costs the running sum more than a key costs an OFFSET), ranges of at most 512.
    monkeypatch.setattr(ranks, "BOUND", 512)
    monkeypatch.setattr(ranks, "RANKED_OFFSET", 512)
    path = tmp_path / "deep.db"
    store = await SQLiteStorage.open(path)
    try:
        for start in range(0, 20_000, 5_000):
            await store.write([Write(f"88.1/{i:05d}", url(i)) for i in range(start, start + 5_000)], created=True)
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        plain = "SELECT key FROM handles WHERE key >= ? AND key < ? ORDER BY key LIMIT ? OFFSET ?"
        walked, plain_steps = _steps(db, plain, ["88.1/", "88.10", 10, 19_000])
        shallow = ranks.page("88.1/", "88.10", None, 600, 10)
        deep = ranks.page("88.1/", "88.10", None, 19_000, 10)
        assert shallow is not None and deep is not None
        shallow_keys, shallow_steps = _steps(db, shallow[0], shallow[1])
        deep_keys, deep_steps = _steps(db, deep[0], deep[1])
        assert deep_keys == walked == [f"88.1/{i:05d}" for i in range(19_000, 19_010)]
        assert shallow_keys == [f"88.1/{i:05d}" for i in range(600, 610)]
        assert deep_steps < plain_steps / 10, (deep_steps, plain_steps)
        assert deep_steps < 2 * shallow_steps + 20, (deep_steps, shallow_steps)
        # With a cursor: its rank is counted from the marks too.
        cursor = ranks.page("88.1/", "88.10", "88.1/09999", 9_000, 2)
        assert cursor is not None
        keys, cursor_steps = _steps(db, cursor[0], cursor[1])
        assert keys == ["88.1/19000", "88.1/19001"] and cursor_steps < plain_steps / 5
    finally:
        db.close()


# A statement that keeps its connection busy until interrupted (as in test_parallel_reads).
ENDLESS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000000) SELECT count(*) FROM n"
)


async def test_a_page_by_number_does_not_wait_for_the_scan_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranks, "BOUND", 16)
    monkeypatch.setattr(ranks, "RANKED_OFFSET", 16)
    monkeypatch.setattr(sqlite_module, "SHORT_READ_ROWS", 60)  # a plain OFFSET of 150 would be a scan
    store = await SQLiteStorage.open(tmp_path / "short.db", readers=1, cache_records=0)
    try:
        await store.write([Write(f"88/{i:03d}", url(i)) for i in range(200)], created=True)
        endless = asyncio.create_task(store._readers.fetch(ENDLESS, scan=True))
        await asyncio.sleep(0.05)
        page = await asyncio.wait_for(store.list_keys("88", offset=150, limit=5), timeout=2)
        assert page == [f"88/{i:03d}" for i in range(150, 155)]
        assert not endless.done()
        await store._readers.interrupt()
        with pytest.raises(Exception, match="interrupted"):
            await endless
    finally:
        await store.close()
