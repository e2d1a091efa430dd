"""In-memory fakes of the service's interfaces, for unit tests that should not touch the disk."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from resolver.codec import unpack_values
from resolver.errors import HandleError
from resolver.records import Record
from resolver.storage.base import Change, PackedChange, Write, digest_records

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
    cannot change what is stored.
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
            self._seq += 1
            if blob is None:
                self._records.pop(key, None)
                self._log.append((self._seq, key, "delete", None, ts))
            else:
                self._records[key] = blob
                self._log.append((self._seq, key, "put", blob, ts))
        return self._seq

    async def list_keys(self, prefix: str, *, offset: int = 0, limit: int | None = None) -> tuple[int, list[str]]:
        self._check_open()
        keys = sorted(k for k in self._records if k.partition("/")[0] == prefix)
        start = max(offset, 0)
        end = None if limit is None else start + max(limit, 0)
        return len(keys), keys[start:end]

    async def prefixes(self) -> list[str]:
        self._check_open()
        return sorted({k.partition("/")[0] for k in self._records})

    async def changes(self, after: int, limit: int = 1000) -> list[Change]:
        self._check_open()
        start = max(after, 0)  # seqs run 1, 2, 3... with no gaps, so seq n is at position n - 1
        picked = self._log[start : start + max(limit, 0)]
        return [
            Change(seq, key, op, () if blob is None else unpack_values(blob), ts) for seq, key, op, blob, ts in picked
        ]

    async def changes_packed(self, after: int, limit: int = 1000) -> list[PackedChange]:
        self._check_open()
        start = max(after, 0)
        return [PackedChange(*entry) for entry in self._log[start : start + max(limit, 0)]]

    async def last_seq(self) -> int:
        self._check_open()
        return self._seq

    async def count(self) -> int:
        self._check_open()
        return len(self._records)

    async def digest(self) -> tuple[int, str]:
        self._check_open()
        return digest_records((k, self._records[k]) for k in sorted(self._records))

    async def get_meta(self, name: str) -> str | None:
        self._check_open()
        return self._meta.get(name)

    async def set_meta(self, name: str, value: str) -> None:
        self._check_open()
        self._meta[name] = value

    async def close(self) -> None:
        self._closed = True
