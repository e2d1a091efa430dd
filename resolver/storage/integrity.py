"""Is a node's SQLite file whole: the start-up checks, the full check, and the marker of a file in use.

A node refuses to open a file SQLite finds damaged (``PRAGMA quick_check`` at start, bounded in
time; ``PRAGMA integrity_check`` in full from ``idres check``), and a file that was emptied or
removed after a node stored data there: beside ``NAME.sqlite3`` it keeps ``NAME.sqlite3.id``,
written when the file is first used, holding the random id also kept in the file's meta table.
A missing or zero-length database with that marker beside it is data lost, not a fresh node.
Synchronous (``sqlite3``): callers run these in a thread or before the event loop starts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from resolver.errors import HandleError

__all__ = [
    "IDENTITY_META",
    "MARKER_SUFFIX",
    "QUICK_CHECK_SECONDS",
    "WHAT_TO_DO",
    "check_file",
    "damaged",
    "is_corruption",
    "marker_path",
    "refuse_emptied",
    "write_marker",
]

log = logging.getLogger("idres.storage")

MARKER_SUFFIX = ".id"
IDENTITY_META = "storage.id"  # the meta table's row holding the id the marker repeats
# The start-up check reads every page of the file: measured at ~1 GB/s from the OS cache on the
# development machine (117 MB in 0.1 s), a few hundred MB/s from a cold disk. 10 s covers files of
# several GB while delaying a restart by at most 10 s, well inside a service manager's start timeout
# (systemd's default is 90 s). A larger file's check is cut short, logged, and the node starts:
# `idres check` runs the full check without a time limit.
QUICK_CHECK_SECONDS = 10.0
# How many SQLite virtual-machine steps run between two looks at the clock (each look is a Python
# call; at 10,000 steps the overhead is unmeasurable and the deadline is overrun by microseconds).
_PROGRESS_STEPS = 10_000
# How much of SQLite's report a message quotes: enough to see what kind of damage, not pages of it.
_REPORT_LINES = 5
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
WHAT_TO_DO = "restore it from a backup or resync it from a mirror; `idres check` runs the full integrity check"


def marker_path(location: str | os.PathLike[str]) -> Path:
    """``NAME.sqlite3.id`` beside ``NAME.sqlite3``."""
    return Path(os.fspath(location) + MARKER_SUFFIX)


def refuse_emptied(location: str | os.PathLike[str]) -> None:
    """Raise if the database is missing or zero-length while its marker says a node stored data there."""
    path, marker = Path(location), marker_path(location)
    if not marker.exists():
        return
    state = "missing" if not path.exists() else "empty" if path.stat().st_size == 0 else None
    if state is not None:
        raise HandleError(
            f"storage error: {path} is {state} but this node stored data there before (see {marker}): "
            f"restore it, or remove both files to start an empty node"
        )


def write_marker(location: str | os.PathLike[str], identity: str) -> None:
    """Write the marker beside the database unless it already holds ``identity`` (atomically: a
    crash leaves the old marker or the new one, never half of one)."""
    marker = marker_path(location)
    with_id = f"{identity}\n"
    try:
        if marker.read_text(encoding="utf-8").splitlines()[:1] == [identity]:
            return
    except (OSError, UnicodeDecodeError):
        pass
    note = (
        f"# A node stored data in {Path(location).name} (database id above). While this file exists, a\n"
        "# missing or empty database is refused at start; remove both to start an empty node.\n"
    )
    temporary = marker.with_name(marker.name + ".tmp")
    temporary.write_text(with_id + note, encoding="utf-8")
    os.replace(temporary, marker)


def is_corruption(exc: BaseException) -> bool:
    """SQLite says the file is damaged (SQLITE_CORRUPT: "database disk image is malformed", or
    SQLITE_NOTADB), as opposed to locked, full, closed or misused."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in _DAMAGE_CODES


def damaged(location: str | os.PathLike[str], problems: list[str]) -> HandleError:
    """The error that refuses a damaged file: which file, what SQLite found, what to do."""
    found = "; ".join(problems[:_REPORT_LINES]) + ("; ..." if len(problems) > _REPORT_LINES else "")
    return HandleError(f"storage error: {os.fspath(location)} is damaged (SQLite found: {found}): {WHAT_TO_DO}")


def check_file(
    location: str | os.PathLike[str], *, full: bool = False, seconds: float | None = None
) -> list[str] | None:
    """SQLite's problems with the file (empty: none), or None if the check ran past ``seconds``.

    ``full``: ``PRAGMA integrity_check`` (also compares every index with its table) rather than
    ``quick_check`` (every page and record, no index comparison: O(N) instead of O(N log N)).
    Opened read-write but never created (``mode=rw``), so the WAL is read too; nothing is written.
    """
    uri = Path(location).resolve().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        return [str(exc)]
    try:
        conn.execute("PRAGMA query_only = ON")
        if seconds is not None:
            deadline = time.monotonic() + seconds
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
        rows = conn.execute(f"PRAGMA {'integrity_check' if full else 'quick_check'}").fetchall()
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT:
            return None
        # A damaged schema or header stops the check itself ("database disk image is malformed").
        return [str(exc)]
    finally:
        conn.close()
    lines = [line for row in rows for line in str(row[0]).splitlines() if line.strip()]
    return [] if lines == ["ok"] else [line for line in lines if not line.startswith("*** in database")]
