"""Ranks of keys within their prefix (table ``key_marks``), so a listing page at any offset costs a few reads.

Each prefix's keys are cut into contiguous ranges. A mark is a range's first key and how many records
the range holds; a prefix's first range starts at ``PREFIX/`` (the lower end of its keys, so every
record of a prefix that has marks lies in one of them) and the next mark ends it. Page K of a prefix
is then a running sum over its marks (one row per a few thousand records) to the range holding rank
K, and a short OFFSET inside that range, instead of an OFFSET that walks K keys.

Every write batch (``write_batch.commit``) moves the marks in its own transaction (``apply``):
a range that grows past ``BOUND`` records is cut into pieces of about ``BOUND / 2``, a range left
empty is removed (the first of a prefix only once the whole prefix is empty). Ranges are never
merged: deletes can leave small ones, but never more marks than the prefix once needed.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from resolver.errors import HandleError

__all__ = ["BOUND", "MARKS_TABLE", "RANKED_OFFSET", "apply", "build", "deltas", "page", "pieces"]

# Most records one range holds before it is cut in two. A deep page walks at most this many keys
# inside its range (~0.15-0.5 µs each: 1-4 ms), and BOUND + a whole page
# (nodes.authoritative.authority.MAX_LIST_PAGE, 10,000) stays under sqlite.SHORT_READ_ROWS, so a page
# by number runs on a short-read connection. The running sum reads one mark per 4,096-8,192 records:
# ~1,500-2,500 at 10 million (under 1 ms), ten times that at 100 million. Cuts: see ``pieces``.
BOUND = 8_192
# Below this offset a page is a plain OFFSET from the start (or the cursor): it walks no more keys
# than the ranked read can walk inside one range, and reads no marks.
RANKED_OFFSET = BOUND

MARKS_TABLE = """
CREATE TABLE IF NOT EXISTS key_marks (
    -- The ranges of each prefix's keys, for listing pages by number (resolver/storage/ranks.py):
    -- a range's first key ('PREFIX/' for a prefix's first) and how many records it holds.
    key TEXT PRIMARY KEY,
    n   INTEGER NOT NULL
) WITHOUT ROWID
"""

# The marks a batch may touch: from the one holding its smallest key to its largest key.
_SPAN = (
    "SELECT key, n FROM key_marks WHERE key >= "
    "coalesce((SELECT key FROM key_marks WHERE key <= ?1 ORDER BY key DESC LIMIT 1), ?1) AND key <= ?2 ORDER BY key"
)
_SET = "INSERT INTO key_marks (key, n) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET n = excluded.n"
_DROP = "DELETE FROM key_marks WHERE key = ?"
# A prefix's first mark goes only with the prefix's last record: parameters 'P/' and 'P0'.
_DROP_FIRST = (
    "DELETE FROM key_marks WHERE key = ?1 AND n = 0 "
    "AND NOT EXISTS (SELECT 1 FROM key_marks WHERE key > ?1 AND key < ?2)"
)
# The key ``offset`` places after ``key`` (inclusive): where a cut range's next piece starts.
_NTH = "SELECT key FROM handles WHERE key >= ? ORDER BY key LIMIT 1 OFFSET ?"

# The rank (0-based, within the prefix) of the page's first key, as SQL: the offset, or the offset
# plus the number of the prefix's keys up to the cursor (marks before the range holding it, then a
# count inside that range). Parameters: ?1 low, ?2 high, ?3 offset, ?4 limit, ?5 the cursor.
_RANK = "?3"
_RANK_AFTER = (
    "?3 + coalesce((SELECT sum(n) FROM key_marks WHERE key >= ?1 AND key < c.key), 0)"
    " + (SELECT count(*) FROM handles WHERE key >= c.key AND key <= ?5 AND key < ?2)"
    " FROM (SELECT max(key) AS key FROM key_marks WHERE key >= ?1 AND key <= ?5) AS c"
)
# One statement, so the marks and the records are read in the same snapshot: the range holding the
# rank (running sum of the prefix's marks), then an OFFSET inside it. SQLite takes any scalar
# expression as LIMIT and OFFSET, subqueries included.
_PAGE = """
WITH wanted (rank) AS (SELECT {rank}),
marks AS (SELECT key, n, sum(n) OVER (ORDER BY key) AS upto FROM key_marks WHERE key >= ?1 AND key < ?2),
start AS (
    SELECT m.key, w.rank - (m.upto - m.n) AS skip FROM marks AS m, wanted AS w WHERE m.upto > w.rank
    ORDER BY m.key LIMIT 1
)
SELECT key FROM handles WHERE key >= (SELECT key FROM start) AND key < ?2
ORDER BY key LIMIT ?4 OFFSET coalesce((SELECT skip FROM start), 0)
"""
_PAGE_FROM_START, _PAGE_FROM_CURSOR = _PAGE.format(rank=_RANK), _PAGE.format(rank=_RANK_AFTER)


def page(low: str, high: str, after: str | None, offset: int, limit: int | None) -> tuple[str, list[Any], int] | None:
    """The ranked read of the keys in [low, high) (one prefix's), after the cursor ``after`` (None:
    from the start) and ``offset`` more: (SQL, parameters, most keys it visits); None when the offset
    is small enough for a plain OFFSET."""
    if offset < RANKED_OFFSET:
        return None
    params: list[Any] = [low, high, offset, -1 if limit is None else limit]
    if after is None:
        return _PAGE_FROM_START, params, BOUND + max(limit or 0, 0)
    return _PAGE_FROM_CURSOR, [*params, after], 2 * BOUND + max(limit or 0, 0)


def _end(mark: str) -> str:
    """The upper end of the keys of ``mark``'s prefix ('PREFIX0')."""
    return mark.partition("/")[0] + "0"


def _is_first(mark: str) -> bool:
    """Whether ``mark`` is a prefix's first ('PREFIX/'): a record key always has text after its '/'
    or is that very key, which the first mark then holds."""
    return mark.find("/") == len(mark) - 1


def deltas(marks: Sequence[str], keys: Sequence[str], sign: int, into: dict[str, int]) -> None:
    """Add ``sign`` to ``into[mark]`` for each of ``keys`` (sorted) in the range of that mark.

    ``marks`` (sorted) must hold every mark from the one holding ``keys[0]`` to ``keys[-1]``. The work
    goes by prefix and by mark, with a bisection each, not by key. A prefix with no marks gets its
    first ('PREFIX/'); keys without a '/' belong to no prefix's listing and are left out."""
    lo, end = 0, len(keys)
    while lo < end:
        key = keys[lo]
        prefix, slash, _ = key.partition("/")
        if not slash:
            lo = bisect_right(keys, key, lo, end)
            continue
        first, stop = prefix + "/", prefix + "0"
        hi = bisect_left(keys, stop, lo, end)  # keys[lo:hi] are this prefix's
        i = bisect_right(marks, key) - 1
        if i < 0 or marks[i] < first:
            # No mark of this prefix at or before its first key: it has none (its first would be).
            into[first] = into.get(first, 0) + sign * (hi - lo)
            lo = hi
            continue
        while lo < hi:
            following = marks[i + 1] if i + 1 < len(marks) and marks[i + 1] < stop else stop
            cut = bisect_left(keys, following, lo, hi)
            if cut > lo:
                into[marks[i]] = into.get(marks[i], 0) + sign * (cut - lo)
            lo, i = cut, i + 1


def pieces(n: int) -> list[int]:
    """Where a range of ``n`` records (more than ``BOUND``) is cut: the ranks (within the range) at
    which each new piece starts, every piece holding about BOUND / 2, room to grow before its next cut.

    A cut walks to its key by OFFSET (~0.5 µs a key), so the ranges cost about one key walked per
    record inserted: ~3% of the write transactions of a bulk load of a million records (measured).
    Cutting off a small last piece instead, walked to from the end, is cheaper only for a range that
    grows at its very end, which even a load in key order rarely does (several series of keys grow
    side by side), and leaves more, smaller ranges after random inserts (measured: slower)."""
    count = max(n // max(BOUND // 2, 1), 2)
    return [i * n // count for i in range(1, count)]


async def apply(db: aiosqlite.Connection, added: Sequence[str], removed: Sequence[str]) -> None:
    """Move the marks by one batch, inside its transaction on the writer ``db``, after its records
    are written: ``added`` the keys that became records, ``removed`` the records deleted."""
    if not added and not removed:
        return
    new, gone = sorted(added), sorted(removed)
    ends = new[:1] + new[-1:] + gone[:1] + gone[-1:]
    stored = {str(key): int(n) for key, n in await db.execute_fetchall(_SPAN, (min(ends), max(ends)))}
    marks = list(stored)
    moved: dict[str, int] = {}
    deltas(marks, new, 1, moved)
    deltas(marks, gone, -1, moved)
    writes: list[tuple[str, int]] = []
    drops: list[tuple[str]] = []
    firsts: list[tuple[str, str]] = []
    for mark, delta in moved.items():
        n = stored.get(mark, 0) + delta
        if n < 0:
            raise HandleError(f"storage error: the listing ranks of {mark!r} fell below zero")
        if n > BOUND:
            start, begin = mark, 0
            for at in pieces(n):
                rows = list(await db.execute_fetchall(_NTH, (start, at - begin)))
                if not rows:
                    raise HandleError(f"storage error: the listing range at {mark!r} holds fewer records than counted")
                writes.append((start, at - begin))
                start, begin = str(rows[0][0]), at
            writes.append((start, n - begin))
        elif n > 0 or _is_first(mark):
            if delta:
                writes.append((mark, n))
            if n == 0:
                firsts.append((mark, _end(mark)))
        else:
            drops.append((mark,))
    if writes:
        await db.executemany(_SET, writes)
    if drops:
        await db.executemany(_DROP, drops)
    if firsts:
        await db.executemany(_DROP_FIRST, firsts)


def build(conn: sqlite3.Connection, prefixes: Iterable[str]) -> int:
    """Mark the records of ``prefixes`` from scratch on ``conn`` (in the caller's transaction), cut as
    ``apply`` cuts a prefix loaded in one batch, each cut found by an OFFSET from the previous one:
    memory stays flat at any size. Returns the number of marks."""
    conn.execute("DELETE FROM key_marks")
    made = 0
    for prefix in prefixes:
        start, high = prefix + "/", prefix + "0"
        (n,) = conn.execute("SELECT count(*) FROM handles WHERE key >= ? AND key < ?", (start, high)).fetchone()
        begin = 0
        for at in pieces(n) if n > BOUND else ():
            (following,) = conn.execute(_NTH, (start, at - begin)).fetchone()
            conn.execute(_SET, (start, at - begin))
            start, begin, made = str(following), at, made + 1
        if n:
            conn.execute(_SET, (start, n - begin))
            made += 1
    return made
