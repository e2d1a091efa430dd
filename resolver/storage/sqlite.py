"""``Storage`` on embedded SQLite: records, change log and metadata in one WAL-mode file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import chain
from typing import Any, Literal, TypeVar

import aiosqlite

from resolver.codec import unpack_values
from resolver.errors import HandleError, ServerBusy
from resolver.records import Record
from resolver.storage.base import Change, PackedChange, Write, digest_records
from resolver.storage.integrity import (
    QUICK_CHECK_SECONDS,
    WHAT_TO_DO,
    check_file,
    damaged,
    is_corruption,
    refuse_emptied,
    write_marker,
)
from resolver.storage.schema import SCHEMA_VERSION, migrate

__all__ = ["SCHEMA_VERSION", "SQLiteStorage"]

_T = TypeVar("_T")
log = logging.getLogger("idres.storage")

# How long a statement waits for a lock held by another connection (another process on the same
# file, or a checkpoint) before failing with "database is locked".
BUSY_TIMEOUT_MS = 5_000
# SQLite >= 3.32 allows 32,766 bound variables per statement, older builds 999: 900 fits both.
_IN_CHUNK = 900
# Page cache per connection (SQLite's default is 2 MiB): enough for the interior pages of a few
# million keys, so bulk loads and existence checks do not reread them from the OS. A limit, not an
# allocation: an idle node uses little of it.
CACHE_KIB = 32_768
# The WAL is copied into the database file (a checkpoint, which syncs it) by a background task on a
# connection of its own, about once a second while writes come in. SQLite's default does it inside
# whichever commit crosses 1,000 pages (4 MiB): with bulk loads writing ~3 MB per 5,000 records,
# that was most batches, adding ~15 ms to each (measured), under the node's write lock.
CHECKPOINT_SECONDS = 1.0
# A safety net only: if the background checkpoints fall this far behind, a commit checkpoints.
WAL_AUTOCHECKPOINT_PAGES = 65_536  # 256 MiB
JOURNAL_SIZE_LIMIT = 64 * 1_048_576  # the WAL file is truncated back to this after a checkpoint
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

# Before records change: the change rows that left their values to them (the keys' latest puts)
# get a copy, so the log keeps reading as written (a JSON array of keys, one parameter).
_KEEP_HISTORY = (
    "UPDATE changes SET vals = (SELECT h.vals FROM handles AS h WHERE h.key = changes.key) "
    "WHERE seq IN (SELECT h.seq FROM json_each(?) AS j JOIN handles AS h ON h.key = j.value WHERE h.seq IS NOT NULL)"
)
# How many keys one _KEEP_HISTORY statement takes.
_KEEP_CHUNK = 10_000

_DELETE = "DELETE FROM handles WHERE key = ?"
# Records and change rows are inserted ROWS_PER_STATEMENT at a time by one multi-row statement: a
# quarter less CPU than one statement per row (each execution has its own setup and, for the log,
# its own sqlite_sequence update). 200 change rows bind 800 variables, under old SQLite's 999.
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


# The part of a key before its first "/" (all of a key without one, which Handle.key never makes).
_PREFIX_OF = "CASE WHEN instr(key, '/') > 0 THEN substr(key, 1, instr(key, '/') - 1) ELSE key END"


def _key_range(prefix: str) -> tuple[str, str]:
    """The keys of ``prefix``'s records are those in [low, high): "P/..." and nothing else."""
    return prefix + "/", prefix + "0"


def _storage_error(exc: BaseException) -> HandleError:
    return HandleError(f"storage error: {exc}")


def _digest_file(location: str) -> tuple[int, int, str]:
    """(last seq, count, digest) of the database at ``location``, read in one transaction."""
    conn = sqlite3.connect(location, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        count, digest = digest_records(conn.execute("SELECT key, vals FROM handles ORDER BY key"))
        conn.execute("COMMIT")
        return (int(row[0]) if row else 0), count, digest
    finally:
        conn.close()


class SQLiteStorage:
    """``Storage`` on one SQLite file in WAL mode: one connection writes, another reads, a third
    checkpoints the WAL in the background (``CHECKPOINT_SECONDS``).

    Every ``write`` is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction holding both the records
    and their change-log rows, so after a crash the log and the records always agree.
    """

    def __init__(
        self,
        location: str,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        checkpointer: aiosqlite.Connection,
    ) -> None:
        """Use ``SQLiteStorage.open``; this takes the connections set up by it."""
        self._location = location
        self._damage_logged = False
        self._writer = writer
        self._reader = reader
        self._checkpointer = checkpointer
        self._written = False  # since the last checkpoint
        self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name="sqlite-checkpoints")
        # The writer connection is shared state: a statement issued while another coroutine is
        # between BEGIN and COMMIT would silently join that transaction, so every use of it takes
        # this lock.
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._digest: tuple[int, int, str] | None = None  # (last_seq it was computed at, count, digest)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        check_seconds: float | None = QUICK_CHECK_SECONDS,
    ) -> SQLiteStorage:
        """Open (creating if needed) the database at ``path``; ``synchronous`` is the PRAGMA level.

        A file SQLite finds damaged is refused (``PRAGMA quick_check``, cut short and logged past
        ``check_seconds``; None: no limit), and so is a missing or empty file that a node used before
        (``integrity.refuse_emptied``): a node never starts on damaged data or as an empty node by mistake.

        NORMAL is enough for crashes: by the time COMMIT returns the transaction is in the WAL file
        (in the OS page cache), and SQLite's docs say transactions are durable across application
        crashes, kill -9 included, whatever the synchronous setting. What NORMAL gives up, by
        skipping the fsync per commit, is only the last transactions on a power loss or OS crash.
        Use FULL when those must survive too, at the cost of one fsync per write.
        """
        level = synchronous.upper()
        if level not in _SYNCHRONOUS:
            # PRAGMA values cannot be bound as parameters, so only known words reach the SQL.
            raise ValueError(f"synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}, not {synchronous!r}")
        location = os.fspath(path)
        await cls._check(location, check_seconds)
        writer: aiosqlite.Connection | None = None
        reader: aiosqlite.Connection | None = None
        checkpointer: aiosqlite.Connection | None = None
        try:
            # isolation_level=None: autocommit, so the sqlite3 module never opens a transaction
            # behind our back; write() issues BEGIN IMMEDIATE / COMMIT itself.
            writer = await aiosqlite.connect(location, isolation_level=None)
            await writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            rows = list(await writer.execute_fetchall("PRAGMA journal_mode = WAL"))
            if not rows or str(rows[0][0]).lower() != "wal":
                # e.g. ":memory:": the reader would see a different (empty) database.
                raise HandleError(
                    f"storage error: {location!r} cannot use WAL journaling "
                    f"(journal_mode is {rows[0][0] if rows else None!r}); give a file path"
                )
            await writer.execute(f"PRAGMA synchronous = {level}")
            await writer.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            await writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            await writer.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            identity = await migrate(writer, location)
            reader = await aiosqlite.connect(location, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            # The reader never writes; make a mistake there fail instead of racing the writer.
            await reader.execute("PRAGMA query_only = ON")
            checkpointer = await aiosqlite.connect(location, isolation_level=None)
            await checkpointer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            write_marker(location, identity)
        except BaseException as exc:
            for conn in (checkpointer, reader, writer):
                if conn is not None:
                    await conn.close()
            if isinstance(exc, sqlite3.Error | ValueError | OSError):
                raise HandleError(f"storage error: cannot open {location!r}: {exc}") from exc
            raise
        return cls(location, writer, reader, checkpointer)

    @staticmethod
    async def _check(location: str, seconds: float | None) -> None:
        refuse_emptied(location)
        if not os.path.isfile(location) or os.path.getsize(location) == 0:
            return  # a new node: nothing to check
        problems = await asyncio.to_thread(check_file, location, seconds=seconds)
        if problems is None:
            log.warning(
                "the start-up check of %s was cut short after %s s; `idres check` runs it in full", location, seconds
            )
        elif problems:
            raise damaged(location, problems)

    def _failed(self, exc: BaseException) -> HandleError:
        """What a failed statement becomes. Damage found while serving is logged once, not once per
        request, and answers 503 (ServerBusy): the fault is this server's, not the request's, and a
        client or resolver goes to another server of the prefix (a mirror) on a 503, as on any 5xx."""
        if not is_corruption(exc):
            return _storage_error(exc)
        if not self._damage_logged:
            self._damage_logged = True
            log.error("storage error: %s is damaged (SQLite: %s): %s", self._location, exc, WHAT_TO_DO)
        return ServerBusy("this server cannot read its data (its database is damaged); try another server")

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            if not self._written:
                continue
            self._written = False
            try:
                # PASSIVE: copies what it can without waiting for readers or writers, who go on.
                await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except (sqlite3.Error, ValueError) as exc:
                log.warning("background WAL checkpoint failed (a commit will do it later): %s", exc)

    # -- reads: on the reader connection, each statement sees the latest committed state ----------

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except (sqlite3.Error, ValueError) as exc:
            # aiosqlite raises ValueError once the connection is closed.
            raise self._failed(exc) from exc

    async def get(self, key: str) -> Record | None:
        rows = await self._read("SELECT vals FROM handles WHERE key = ?", (key,))
        return Record(key, unpack_values(rows[0][0])) if rows else None

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Record] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, vals in await self._read(f"SELECT key, vals FROM handles WHERE key IN ({marks})", chunk):
                found[key] = Record(key, unpack_values(vals))
        return found

    async def existing(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        # One statement for any number of keys (no bound-variable limit): the keys travel as one
        # JSON array and each is a primary-key probe.
        rows = await self._read(
            "SELECT h.key FROM json_each(?) AS j JOIN handles AS h ON h.key = j.value",
            (json.dumps(list(dict.fromkeys(keys))),),
        )
        return {row[0] for row in rows}

    async def list_keys(self, prefix: str, *, offset: int = 0, limit: int | None = None) -> tuple[int, list[str]]:
        # The window count is taken before LIMIT/OFFSET, so total and page come from one statement
        # (one snapshot, one round trip); only a page past the end needs a separate count.
        low, high = _key_range(prefix)
        rows = await self._read(
            "SELECT key, count(*) OVER () FROM handles WHERE key >= ? AND key < ? ORDER BY key LIMIT ? OFFSET ?",
            (low, high, -1 if limit is None else max(limit, 0), max(offset, 0)),
        )
        if rows:
            return int(rows[0][1]), [row[0] for row in rows]
        total = await self._read("SELECT count(*) FROM handles WHERE key >= ? AND key < ?", (low, high))
        return int(total[0][0]), []

    async def prefixes(self) -> list[str]:
        # A skip-scan of the primary key: one probe per distinct prefix, not one per record. After
        # prefix P's first key, the next prefix starts at the first key >= 'P0' (see _key_range).
        # Key order is not prefix order ("88.118/x" < "88/x"), hence the sort.
        rows = await self._read(
            f"WITH RECURSIVE p(prefix) AS (SELECT {_PREFIX_OF} FROM (SELECT min(key) AS key FROM handles) "
            "WHERE key IS NOT NULL UNION ALL "
            f"SELECT (SELECT {_PREFIX_OF} FROM handles WHERE key >= p.prefix || '0' ORDER BY key LIMIT 1) "
            "FROM p WHERE p.prefix IS NOT NULL) "
            "SELECT prefix FROM p WHERE prefix IS NOT NULL"
        )
        return sorted(str(row[0]) for row in rows)

    async def changes(self, after: int, limit: int = 1000) -> list[Change]:
        return [
            Change(c.seq, c.key, c.op, unpack_values(c.blob) if c.blob is not None else (), c.timestamp)
            for c in await self.changes_packed(after, limit)
        ]

    async def changes_packed(self, after: int, limit: int = 1000) -> list[PackedChange]:
        rows = await self._read(
            # A put without a copy of its values is the key's latest: its values are the record's.
            "SELECT c.seq, c.key, c.op, CASE WHEN c.op = 'put' AND c.vals IS NULL "
            "THEN (SELECT h.vals FROM handles AS h WHERE h.key = c.key) ELSE c.vals END, c.ts "
            "FROM changes AS c WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
            (after, max(limit, 0)),
        )
        return [PackedChange(seq, key, op, vals if op == "put" else None, ts) for seq, key, op, vals, ts in rows]

    async def last_seq(self) -> int:
        # sqlite_sequence holds the highest seq ever assigned, even if the log is trimmed later.
        rows = await self._read("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
        return int(rows[0][0]) if rows else 0

    async def count(self) -> int:
        rows = await self._read("SELECT count(*) FROM handles")
        return int(rows[0][0])

    async def digest(self) -> tuple[int, str]:
        """Cached until the next write (keyed by ``last_seq``: every write appends to the log).

        Computed in a worker thread on a connection of its own, one statement in one read
        transaction, so the O(records) pass stalls neither the event loop nor other reads.
        """
        seq = await self.last_seq()
        if self._digest is not None and self._digest[0] == seq:
            return self._digest[1], self._digest[2]
        rows = await self._read("SELECT file FROM pragma_database_list WHERE name = 'main'")
        try:
            computed = await asyncio.to_thread(_digest_file, str(rows[0][0]))
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        self._digest = computed
        return computed[1], computed[2]

    async def get_meta(self, name: str) -> str | None:
        rows = await self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    # -- writes: on the writer connection, under the lock ------------------------------------------

    async def set_meta(self, name: str, value: str) -> None:
        async def run() -> None:
            await self._writer.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._locked(run)

    async def write(self, writes: Sequence[Write], *, created: bool = False) -> int:
        if not writes:
            return await self.last_seq()
        # Encode before taking the lock: the transaction holds the file's write lock, keep it short.
        # A Write built from its blob (Write.packed) is not encoded again.
        blobs: list[bytes | None] = []
        for w in writes:
            try:
                blobs.append(w.blob)
            except (TypeError, ValueError, OverflowError) as exc:
                raise HandleError(f"storage error: cannot encode the values of {w.key!r}: {exc}") from exc
        ts = int(time.time())
        # Later writes to a key win, so only each key's final state touches the records table; every
        # write still gets its own change row, in order. A key's final put leaves its values to the
        # record (vals NULL, handles.seq pointing at it); an earlier one in the same batch keeps a copy.
        final: dict[str, int] = {}
        for i, w in enumerate(writes):
            final[w.key] = i
        deletes = [(key,) for key, i in final.items() if blobs[i] is None]
        puts = [(key, blobs[i], i) for key, i in final.items() if blobs[i] is not None]
        log: list[tuple[str, Literal["put", "delete"], bytes | None, int]] = [
            (w.key, "delete" if blob is None else "put", None if final[w.key] == i else blob, ts)
            for i, (w, blob) in enumerate(zip(writes, blobs, strict=True))
        ]
        put_chunks, put_rest, put_rest_rows = _split(puts)
        log_chunks, log_rest, log_rest_rows = _split(log, keep_last=True)
        # Keys whose latest change may have left its values to the record; none if the caller
        # checked under its write lock that every key is new (``created``).
        changed = [] if created else list(final)

        async def transaction() -> int:
            # Each awaited aiosqlite call is a thread hop (~65 µs), so a batch of any size costs a
            # handful: BEGIN, history copies, next seq, deletes, upserts, log inserts, COMMIT.
            db = self._writer
            await db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(changed), _KEEP_CHUNK):
                    await db.execute(_KEEP_HISTORY, (json.dumps(changed[start : start + _KEEP_CHUNK]),))
                # AUTOINCREMENT gives the next rows sqlite_sequence's seq + 1, + 2...: this batch's
                # seqs are known before they are inserted (and checked after).
                rows = list(await db.execute_fetchall("SELECT seq FROM sqlite_sequence WHERE name = 'changes'"))
                first = (int(rows[0][0]) if rows else 0) + 1
                if deletes:
                    await db.executemany(_DELETE, deletes)
                if put_chunks:
                    await db.executemany(_UPSERT_FULL, [[first, *chunk] for chunk in put_chunks])
                if put_rest_rows:
                    await db.execute(_upsert(put_rest_rows), [first, *put_rest])
                if log_chunks:
                    await db.executemany(_APPEND_FULL, log_chunks)
                # execute_insert returns last_insert_rowid() in the same hop: the batch's last seq.
                row = await db.execute_insert(_append(log_rest_rows), log_rest)
                if row is None or int(row[0]) != first + len(log) - 1:
                    raise HandleError(f"storage error: the change log did not number this batch from {first}")
                await db.execute("COMMIT")
            except BaseException:
                # Report the error that broke the transaction, not a failure to roll it back (on a
                # connection that is gone, say); some errors (SQLITE_FULL) already rolled it back.
                with contextlib.suppress(sqlite3.Error, ValueError):
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                raise
            return int(row[0])

        return await self._locked(transaction)

    async def _locked(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        async def run() -> _T:
            async with self._write_lock:
                try:
                    return await operation()
                except (sqlite3.Error, ValueError) as exc:
                    # ValueError: aiosqlite's "Connection closed", or text sqlite3 cannot encode.
                    raise self._failed(exc) from exc
                finally:
                    # Once it has ended: a checkpoint that ran while it was under way copied none of it.
                    self._written = True

        # Shielded: if the caller is cancelled mid-transaction, the transaction still ends (COMMIT
        # or ROLLBACK) before the lock is released, rather than leaving BEGIN open on the writer.
        # A cancelled write may therefore still have committed, as with any database.
        return await asyncio.shield(run())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._checkpoints.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._checkpoints
        async with self._write_lock:  # let a running transaction finish first
            try:
                await self._checkpointer.close()
            finally:
                try:
                    await self._reader.close()
                finally:
                    await self._writer.close()

    def __repr__(self) -> str:
        return f"<SQLiteStorage {'closed' if self._closed else 'open'}>"
