"""Point reads by key, coalesced: the GETs that reach storage in one turn of the event loop share one statement.

Each aiosqlite statement is a hop to its connection's thread and back: waking the thread, the
thread taking the GIL from the event loop, a callback to hand the result back. Under load that hop
costs several times the B-tree lookup itself (profiled at 10M records: ~250 µs of event-loop time a
GET that missed the record cache, against ~120 µs for one that hit it), so a node with more records
than its record cache served random GETs at 0.4-0.8 of the rate of a small node. Coalesced, the
GETs of one loop turn (at 64 concurrent clients, tens of them) cost one hop: the lookups run as one
``json_each`` join in SQLite's C loop, a few µs each, and the answer of a large node is no longer
paid for per request.

A lone GET pays nothing for this: the batch is sent at the end of the loop turn it arrived in,
without waiting for company. Batches go to whichever read connection is free (``ReadPool``), so
several run at once when GETs arrive faster than one batch is served.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = ["MAX_BATCH", "PointReads"]

# Keys per statement: a batch of this many is sent at once, without waiting for the loop turn to
# end, so the GETs of a busy turn spread over several read connections: keys a statement looks up
# one after the other, and each may wait for the disk (read_pool.READERS).
MAX_BATCH = 16

_ONE = "SELECT key, vals FROM handles WHERE key = ?"
# Any number of keys as one JSON array parameter (no bound-variable limit); each is a primary-key probe.
_MANY = "SELECT h.key, h.vals FROM json_each(?) AS j JOIN handles AS h ON h.key = j.value"

Fetch = Callable[[str, Iterable[Any]], Awaitable[list[sqlite3.Row]]]


class PointReads:
    """``get(key)``: the stored blob of ``key`` or None, read together with the other keys asked for
    in the same loop turn. ``fetch(sql, params)`` runs one statement on a read connection; what it
    raises, every GET of its batch raises."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._waiting: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._flush_scheduled = False
        self._running: set[asyncio.Task[None]] = set()  # referenced until done (asyncio keeps weak ones)
        self.statements = 0  # how many batches were sent (for tests and metrics)
        self.keys = 0  # how many keys they held

    async def get(self, key: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        if len(self._waiting) >= MAX_BATCH:
            self._flush()
        elif not self._flush_scheduled:
            # call_soon runs after every callback already queued in this turn: the handlers woken
            # by the same socket reads all reach this point first and join the batch.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._waiting = self._waiting, {}
        if not batch:
            return
        task = asyncio.ensure_future(self._read(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _read(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        keys = list(batch)
        self.statements += 1
        self.keys += len(keys)
        try:
            if len(keys) == 1:
                rows = await self._fetch(_ONE, keys)
            else:
                rows = await self._fetch(_MANY, (json.dumps(keys),))
        except asyncio.CancelledError:  # the node is stopping: so are its GETs
            for futures in batch.values():
                for future in futures:
                    future.cancel()
            raise
        except Exception as exc:  # every GET of the batch fails as the statement did
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        found = {str(key): bytes(vals) for key, vals in rows}
        for key, futures in batch.items():
            blob = found.get(key)
            for future in futures:
                if not future.done():  # its GET may have been cancelled (a client that went away)
                    future.set_result(blob)
