"""Values the storage tests write (one of every data format, simple URL records) and a version-3 file."""

from __future__ import annotations

import sqlite3

from resolver.values import HandleValue, value_from_wire

__all__ = ["EVERY_FORMAT", "NOW", "SCHEMA_V3", "make_v3_file", "url", "wire"]

NOW = 1_700_000_000


def wire(raw: dict[str, object]) -> HandleValue:
    return value_from_wire(raw, position=1, now=NOW)


def url(n: int | str, index: int = 1) -> tuple[HandleValue, ...]:
    return (HandleValue(index, "URL", "string", f"https://example.org/{n}", timestamp=NOW),)


EVERY_FORMAT: tuple[HandleValue, ...] = (
    wire(
        {
            "index": 1,
            "type": "URL",
            "data": {"format": "string", "value": "https://example.org/车架号"},
            "ttl": 3600,
            "references": [{"index": 300, "handle": "88.118.8/other"}],
        }
    ),
    wire({"index": 2, "type": "CERT", "data": {"format": "base64", "value": "AAEC/w=="}}),
    wire(
        {
            "index": 3,
            "type": "HASH",
            "data": {"format": "hex", "value": "00ff10"},
            "permissions": "1100",
        }
    ),
    wire(
        {
            "index": 100,
            "type": "HS_ADMIN",
            "data": {
                "format": "admin",
                "value": {"handle": "0.NA/88.118.8", "index": 200, "permissions": "011111110011"},
            },
        }
    ),
    wire(
        {
            "index": 200,
            "type": "HS_VLIST",
            "data": {
                "format": "vlist",
                "value": [
                    {"handle": "88.118.8/admin1", "index": 300},
                    {"handle": "88.118.8/admin2", "index": 301},
                ],
            },
        }
    ),
    wire(
        {
            "index": 1000,
            "type": "HS_SITE",
            "data": {
                "format": "site",
                "value": {
                    "servers": [{"address": "127.0.0.1", "interfaces": [{"protocol": "http", "port": 8000}]}],
                    "attributes": [{"name": "desc", "value": "primary"}],
                },
            },
        }
    ),
)


# The schema of version 3, as the code before version 4 created it (resolver/storage/schema.py then).
SCHEMA_V3 = """
CREATE TABLE handles (key TEXT PRIMARY KEY, vals BLOB NOT NULL, seq INTEGER) WITHOUT ROWID;
CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('put', 'delete')), vals BLOB, ts INTEGER NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version = 3;
"""


def make_v3_file(path: str, history: list[tuple[str, bytes | None]]) -> dict[str, bytes]:
    """A version-3 file holding ``history`` (key, packed values or None to delete) written one change
    at a time as version 3 wrote them: a key's latest put leaves its values to the record (vals NULL,
    handles.seq = its seq), earlier puts keep a copy. Returns the records it ends with."""
    records: dict[str, bytes] = {}
    latest: dict[str, int] = {}
    rows: list[tuple[str, str, bytes | None]] = []
    for key, blob in history:
        if key in latest:  # the previous latest put gets its copy back
            seq = latest.pop(key)
            rows[seq - 1] = (rows[seq - 1][0], rows[seq - 1][1], records[key])
        if blob is None:
            records.pop(key, None)
            rows.append((key, "delete", None))
        else:
            records[key] = blob
            rows.append((key, "put", None))
            latest[key] = len(rows)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V3)
        db.executemany("INSERT INTO changes (key, op, vals, ts) VALUES (?, ?, ?, 1700000000)", rows)
        db.executemany(
            "INSERT INTO handles (key, vals, seq) VALUES (?, ?, ?)",
            [(key, blob, latest[key]) for key, blob in records.items()],
        )
    db.close()
    return records
