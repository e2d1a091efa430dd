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
from typing import Any, TypeVar

import aiosqlite

from resolver.codec import unpack_values
from resolver.errors import HandleError, ServerBusy
from resolver.records import Record
from resolver.storage.base import Change, PackedChange, Write
from resolver.storage.buckets import bucket_of_key, lanes_hex, root
from resolver.storage.integrity import (
    QUICK_CHECK_SECONDS,
    WHAT_TO_DO,
    check_file,
    damaged,
    is_corruption,
    refuse_emptied,
    write_marker,
)
from resolver.storage.point_reads import PointReads
from resolver.storage.ranks import page as ranked_page
from resolver.storage.read_pool import READERS, ReadPool
from resolver.storage.record_cache import MAX_CACHED_RECORDS, RecordCache
from resolver.storage.schema import BUSY_TIMEOUT_MS, SCHEMA_VERSION, migrate
from resolver.storage.write_batch import commit

__all__ = ["SCHEMA_VERSION", "SQLiteStorage"]

_T = TypeVar("_T")
log = logging.getLogger("idres.storage")

# SQLite >= 3.32 allows 32,766 bound variables per statement, older builds 999: 900 fits both.
_IN_CHUNK = 900
# Page cache of the writer (SQLite's default is 2 MiB): enough for the interior pages of a few
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
# A read that may visit more rows than this (OFFSET + LIMIT, or no LIMIT) runs on the scan
# connection. At ~0.5 µs a key, 20,000 is ~10 ms: the longest a short-read connection is held, and
# enough for a whole listing page (nodes.authoritative.authority.MAX_LIST_PAGE) from a cursor.
SHORT_READ_ROWS = 20_000
# Change-log rows deleted per transaction when trimming: ~50 ms each, so writes wait no longer.
TRIM_CHUNK = 50_000
# The SQL function bucket_keys() filters by (registered on the scan connection).
_BUCKET_FUNCTION = "idres_bucket"


def _key_range(prefix: str) -> tuple[str, str]:
    """The keys of ``prefix``'s records are those in [low, high): "P/..." and nothing else."""
    return prefix + "/", prefix + "0"


def _storage_error(exc: BaseException) -> HandleError:
    return HandleError(f"storage error: {exc}")


class SQLiteStorage:
    """``Storage`` on one SQLite file in WAL mode: one connection writes, several read (``ReadPool``:
    short reads on whichever is free, long scans on one of their own), one checkpoints the WAL in
    the background (``CHECKPOINT_SECONDS``), and a ``RecordCache`` answers hot records from memory.

    Every ``write`` is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction holding the records, their
    change-log rows, the per-prefix counts and the digest buckets (``write_batch``), so after a
    crash they all agree. The cache assumes this object is the file's only writer while it is open.
    """

    def __init__(
        self,
        location: str,
        writer: aiosqlite.Connection,
        readers: ReadPool,
        checkpointer: aiosqlite.Connection,
        cache: RecordCache,
    ) -> None:
        """Use ``SQLiteStorage.open``; this takes the connections set up by it."""
        self._location = location
        self._damage_logged = False
        self._writer = writer
        self._readers = readers
        self._checkpointer = checkpointer
        self.cache = cache
        self._points = PointReads(self._read)  # GETs of one loop turn share one statement
        self._written = False  # since the last checkpoint
        self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name="sqlite-checkpoints")
        # The writer connection is shared state: a statement issued while another coroutine is
        # between BEGIN and COMMIT would silently join that transaction, so every use of it takes
        # this lock.
        self._write_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        check_seconds: float | None = QUICK_CHECK_SECONDS,
        readers: int = READERS,
        cache_records: int = MAX_CACHED_RECORDS,
    ) -> SQLiteStorage:
        """Open (creating if needed) the database at ``path``; ``synchronous`` is the PRAGMA level,
        ``readers`` the number of short-read connections, ``cache_records`` the record cache's size.

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
        pool: ReadPool | None = None
        checkpointer: aiosqlite.Connection | None = None
        try:
            # isolation_level=None: autocommit, so the sqlite3 module never opens a transaction
            # behind our back; write() issues BEGIN IMMEDIATE / COMMIT itself.
            writer = await aiosqlite.connect(location, isolation_level=None)
            await writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            rows = list(await writer.execute_fetchall("PRAGMA journal_mode = WAL"))
            if not rows or str(rows[0][0]).lower() != "wal":
                # e.g. ":memory:": the readers would see a different (empty) database.
                raise HandleError(
                    f"storage error: {location!r} cannot use WAL journaling "
                    f"(journal_mode is {rows[0][0] if rows else None!r}); give a file path"
                )
            await writer.execute(f"PRAGMA synchronous = {level}")
            await writer.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            await writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            await writer.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            identity = await migrate(writer, location)
            pool = await ReadPool.open(
                location, readers, busy_timeout_ms=BUSY_TIMEOUT_MS, functions=[(_BUCKET_FUNCTION, 1, bucket_of_key)]
            )
            checkpointer = await aiosqlite.connect(location, isolation_level=None)
            await checkpointer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            write_marker(location, identity)
        except BaseException as exc:
            if checkpointer is not None:
                await checkpointer.close()
            if pool is not None:
                await pool.close()
            if writer is not None:
                await writer.close()
            if isinstance(exc, sqlite3.Error | ValueError | OSError):
                raise HandleError(f"storage error: cannot open {location!r}: {exc}") from exc
            raise
        return cls(location, writer, pool, checkpointer, RecordCache(max_records=cache_records))

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

    # -- reads: on the read connections, each statement sees the latest committed state -----------

    async def _read(self, sql: str, params: Iterable[Any] = (), *, scan: bool = False) -> list[sqlite3.Row]:
        if self._closed:
            raise _storage_error(ValueError("Connection closed"))
        try:
            return await self._readers.fetch(sql, params, scan=scan)
        except (sqlite3.Error, ValueError) as exc:
            # aiosqlite raises ValueError once the connection is closed.
            raise self._failed(exc) from exc

    async def get(self, key: str) -> Record | None:
        blob = self.cache.get(key)
        if blob is None:
            generation = self.cache.generation
            blob = await self._points.get(key)
            if blob is None:
                return None
            self.cache.put(key, blob, generation)
        return Record(key, unpack_values(blob))

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        found: dict[str, Record] = {}
        wanted: list[str] = []
        for key in dict.fromkeys(keys):
            blob = self.cache.get(key)
            if blob is None:
                wanted.append(key)
            else:
                found[key] = Record(key, unpack_values(blob))
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            generation = self.cache.generation
            for key, vals in await self._read(f"SELECT key, vals FROM handles WHERE key IN ({marks})", chunk):
                self.cache.put(key, vals, generation)
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

    async def list_keys(
        self, prefix: str, *, after: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[str]:
        # A range scan of the primary key from the start or from ``after`` (keyset): cost grows with
        # OFFSET + LIMIT only, never with the prefix's size. A deep OFFSET (page=K) first finds the
        # range of keys holding it (ranks.page), so it walks at most ranks.BOUND keys: a few ms at any
        # depth. Long reads take the scan connection.
        low, high = _key_range(prefix)
        offset, limit = max(offset, 0), None if limit is None else max(limit, 0)
        after = after if after is not None and after >= low else None
        ranked = ranked_page(low, high, after, offset, limit)
        if ranked is not None:
            sql, params, visits = ranked
            rows = await self._read(sql, params, scan=limit is None or visits > SHORT_READ_ROWS)
            return [row[0] for row in rows]
        rows = await self._read(
            f"SELECT key FROM handles WHERE {'key >= ?' if after is None else 'key > ?'} AND key < ? "
            "ORDER BY key LIMIT ? OFFSET ?",
            (low if after is None else after, high, -1 if limit is None else limit, offset),
            scan=limit is None or offset + limit > SHORT_READ_ROWS,
        )
        return [row[0] for row in rows]

    async def count_prefix(self, prefix: str) -> int:
        rows = await self._read("SELECT n FROM prefix_counts WHERE prefix = ?", (prefix,))
        return int(rows[0][0]) if rows else 0

    async def prefixes(self) -> list[str]:
        # Key order is not prefix order ("88.118/x" < "88/x"), hence the sort.
        return sorted(str(row[0]) for row in await self._read("SELECT prefix FROM prefix_counts WHERE n > 0"))

    async def records_after(self, after_key: str, limit: int) -> list[tuple[str, bytes]]:
        rows = await self._read(
            "SELECT key, vals FROM handles WHERE key > ? ORDER BY key LIMIT ?",
            (after_key, max(limit, 0)),
            scan=limit > SHORT_READ_ROWS,
        )
        return [(str(key), bytes(vals)) for key, vals in rows]

    async def keys_between(self, after_key: str, upto_key: str | None, limit: int) -> list[str]:
        upper, params = ("", (after_key,)) if upto_key is None else (" AND key <= ?", (after_key, upto_key))
        rows = await self._read(
            f"SELECT key FROM handles WHERE key > ?{upper} ORDER BY key LIMIT ?",
            (*params, max(limit, 0)),
            scan=limit > SHORT_READ_ROWS,
        )
        return [row[0] for row in rows]

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
        changes = []
        for seq, key, op, vals, ts in rows:
            if op == "put" and vals is None:  # the layout above guarantees it never happens
                raise HandleError(f"storage error: change {seq} ({key}) has lost its values")
            changes.append(PackedChange(seq, key, op, vals if op == "put" else None, ts))
        return changes

    async def last_seq(self) -> int:
        # sqlite_sequence holds the highest seq ever assigned, even if the log is trimmed later.
        rows = await self._read("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
        return int(rows[0][0]) if rows else 0

    async def first_seq(self) -> int:
        rows = await self._read(
            "SELECT coalesce((SELECT min(seq) FROM changes), "
            "(SELECT seq FROM sqlite_sequence WHERE name = 'changes') + 1, 1)"
        )
        return int(rows[0][0])

    async def count(self) -> int:
        rows = await self._read("SELECT coalesce(sum(n), 0) FROM prefix_counts")
        return int(rows[0][0])

    async def _buckets(self) -> list[tuple[int, int, tuple[int, int, int, int]]]:
        rows = await self._read("SELECT bucket, n, h0, h1, h2, h3 FROM buckets WHERE n > 0 ORDER BY bucket")
        return [(bucket, n, (h0, h1, h2, h3)) for bucket, n, h0, h1, h2, h3 in rows]

    async def digest(self) -> tuple[int, str]:
        """One read of the ``BUCKETS`` bucket rows, kept by every write: a few milliseconds at any size."""
        return root(await self._buckets())

    async def digest_buckets(self) -> list[tuple[int, int, str]]:
        return [(bucket, n, lanes_hex(four)) for bucket, n, four in await self._buckets()]

    async def bucket_keys(self, bucket: int, after_key: str, limit: int) -> list[str]:
        rows = await self._read(
            f"SELECT key FROM handles WHERE key > ? AND {_BUCKET_FUNCTION}(key) = ? ORDER BY key LIMIT ?",
            (after_key, bucket, max(limit, 0)),
            scan=True,
        )
        return [row[0] for row in rows]

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
        keys: list[str] = []
        blobs: list[bytes | None] = []
        for w in writes:
            try:
                blobs.append(w.blob)
            except (TypeError, ValueError, OverflowError) as exc:
                raise HandleError(f"storage error: cannot encode the values of {w.key!r}: {exc}") from exc
            keys.append(w.key)
        ts = int(time.time())

        async def transaction() -> int:
            try:
                seq, _ = await commit(self._writer, keys, blobs, created=created, ts=ts)
            finally:
                # Whether it committed or not (a failed COMMIT may still have): reads that started
                # before this point must not cache what they found (RecordCache.generation). Keys
                # that had no record (``created``) cannot be cached: nothing of them to forget.
                self.cache.invalidate(() if created else keys)
            return seq

        return await self._locked(transaction)

    async def trim_changes(self, below: int) -> int:
        """In transactions of ``TRIM_CHUNK`` rows, so writes wait at most one chunk."""
        deleted = 0
        while True:

            async def chunk() -> int:
                cursor = await self._writer.execute(
                    "DELETE FROM changes WHERE seq < min(?, (SELECT min(seq) FROM changes) + ?)", (below, TRIM_CHUNK)
                )
                return int(cursor.rowcount)

            done = await self._locked(chunk)
            deleted += done
            if done == 0:
                return deleted

    async def trim_changes_older(self, seconds: float, below: int) -> int:
        # The first entry young enough to keep bounds the trim: found by reading the log from its
        # start (O(entries trimmed); the log has no index on ts).
        rows = await self._read(
            "SELECT seq FROM changes WHERE seq < ? AND ts >= ? ORDER BY seq LIMIT 1",
            (below, int(time.time() - seconds)),
            scan=True,
        )
        return await self.trim_changes(int(rows[0][0]) if rows else below)

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
                    await self._readers.close()
                finally:
                    await self._writer.close()
        self.cache.clear()

    def __repr__(self) -> str:
        return f"<SQLiteStorage {'closed' if self._closed else 'open'}>"
