"""The SQLite file's schema, its upgrades from older versions, and the id each file is given."""

from __future__ import annotations

import uuid

import aiosqlite

from resolver.errors import HandleError
from resolver.storage.integrity import IDENTITY_META

__all__ = ["SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION = 3

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
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

# Version 1 kept each record's prefix in a column with an index on (prefix, key): a second B-tree
# to update on every write, for listings the primary key serves as well. Rebuilt without them.
_UPGRADE_FROM_1 = f"""
BEGIN IMMEDIATE;
CREATE TABLE handles_v3 (key TEXT PRIMARY KEY, vals BLOB NOT NULL, seq INTEGER) WITHOUT ROWID;
INSERT INTO handles_v3 (key, vals) SELECT key, vals FROM handles ORDER BY key;
DROP TABLE handles;
ALTER TABLE handles_v3 RENAME TO handles;
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""
# Version 2 copied every put's values into the change log as well: a bulk load wrote each record
# twice. Its change rows all hold their values, so handles.seq starts NULL (nothing to copy).
_UPGRADE_FROM_2 = f"""
BEGIN IMMEDIATE;
ALTER TABLE handles ADD COLUMN seq INTEGER;
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""
_UPGRADES = {1: _UPGRADE_FROM_1, 2: _UPGRADE_FROM_2}


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
    if version < SCHEMA_VERSION:
        try:
            # One transaction each: a crash leaves the old version and no half-made schema.
            await writer.executescript(_UPGRADES.get(version, _SCHEMA))
        except BaseException:
            if writer.in_transaction:
                await writer.execute("ROLLBACK")
            raise
    rows = list(await writer.execute_fetchall("SELECT value FROM meta WHERE name = ?", (IDENTITY_META,)))
    if rows:
        return str(rows[0][0])
    identity = uuid.uuid4().hex
    await writer.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (IDENTITY_META, identity))
    return identity
