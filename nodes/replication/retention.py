"""Change-log retention: a node trims its log below what every mirror applied, and past an age.

The log exists for the mirrors: a mirror's long-poll carries ``after``, the seq it has applied
(``AckTracker``), and an entry every peer has applied is needed by no one. What is kept:

- With peers (the other members of the node's replication group), the entries above the lowest
  seq they acknowledged. A peer that has not reported since this node started holds all of it back:
  acknowledgements are kept in memory, so after a restart nothing is trimmed on their account until
  each has polled again (a mirror copying a snapshot polls only when done).
- Whatever the peers say, entries older than the node spec's ``change_log_max_age``: a mirror gone
  for longer must not let the log grow without end. It finds its place trimmed, gets HTTP 410 and
  copies a snapshot again (``nodes.replication.follower``).
- Without peers (or on a mirror, which no peer polls), age alone decides.
- The newest entry always stays, so the log's last seq survives whatever storage derives it from.

Trimming runs in the background every ``TRIM_EVERY`` seconds, ``TRIM_CHUNK`` entries per delete so a
pass never holds the write lock for long, at most ``MAX_CHUNKS`` per pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping

from nodes.replication.acks import AckTracker
from resolver.storage import Storage

__all__ = ["Retention", "ack_floor"]

log = logging.getLogger("idres.replication")

TRIM_EVERY = 10.0  # seconds between passes: the log outgrows what it needs by at most this much writing
TRIM_CHUNK = 5_000  # entries per trim_changes: a few milliseconds of the write lock
# Chunks per pass: up to 2 million entries, 200k a second over TRIM_EVERY, more than a bulk load
# writes (~90k/s); a longer backlog goes on in the next pass.
MAX_CHUNKS = 400


def ack_floor(peers: Collection[str], applied: Mapping[str, int]) -> int | None:
    """The seq below which no peer needs the log: one more than the lowest seq every peer applied.

    None without peers (the acknowledgements decide nothing; age alone does), 0 while some peer has
    not reported (keep everything on its account)."""
    if not peers:
        return None
    seqs = [applied.get(name) for name in peers]
    if any(seq is None for seq in seqs):
        return 0
    return min(seq for seq in seqs if seq is not None) + 1


class Retention:
    """Trims ``store``'s change log, kept for ``peers`` as far as ``acks`` says they applied it, and for
    ``max_age`` seconds at most (None: no limit)."""

    def __init__(self, store: Storage, peers: Collection[str], acks: AckTracker, max_age: float | None) -> None:
        self._store = store
        self._peers = tuple(peers)
        self._acks = acks
        self._max_age = max_age

    async def run(self) -> None:
        """Trim every ``TRIM_EVERY`` seconds until cancelled (never at once: see the module docstring)."""
        while True:
            await asyncio.sleep(TRIM_EVERY)
            try:
                trimmed = await self.trim()
            except Exception:  # keep trimming whatever went wrong; a failed pass only leaves the log longer
                log.exception("trimming the change log")
                continue
            if trimmed:
                log.info("trimmed %d change-log entries", trimmed)

    async def trim(self) -> int:
        """One pass: delete what no one needs, a chunk at a time; the number of entries deleted."""
        store, deleted = self._store, 0
        for _ in range(MAX_CHUNKS):
            first, last = await store.first_seq(), await store.last_seq()
            ceiling = min(first + TRIM_CHUNK, last)  # this chunk's end; the newest entry stays
            if ceiling <= first:
                break
            applied = {name: seq for name, (seq, _) in self._acks.applied.items()}
            below = min(ack_floor(self._peers, applied) or 0, ceiling)
            if below > first:
                trimmed = await store.trim_changes(below)
            elif self._max_age is not None:
                trimmed = await store.trim_changes_older(self._max_age, ceiling)
            else:
                break
            if not trimmed:
                break
            deleted += trimmed
            await asyncio.sleep(0)  # let requests run between chunks
        return deleted
