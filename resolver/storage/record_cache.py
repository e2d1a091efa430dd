"""The records a node read most recently, kept packed in memory: a GET of a hot record skips SQLite.

Entries are the packed blobs as stored (``codec.pack_values``), decoded on each hit: immutable, so
no caller can change what another reads, and their size is known, so the cache is bounded both by
count and by bytes. ``SQLiteStorage.write`` invalidates every key it wrote once the transaction
has ended. A read that started before a write may still return the old blob after that write
invalidated its key; ``generation`` (moved on by every invalidation) keeps such a read out: the
reader notes it before reading and ``put`` refuses a blob read under an older generation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["MAX_CACHED_BYTES", "MAX_CACHED_RECORDS", "MAX_CACHED_RECORD_BYTES", "RecordCache"]

# 50,000 records: a working set of the hottest identifiers (at ~400 bytes each ~20 MB packed),
# small beside the OS page cache that holds the file itself.
MAX_CACHED_RECORDS = 50_000
# Records average ~400 bytes packed, but one can be up to the body limit (megabytes): the byte bound
# keeps a few large records from making the cache grow with record size.
MAX_CACHED_BYTES = 64 * 1_048_576
# A record larger than this is read from SQLite every time rather than evicting ~100 small ones.
MAX_CACHED_RECORD_BYTES = 64 * 1024


class RecordCache:
    """LRU of ``key -> packed blob``, bounded by ``max_records`` and by ``max_bytes`` of blobs."""

    def __init__(
        self,
        max_records: int = MAX_CACHED_RECORDS,
        max_bytes: int = MAX_CACHED_BYTES,
        max_record_bytes: int = MAX_CACHED_RECORD_BYTES,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_record_bytes = min(max_record_bytes, max_bytes)
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self.generation = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> bytes | None:
        blob = self._entries.get(key)
        if blob is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return blob

    def put(self, key: str, blob: bytes, generation: int) -> None:
        """Keep ``blob``, read from storage while the cache was at ``generation``, unless a write
        invalidated anything since (it may have been this key, and the blob may be older than it)."""
        if generation != self.generation or self.max_records <= 0 or len(blob) > self.max_record_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._entries[key] = blob
        self._bytes += len(blob)
        while len(self._entries) > self.max_records or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)

    def invalidate(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` and move to a new generation (reads started before now are not kept)."""
        self.generation += 1
        entries = self._entries
        if not entries:
            return
        for key in keys:
            old = entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._bytes = 0
