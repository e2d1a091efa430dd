"""In-memory fakes of the service's interfaces, for unit tests that should not touch the disk."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from resolver.codec import unpack_values
from resolver.errors import HandleError
from resolver.records import Record
from resolver.storage.base import Change, PackedChange, Write, digest_records
from resolver.storage.buckets import bucket_of_key, digest_buckets, lanes_hex

__all__ = ["FakeClock", "MemoryStorage"]


class FakeClock:
    """A clock that moves only when told: ``clock()`` reads it, ``clock.now`` or ``advance()`` set it.
    Pass it wherever the code takes ``clock=`` (``time.monotonic`` in production)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryStorage:
    """``Storage`` in dicts, with the same semantics as ``SQLiteStorage``, change log included.

    Values are kept packed with the real codec, so what comes back is exactly what SQLite would
    return (tuples read back as lists, and so on), and a caller mutating a value it wrote or read
    cannot change what is stored. Counts, digests and listings are computed the slow way, from the
    records: what SQLiteStorage keeps incrementally must always equal them.
    """

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}
        self._log: list[tuple[int, str, Literal["put", "delete"], bytes | None, int]] = []
        self._meta: dict[str, str] = {}
        self._seq = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise HandleError("storage error: Connection closed")

    async def get(self, key: str) -> Record | None:
        self._check_open()
        blob = self._records.get(key)
        return None if blob is None else Record(key, unpack_values(blob))

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        self._check_open()
        return {k: Record(k, unpack_values(self._records[k])) for k in keys if k in self._records}

    async def existing(self, keys: Sequence[str]) -> set[str]:
        self._check_open()
        return {k for k in keys if k in self._records}

    async def write(self, writes: Sequence[Write], *, created: bool = False) -> int:
        self._check_open()
        # All that can fail happens before anything changes, so a failed batch leaves no trace.
        staged: list[tuple[str, bytes | None]] = []
        for w in writes:
            try:
                w.key.encode("utf-8")  # SQLite cannot store text that is not valid UTF-8
                blob = w.blob
            except (TypeError, ValueError, OverflowError) as exc:
                raise HandleError(f"storage error: cannot store {w.key!r}: {exc}") from exc
            staged.append((w.key, blob))
        ts = int(time.time())
        for key, blob in staged:
            if blob is None:
                self._seq += 1
                self._records.pop(key, None)
                self._log.append((self._seq, key, "delete", None, ts))
            elif created or self._records.get(key) != blob:  # a put that changes nothing is left out
                self._seq += 1
                self._records[key] = blob
                self._log.append((self._seq, key, "put", blob, ts))
        return self._seq

    def _sorted_keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self._records if k.partition("/")[0] == prefix)

    async def list_keys(
        self, prefix: str, *, after: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[str]:
        self._check_open()
        keys = [k for k in self._sorted_keys(prefix) if after is None or k > after]
        start = max(offset, 0)
        end = None if limit is None else start + max(limit, 0)
        return keys[start:end]

    async def count_prefix(self, prefix: str) -> int:
        self._check_open()
        return len(self._sorted_keys(prefix))

    async def prefixes(self) -> list[str]:
        self._check_open()
        return sorted({k.partition("/")[0] for k in self._records})

    async def records_after(self, after_key: str, limit: int) -> list[tuple[str, bytes]]:
        self._check_open()
        return [(k, self._records[k]) for k in sorted(k for k in self._records if k > after_key)][: max(limit, 0)]

    async def keys_between(self, after_key: str, upto_key: str | None, limit: int) -> list[str]:
        self._check_open()
        keys = sorted(k for k in self._records if k > after_key and (upto_key is None or k <= upto_key))
        return keys[: max(limit, 0)]

    async def changes(self, after: int, limit: int = 1000) -> list[Change]:
        return [
            Change(c.seq, c.key, c.op, () if c.blob is None else unpack_values(c.blob), c.timestamp)
            for c in await self.changes_packed(after, limit)
        ]

    async def changes_packed(self, after: int, limit: int = 1000) -> list[PackedChange]:
        self._check_open()
        # The log holds a contiguous run of seqs starting at first_seq (older ones were trimmed).
        first = self._log[0][0] if self._log else self._seq + 1
        start = max(after + 1 - first, 0)
        return [PackedChange(*entry) for entry in self._log[start : start + max(limit, 0)]]

    async def last_seq(self) -> int:
        self._check_open()
        return self._seq

    async def first_seq(self) -> int:
        self._check_open()
        return self._log[0][0] if self._log else self._seq + 1

    async def trim_changes(self, below: int) -> int:
        self._check_open()
        kept = [entry for entry in self._log if entry[0] >= below]
        trimmed = len(self._log) - len(kept)
        self._log = kept
        return trimmed

    async def trim_changes_older(self, seconds: float, below: int) -> int:
        self._check_open()
        cutoff = int(time.time() - seconds)
        young = next((entry[0] for entry in self._log if entry[0] < below and entry[4] >= cutoff), below)
        return await self.trim_changes(young)

    async def count(self) -> int:
        self._check_open()
        return len(self._records)

    async def digest(self) -> tuple[int, str]:
        self._check_open()
        return digest_records(self._records.items())

    async def digest_buckets(self) -> list[tuple[int, int, str]]:
        self._check_open()
        return [(b, n, lanes_hex(four)) for b, (n, four) in digest_buckets(self._records.items()).items()]

    async def bucket_keys(self, bucket: int, after_key: str, limit: int) -> list[str]:
        self._check_open()
        keys = sorted(k for k in self._records if k > after_key and bucket_of_key(k) == bucket)
        return keys[: max(limit, 0)]

    async def get_meta(self, name: str) -> str | None:
        self._check_open()
        return self._meta.get(name)

    async def set_meta(self, name: str, value: str) -> None:
        self._check_open()
        self._meta[name] = value

    async def close(self) -> None:
        self._closed = True
