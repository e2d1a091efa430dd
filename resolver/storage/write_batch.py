"""One ``Storage.write`` batch as SQLite statements: what it changes (``plan``), then the transaction (``commit``).

``plan`` is pure: given the batch and the stored blobs of its keys it decides which writes change
something (a put of the blob a key already holds is left out), the change-log rows, the records to
upsert and delete, the deltas of the per-prefix counts and of the digest buckets
(``resolver.storage.buckets``), and the keys that became or stopped being records (for the listing
ranks, ``resolver.storage.ranks``). ``commit`` runs it on the writer connection inside one
``BEGIN IMMEDIATE`` ... ``COMMIT``, which the caller holds the writer's lock around.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal, cast

import aiosqlite

from resolver.errors import HandleError
from resolver.storage.buckets import BUCKETS, lanes, record_hash
from resolver.storage.ranks import apply as move_ranks

__all__ = ["ROWS_PER_STATEMENT", "Plan", "commit", "plan"]

LogRow = tuple[str, Literal["put", "delete"], bytes | None, int]

# Before records change: the change rows that left their values to them (the keys' latest puts)
# get a copy, so the log keeps reading as written (a JSON array of keys, one parameter).
_KEEP_HISTORY = (
    "UPDATE changes SET vals = (SELECT h.vals FROM handles AS h WHERE h.key = changes.key) "
    "WHERE seq IN (SELECT h.seq FROM json_each(?) AS j JOIN handles AS h ON h.key = j.value WHERE h.seq IS NOT NULL)"
)
# The stored blobs of a batch's keys: one statement for any number of keys (a JSON array).
_STORED = "SELECT h.key, h.vals FROM json_each(?) AS j JOIN handles AS h ON h.key = j.value"
# How many keys one _KEEP_HISTORY or _STORED statement takes.
KEYS_PER_STATEMENT = 10_000

_DELETE = "DELETE FROM handles WHERE key = ?"
_COUNT = "INSERT INTO prefix_counts (prefix, n) VALUES (?, ?) ON CONFLICT (prefix) DO UPDATE SET n = n + excluded.n"
_DROP_EMPTY_PREFIXES = "DELETE FROM prefix_counts WHERE n = 0"
# SQLite has no XOR operator: a XOR b = (a | b) & ~(a & b), lane by lane (buckets.py).
_BUCKET = (
    "INSERT INTO buckets (bucket, n, h0, h1, h2, h3) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket) DO UPDATE SET "
    "n = n + excluded.n, " + ", ".join(f"h{i} = (h{i} | excluded.h{i}) & ~(h{i} & excluded.h{i})" for i in range(4))
)
# Records and change rows are inserted ROWS_PER_STATEMENT at a time by one multi-row statement: a
# quarter less CPU than one statement per row (each execution has its own setup and, for the log,
# its own sqlite_sequence update). Needs SQLite >= 3.32 (32,766 bound variables per statement).
ROWS_PER_STATEMENT = 4000


def _insert(rows: int, head: str, width: int, tail: str = "") -> str:
    return head + ",".join(["(" + ",".join("?" * width) + ")"] * rows) + tail


def _upsert(rows: int) -> str:
    """Records ``(key, vals, offset)``; parameter 1 is the batch's first seq, and each record's seq is
    that plus the offset of the change that wrote it."""
    marks = ",".join(f"(?{3 * i + 2},?{3 * i + 3},?1+?{3 * i + 4})" for i in range(rows))
    return (
        f"INSERT INTO handles (key, vals, seq) VALUES {marks} "
        "ON CONFLICT (key) DO UPDATE SET vals = excluded.vals, seq = excluded.seq"
    )


def _append(rows: int) -> str:
    return _insert(rows, "INSERT INTO changes (key, op, vals, ts) VALUES ", 4)


_UPSERT_FULL, _APPEND_FULL = _upsert(ROWS_PER_STATEMENT), _append(ROWS_PER_STATEMENT)


def _split(rows: Sequence[tuple[Any, ...]], *, keep_last: bool = False) -> tuple[list[list[Any]], list[Any], int]:
    """``rows`` as the flat parameters of full ROWS_PER_STATEMENT statements, plus those of the rest
    and its row count; with ``keep_last`` the rest is never empty (its statement gives the last rowid)."""
    n = ROWS_PER_STATEMENT
    full = (len(rows) - 1) // n * n if keep_last else len(rows) // n * n
    chunks = [list(chain.from_iterable(rows[i : i + n])) for i in range(0, full, n)]
    return chunks, list(chain.from_iterable(rows[full:])), len(rows) - full


@dataclass(slots=True)
class Plan:
    """What one batch writes. ``log`` is empty when nothing changes."""

    log: list[LogRow] = field(default_factory=list)
    puts: list[tuple[str, bytes, int]] = field(default_factory=list)  # key, blob, offset of its change in log
    deletes: list[tuple[str]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # keys whose latest change may hold no copy of its values
    counts: list[tuple[str, int]] = field(default_factory=list)  # prefix, change in its record count
    buckets: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)  # bucket, count, lanes
    written: list[str] = field(default_factory=list)  # every key whose record changed
    added: list[str] = field(default_factory=list)  # keys that had no record and have one
    removed: list[str] = field(default_factory=list)  # keys whose record was deleted


def _prefix(key: str) -> str:
    return key.partition("/")[0]


def plan(keys: Sequence[str], blobs: Sequence[bytes | None], stored: dict[str, bytes] | None, ts: int) -> Plan:
    """Decide what ``keys``/``blobs`` (None: a delete) change against ``stored`` (the blobs the keys
    hold now; None: the caller guarantees none of them has a record, so nothing is compared).

    Later writes to a key win, so only each key's final state touches the records table; every
    write that changes the key's state at that point of the batch gets its own change row, in
    order. A key's final put leaves its values to the record (vals NULL, handles.seq pointing at
    it); an earlier one in the same batch keeps a copy.
    """
    if stored is None and None not in blobs and len(set(keys)) == len(keys):
        # A bulk load's batch: the same answer, in fewer steps.
        return _plan_creates(keys, cast("Sequence[bytes]", blobs), ts)
    return _plan_any(keys, blobs, stored, ts)


def _plan_any(keys: Sequence[str], blobs: Sequence[bytes | None], stored: dict[str, bytes] | None, ts: int) -> Plan:
    kept: list[int] = []
    state: dict[str, bytes | None] = {}
    if stored is None:
        kept = list(range(len(keys)))
        for key, blob in zip(keys, blobs, strict=True):
            state[key] = blob
    else:
        for i, (key, blob) in enumerate(zip(keys, blobs, strict=True)):
            # A delete is always logged (even of a missing key), a put only if it changes the record.
            if blob is not None and (state[key] if key in state else stored.get(key)) == blob:
                continue
            state[key] = blob
            kept.append(i)
    out = Plan()
    if not kept:
        return out
    final: dict[str, int] = {}
    for position, i in enumerate(kept):
        final[keys[i]] = position
    out.log = [
        (keys[i], "delete" if blobs[i] is None else "put", None if final[keys[i]] == pos else blobs[i], ts)
        for pos, i in enumerate(kept)
    ]
    counts: Counter[str] = Counter()
    sizes: dict[int, int] = {}
    hashes: dict[int, int] = {}
    sha256, crc32, from_bytes, mask = hashlib.sha256, zlib.crc32, int.from_bytes, BUCKETS - 1
    for key, position in final.items():
        new = state[key]
        old = None if stored is None else stored.get(key)
        if new is None:
            out.deletes.append((key,))
        else:
            out.puts.append((key, new, position))
        if old == new:
            continue  # e.g. put B then put A back: the record is rewritten, its content is the same
        raw = key.encode("utf-8")
        bucket = crc32(raw) & mask
        delta = 0
        if old is not None:
            delta = record_hash(raw, old)
            sizes[bucket] = sizes.get(bucket, 0) - 1
            counts[_prefix(key)] -= 1
            if new is None:
                out.removed.append(key)
        else:
            out.added.append(key)
        if new is not None:
            # record_hash inlined: this loop runs once per record of a bulk load.
            framed = b"".join((len(raw).to_bytes(4, "big"), raw, len(new).to_bytes(4, "big"), new))
            delta ^= from_bytes(sha256(framed).digest(), "big")
            sizes[bucket] = sizes.get(bucket, 0) + 1
            counts[_prefix(key)] += 1
        hashes[bucket] = hashes.get(bucket, 0) ^ delta
    out.changed = [] if stored is None else list(final)
    out.written = list(final)
    out.counts = [(prefix, n) for prefix, n in counts.items() if n]
    out.buckets = [(b, sizes.get(b, 0), *lanes(h)) for b, h in sorted(hashes.items())]
    return out


def _plan_creates(keys: Sequence[str], blobs: Sequence[bytes], ts: int) -> Plan:
    """``plan`` for puts of distinct keys none of which has a record: each put is its key's final
    write, logged without a copy, counted once and hashed once (the loop of a bulk load: keep it lean)."""
    sizes = [0] * BUCKETS
    hashes = [0] * BUCKETS
    sha256, crc32, from_bytes, mask = hashlib.sha256, zlib.crc32, int.from_bytes, BUCKETS - 1
    for key, blob in zip(keys, blobs, strict=True):
        raw = key.encode("utf-8")
        bucket = crc32(raw) & mask
        sizes[bucket] += 1
        framed = b"".join((len(raw).to_bytes(4, "big"), raw, len(blob).to_bytes(4, "big"), blob))
        hashes[bucket] ^= from_bytes(sha256(framed).digest(), "big")
    counts = Counter(key.partition("/")[0] for key in keys)
    written = list(keys)
    return Plan(
        log=[(key, "put", None, ts) for key in keys],
        puts=[(key, blob, i) for i, (key, blob) in enumerate(zip(keys, blobs, strict=True))],
        counts=list(counts.items()),
        buckets=[(b, n, *lanes(hashes[b])) for b, n in enumerate(sizes) if n],
        written=written,
        added=written,  # every key is new (the same list: neither is changed after)
    )


async def _stored(db: aiosqlite.Connection, keys: list[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        chunk = json.dumps(keys[start : start + KEYS_PER_STATEMENT])
        found.update((key, vals) for key, vals in await db.execute_fetchall(_STORED, (chunk,)))
    return found


async def _last_seq(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("SELECT seq FROM sqlite_sequence WHERE name = 'changes'"))
    return int(rows[0][0]) if rows else 0


async def commit(
    db: aiosqlite.Connection, keys: Sequence[str], blobs: Sequence[bytes | None], *, created: bool, ts: int
) -> tuple[int, list[str]]:
    """Apply one batch in one transaction on the writer ``db``: (the last seq, the keys whose record
    changed). Each awaited aiosqlite call is a thread hop (~65 µs), so a batch of any size costs a
    handful: BEGIN, stored blobs, history copies, next seq, deletes, upserts, log, counts, buckets,
    listing ranks (two or three, ``ranks.apply``), COMMIT."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        stored = None if created else await _stored(db, list(dict.fromkeys(keys)))
        decided = plan(keys, blobs, stored, ts)
        if not decided.log:
            seq = await _last_seq(db)
            await db.execute("COMMIT")
            return seq, []
        for start in range(0, len(decided.changed), KEYS_PER_STATEMENT):
            await db.execute(_KEEP_HISTORY, (json.dumps(decided.changed[start : start + KEYS_PER_STATEMENT]),))
        # AUTOINCREMENT gives the next rows sqlite_sequence's seq + 1, + 2...: this batch's seqs are
        # known before they are inserted (and checked after).
        first = await _last_seq(db) + 1
        if decided.deletes:
            await db.executemany(_DELETE, decided.deletes)
        put_chunks, put_rest, put_rest_rows = _split(decided.puts)
        if put_chunks:
            await db.executemany(_UPSERT_FULL, [[first, *chunk] for chunk in put_chunks])
        if put_rest_rows:
            await db.execute(_upsert(put_rest_rows), [first, *put_rest])
        log_chunks, log_rest, log_rest_rows = _split(decided.log, keep_last=True)
        if log_chunks:
            await db.executemany(_APPEND_FULL, log_chunks)
        # execute_insert returns last_insert_rowid() in the same hop: the batch's last seq.
        row = await db.execute_insert(_append(log_rest_rows), log_rest)
        if row is None or int(row[0]) != first + len(decided.log) - 1:
            raise HandleError(f"storage error: the change log did not number this batch from {first}")
        if decided.counts:
            await db.executemany(_COUNT, decided.counts)
            if any(n < 0 for _, n in decided.counts):
                await db.execute(_DROP_EMPTY_PREFIXES)
        if decided.buckets:
            await db.executemany(_BUCKET, decided.buckets)
        await move_ranks(db, decided.added, decided.removed)
        await db.execute("COMMIT")
    except BaseException:
        # Report the error that broke the transaction, not a failure to roll it back (on a
        # connection that is gone, say); some errors (SQLITE_FULL) already rolled it back.
        with contextlib.suppress(sqlite3.Error, ValueError):
            if db.in_transaction:
                await db.execute("ROLLBACK")
        raise
    return int(row[0]), decided.written
