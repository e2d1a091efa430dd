"""The read connections of one SQLite file: several for short reads, used by whichever is free, and one for scans.

In WAL mode readers never block each other or the writer, and each connection runs its statements
in a thread of its own (aiosqlite), so N connections serve N reads at once. A read that may take
long (a listing page at a deep ``OFFSET``, a scan of every key for one digest bucket) runs on the
scan connection instead, so however many of those queue up, a GET always finds a short-read
connection that no scan holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

import aiosqlite

__all__ = ["READERS", "READER_CACHE_KIB", "ReadPool"]

# Short-read connections. Each has its own thread, and SQLite releases the GIL while it runs, so
# they are as many reads waiting on the disk at once: a large node's records are not all in the OS
# page cache (this machine's kernel pages out what was not read for a minute), and a GET that
# misses it waits ~0.3 ms for the disk. Measured at 10M records with the page cache dropped, 64
# clients: 16 connections (and batches of 16, point_reads.MAX_BATCH) served 2,507 / 4,020 GETs/s in
# the first two 8 s runs where 4 (batches of 256) served 1,730 / 3,226; warm, the same.
READERS = 16
# Page cache per read connection (SQLite's default is 2 MiB): the upper levels of the primary key's
# B-tree. A limit, not an allocation; the OS page cache holds the file beneath. 16 x 4 MiB keeps a
# node's memory well under what a mirror's copy may use (issue 12: under 300 MB).
READER_CACHE_KIB = 4_096


class ReadPool:
    """``fetch`` runs one statement on a free short-read connection, or on the scan connection."""

    def __init__(self, readers: list[aiosqlite.Connection], scanner: aiosqlite.Connection) -> None:
        self._all = [*readers, scanner]
        self._free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for conn in readers:
            self._free.put_nowait(conn)
        self._scanner = scanner
        self._scan_lock = asyncio.Lock()  # statements queue here, not inside aiosqlite's thread

    @classmethod
    async def open(
        cls,
        location: str,
        readers: int,
        *,
        busy_timeout_ms: int,
        functions: Iterable[tuple[str, int, Callable[..., Any]]] = (),
    ) -> ReadPool:
        """``readers`` short-read connections (at least 1) and the scan connection, all read-only;
        ``functions`` (name, arity, deterministic function) are registered on the scan connection."""
        opened: list[aiosqlite.Connection] = []
        try:
            for _ in range(max(readers, 1) + 1):
                conn = await aiosqlite.connect(location, isolation_level=None)
                opened.append(conn)
                await conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
                await conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
                # Readers never write; make a mistake there fail instead of racing the writer.
                await conn.execute("PRAGMA query_only = ON")
            for name, arity, function in functions:
                await opened[-1].create_function(name, arity, function, deterministic=True)
        except BaseException:
            for conn in opened:
                await conn.close()
            raise
        return cls(opened[:-1], opened[-1])

    async def fetch(self, sql: str, params: Iterable[Any] = (), *, scan: bool = False) -> list[sqlite3.Row]:
        """All rows of ``sql``: one statement, so one consistent snapshot of the file."""
        if scan:
            async with self._scan_lock:
                return list(await self._scanner.execute_fetchall(sql, tuple(params)))
        conn = await self._free.get()
        try:
            return list(await conn.execute_fetchall(sql, tuple(params)))
        finally:
            self._free.put_nowait(conn)

    async def interrupt(self) -> None:
        """Stop every statement in progress (each fails with "interrupted")."""
        for conn in self._all:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await conn.interrupt()

    async def close(self) -> None:
        # A scan in progress would hold its connection's close (and the node's shutdown) until it ends.
        await self.interrupt()
        errors: list[BaseException] = []
        for conn in self._all:
            try:
                await conn.close()
            except (sqlite3.Error, ValueError) as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
