"""The SQLite file's schema, its upgrades from older versions, and the id each file is given."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import Iterator

import aiosqlite

from resolver.errors import HandleError
from resolver.storage.buckets import digest_buckets
from resolver.storage.integrity import IDENTITY_META
from resolver.storage.ranks import MARKS_TABLE, build

__all__ = ["BUSY_TIMEOUT_MS", "PREFIX_OF", "SCHEMA_VERSION", "migrate"]

log = logging.getLogger("idres.storage")

# How long a statement waits for a lock held by another connection (another process on the same
# file, or a checkpoint) before failing with "database is locked".
BUSY_TIMEOUT_MS = 5_000

# Version 5 adds the listing ranks (key_marks, resolver/storage/ranks.py): a page by number at any depth.
SCHEMA_VERSION = 5

# Version 4: what listings and the digest need, kept in each write's transaction
# (resolver/storage/write_batch.py) so neither ever scans the records.
_KEPT_TABLES = """
CREATE TABLE IF NOT EXISTS prefix_counts (
    prefix TEXT PRIMARY KEY,  -- the part of a key before its first "/"
    n      INTEGER NOT NULL   -- how many records it holds (rows at 0 are removed)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    -- The digest buckets (resolver/storage/buckets.py): records by CRC-32 of the key, each bucket's
    -- count and the XOR of its records' SHA-256, as four signed 64-bit lanes.
    bucket INTEGER PRIMARY KEY,
    n      INTEGER NOT NULL,
    h0 INTEGER NOT NULL, h1 INTEGER NOT NULL, h2 INTEGER NOT NULL, h3 INTEGER NOT NULL
);
"""

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS handles (
    -- "PREFIX/SUFFIX": a prefix's records are the key range ['PREFIX/', 'PREFIX0') ("0" follows "/"),
    -- so listing a prefix is a range scan of the primary key and needs no index of its own.
    key  TEXT PRIMARY KEY,
    vals BLOB NOT NULL,  -- codec.pack_values
    seq  INTEGER         -- the change that wrote vals, when that change keeps no copy of them
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    -- AUTOINCREMENT: a seq is never reused, even after the newest entries are removed, so a
    -- replica's "after" position can never point at a different change.
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    key  TEXT NOT NULL,
    op   TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    -- A put's values; NULL for a delete, and for the latest put of a key, whose values are the
    -- record's (handles.seq = seq): written once, not twice. Before the record changes again,
    -- the values are copied here (_KEEP_HISTORY), so every put still reads as it was written.
    vals BLOB,
    ts   INTEGER NOT NULL  -- seconds since the epoch
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
{_KEPT_TABLES}
{MARKS_TABLE};
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

# Version 1 kept each record's prefix in a column with an index on (prefix, key): a second B-tree
# to update on every write, for listings the primary key serves as well. Rebuilt without them.
_UPGRADE_FROM_1 = """
BEGIN IMMEDIATE;
CREATE TABLE handles_v3 (key TEXT PRIMARY KEY, vals BLOB NOT NULL, seq INTEGER) WITHOUT ROWID;
INSERT INTO handles_v3 (key, vals) SELECT key, vals FROM handles ORDER BY key;
DROP TABLE handles;
ALTER TABLE handles_v3 RENAME TO handles;
PRAGMA user_version = 3;
COMMIT;
"""
# Version 2 copied every put's values into the change log as well: a bulk load wrote each record
# twice. Its change rows all hold their values, so handles.seq starts NULL (nothing to copy).
_UPGRADE_FROM_2 = """
BEGIN IMMEDIATE;
ALTER TABLE handles ADD COLUMN seq INTEGER;
PRAGMA user_version = 3;
COMMIT;
"""
_UPGRADES = {1: _UPGRADE_FROM_1, 2: _UPGRADE_FROM_2}

# The part of a key before its first "/" (all of a key without one, which Handle.key never makes).
PREFIX_OF = "CASE WHEN instr(key, '/') > 0 THEN substr(key, 1, instr(key, '/') - 1) ELSE key END"
# Records read per fetch while the buckets are computed (bounded memory at any size).
_UPGRADE_FETCH = 10_000


@contextlib.contextmanager
def _upgrade(location: str, to: int) -> Iterator[sqlite3.Connection]:
    """One upgrade step in one transaction on a connection of its own, ending at version ``to``: a
    crash or an error leaves the file at its old version, with no half-made schema. Synchronous:
    run it in a thread."""
    conn = sqlite3.connect(location, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute(f"PRAGMA user_version = {int(to)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def _upgrade_from_3(location: str) -> None:
    """Version 3 kept neither counts nor digest buckets: compute both once from the records (at 10
    million records, tens of seconds, once)."""
    with _upgrade(location, 4) as conn:
        for statement in _KEPT_TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"INSERT INTO prefix_counts (prefix, n) SELECT {PREFIX_OF} AS p, count(*) FROM handles GROUP BY p")
        cursor = conn.execute("SELECT key, vals FROM handles")

        def records() -> Iterator[tuple[str, bytes]]:
            while rows := cursor.fetchmany(_UPGRADE_FETCH):
                yield from rows

        conn.executemany(
            "INSERT INTO buckets (bucket, n, h0, h1, h2, h3) VALUES (?, ?, ?, ?, ?, ?)",
            [(bucket, n, *four) for bucket, (n, four) in digest_buckets(records()).items()],
        )


def _upgrade_from_4(location: str) -> None:
    """Version 4 kept no listing ranks (resolver/storage/ranks.py): mark every prefix's records once,
    with flat memory (at 10 million records, a few seconds)."""
    with _upgrade(location, 5) as conn:
        conn.execute(MARKS_TABLE)
        build(conn, [str(row[0]) for row in conn.execute("SELECT prefix FROM prefix_counts ORDER BY prefix")])


async def migrate(writer: aiosqlite.Connection, location: str) -> str:
    """Bring the file at ``location`` to ``SCHEMA_VERSION`` (creating it when new); return its id
    (``IDENTITY_META``: made once, when the file is first opened by a version that keeps one)."""
    rows = list(await writer.execute_fetchall("PRAGMA user_version"))
    version = int(rows[0][0])
    if version > SCHEMA_VERSION:
        raise HandleError(
            f"storage error: {location!r} has schema version {version}; this version "
            f"of the software understands up to {SCHEMA_VERSION}"
        )
    if version in _UPGRADES or version == 0:
        try:
            # One transaction each: a crash leaves the old version and no half-made schema.
            await writer.executescript(_UPGRADES.get(version, _SCHEMA))
        except BaseException:
            if writer.in_transaction:
                await writer.execute("ROLLBACK")
            raise
    rows = list(await writer.execute_fetchall("PRAGMA user_version"))
    if int(rows[0][0]) == 3:
        log.info("upgrading %s to schema version %d: counting records per prefix and per digest bucket", location, 4)
        await asyncio.to_thread(_upgrade_from_3, location)
    rows = list(await writer.execute_fetchall("PRAGMA user_version"))
    if int(rows[0][0]) == 4:
        log.info("upgrading %s to schema version %d: ranking the keys of each prefix for listing pages", location, 5)
        await asyncio.to_thread(_upgrade_from_4, location)
    rows = list(await writer.execute_fetchall("SELECT value FROM meta WHERE name = ?", (IDENTITY_META,)))
    if rows:
        return str(rows[0][0])
    identity = uuid.uuid4().hex
    await writer.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (IDENTITY_META, identity))
    return identity
