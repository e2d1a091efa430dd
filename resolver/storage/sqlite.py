"""``Storage`` on embedded SQLite: records, change log and metadata in one WAL-mode file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import aiosqlite

from resolver.codec import pack_values, unpack_values
from resolver.errors import HandleError
from resolver.records import Record
from resolver.storage.base import Change, Write, digest_records

__all__ = ["SCHEMA_VERSION", "SQLiteStorage"]

_T = TypeVar("_T")

SCHEMA_VERSION = 1
# How long a statement waits for a lock held by another connection (another process on the same
# file, or a checkpoint) before failing with "database is locked".
BUSY_TIMEOUT_MS = 5_000
# SQLite >= 3.32 allows 32,766 bound variables per statement, older builds 999: 900 fits both.
_IN_CHUNK = 900
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS handles (
    key    TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,  -- the part of key before the first "/", for listing a prefix's handles
    vals   BLOB NOT NULL   -- codec.pack_values
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS handles_prefix_key ON handles (prefix, key);
CREATE TABLE IF NOT EXISTS changes (
    -- AUTOINCREMENT: a seq is never reused, even after the newest entries are removed, so a
    -- replica's "after" position can never point at a different change.
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    key  TEXT NOT NULL,
    op   TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    vals BLOB,             -- NULL for a delete
    ts   INTEGER NOT NULL  -- seconds since the epoch
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

_UPSERT = (
    "INSERT INTO handles (key, prefix, vals) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET vals = excluded.vals"
)
_DELETE = "DELETE FROM handles WHERE key = ?"
_APPEND = "INSERT INTO changes (key, op, vals, ts) VALUES (?, ?, ?, ?)"


def _prefix(key: str) -> str:
    return key.partition("/")[0]


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
    """``Storage`` on one SQLite file in WAL mode: one connection writes, another reads.

    Every ``write`` is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction holding both the records
    and their change-log rows, so after a crash the log and the records always agree.
    """

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        """Use ``SQLiteStorage.open``; this takes two connections already set up by it."""
        self._writer = writer
        self._reader = reader
        # The writer connection is shared state: a statement issued while another coroutine is
        # between BEGIN and COMMIT would silently join that transaction, so every use of it takes
        # this lock.
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._digest: tuple[int, int, str] | None = None  # (last_seq it was computed at, count, digest)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> SQLiteStorage:
        """Open (creating if needed) the database at ``path``; ``synchronous`` is the PRAGMA level.

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
        writer: aiosqlite.Connection | None = None
        reader: aiosqlite.Connection | None = None
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
            await cls._migrate(writer, location)
            reader = await aiosqlite.connect(location, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # The reader never writes; make a mistake there fail instead of racing the writer.
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()
            if isinstance(exc, sqlite3.Error | ValueError):
                raise HandleError(f"storage error: cannot open {location!r}: {exc}") from exc
            raise
        return cls(writer, reader)

    @staticmethod
    async def _migrate(writer: aiosqlite.Connection, location: str) -> None:
        rows = list(await writer.execute_fetchall("PRAGMA user_version"))
        version = int(rows[0][0])
        if version > SCHEMA_VERSION:
            raise HandleError(
                f"storage error: {location!r} has schema version {version}; this version "
                f"of the software understands up to {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION:
            try:
                # One transaction: a crash while creating leaves version 0 and no half-made schema.
                await writer.executescript(_SCHEMA)
            except BaseException:
                if writer.in_transaction:
                    await writer.execute("ROLLBACK")
                raise

    # -- reads: on the reader connection, each statement sees the latest committed state ----------

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except (sqlite3.Error, ValueError) as exc:
            # aiosqlite raises ValueError once the connection is closed.
            raise _storage_error(exc) from exc

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

    async def list_keys(self, prefix: str, *, offset: int = 0, limit: int | None = None) -> tuple[int, list[str]]:
        # The window count is taken before LIMIT/OFFSET, so total and page come from one statement
        # (one snapshot, one round trip); only a page past the end needs a separate count.
        rows = await self._read(
            "SELECT key, count(*) OVER () FROM handles WHERE prefix = ? ORDER BY key LIMIT ? OFFSET ?",
            (prefix, -1 if limit is None else max(limit, 0), max(offset, 0)),
        )
        if rows:
            return int(rows[0][1]), [row[0] for row in rows]
        total = await self._read("SELECT count(*) FROM handles WHERE prefix = ?", (prefix,))
        return int(total[0][0]), []

    async def prefixes(self) -> list[str]:
        # A skip-scan of the (prefix, key) index: one probe per distinct prefix, not one per record.
        rows = await self._read(
            "WITH RECURSIVE p(prefix) AS (SELECT min(prefix) FROM handles UNION ALL "
            "SELECT (SELECT min(prefix) FROM handles WHERE prefix > p.prefix) FROM p WHERE p.prefix IS NOT NULL) "
            "SELECT prefix FROM p WHERE prefix IS NOT NULL"
        )
        return [str(row[0]) for row in rows]

    async def changes(self, after: int, limit: int = 1000) -> list[Change]:
        rows = await self._read(
            "SELECT seq, key, op, vals, ts FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, max(limit, 0)),
        )
        return [Change(seq, key, op, unpack_values(vals) if op == "put" else (), ts) for seq, key, op, vals, ts in rows]

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
            raise _storage_error(exc) from exc
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

    async def write(self, writes: Sequence[Write]) -> int:
        if not writes:
            return await self.last_seq()
        # Encode before taking the lock: the transaction holds the file's write lock, keep it short.
        blobs: list[bytes | None] = []
        for w in writes:
            try:
                blobs.append(None if w.values is None else pack_values(w.values))
            except (TypeError, ValueError, OverflowError) as exc:
                raise HandleError(f"storage error: cannot encode the values of {w.key!r}: {exc}") from exc
        ts = int(time.time())
        # Later writes to a key win, so only each key's final state touches the records table; every
        # write still gets its own change row, in order.
        final: dict[str, bytes | None] = {}
        for w, blob in zip(writes, blobs, strict=True):
            final[w.key] = blob
        deletes = [(key,) for key, blob in final.items() if blob is None]
        puts = [(key, _prefix(key), blob) for key, blob in final.items() if blob is not None]
        log: list[tuple[str, Literal["put", "delete"], bytes | None, int]] = [
            (w.key, "delete" if blob is None else "put", blob, ts) for w, blob in zip(writes, blobs, strict=True)
        ]

        async def transaction() -> int:
            # Each awaited aiosqlite call is a thread hop (~65 µs), so a batch of any size costs at
            # most six: BEGIN, deletes, upserts, the log rows but the last, the last one, COMMIT.
            db = self._writer
            await db.execute("BEGIN IMMEDIATE")
            try:
                if deletes:
                    await db.executemany(_DELETE, deletes)
                if puts:
                    await db.executemany(_UPSERT, puts)
                if len(log) > 1:
                    await db.executemany(_APPEND, log[:-1])
                # execute_insert returns last_insert_rowid() in the same hop: the batch's last seq.
                row = await db.execute_insert(_APPEND, log[-1])
                await db.execute("COMMIT")
            except BaseException:
                # Report the error that broke the transaction, not a failure to roll it back (on a
                # connection that is gone, say); some errors (SQLITE_FULL) already rolled it back.
                with contextlib.suppress(sqlite3.Error, ValueError):
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                raise
            if row is None:  # cannot happen after an INSERT; keeps the type honest
                raise HandleError("storage error: the change log insert returned no row")
            return int(row[0])

        return await self._locked(transaction)

    async def _locked(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        async def run() -> _T:
            async with self._write_lock:
                try:
                    return await operation()
                except (sqlite3.Error, ValueError) as exc:
                    # ValueError: aiosqlite's "Connection closed", or text sqlite3 cannot encode.
                    raise _storage_error(exc) from exc

        # Shielded: if the caller is cancelled mid-transaction, the transaction still ends (COMMIT
        # or ROLLBACK) before the lock is released, rather than leaving BEGIN open on the writer.
        # A cancelled write may therefore still have committed, as with any database.
        return await asyncio.shield(run())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:  # let a running transaction finish first
            try:
                await self._reader.close()
            finally:
                await self._writer.close()

    def __repr__(self) -> str:
        return f"<SQLiteStorage {'closed' if self._closed else 'open'}>"
