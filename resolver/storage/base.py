"""The storage interface every node uses: records by key, atomic batched writes, and the change log."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from resolver.codec import pack_values, unpack_values
from resolver.records import Record
from resolver.values import HandleValue

__all__ = ["Change", "Storage", "Write", "digest_records"]


class Write:
    """One write of a batch: store ``values`` under ``key``, or delete the record when ``values`` is None.

    A put can also be built from its stored form, ``Write.packed(key, blob)`` with ``blob`` exactly
    ``codec.pack_values`` output (bulk registration packs each record once, straight from the wire):
    storage then writes the blob as it is, and the values are decoded only if someone reads them.
    Either way ``values`` and ``blob`` agree, and neither changes once made.
    """

    __slots__ = ("_blob", "_values", "key")

    def __init__(self, key: str, values: Sequence[HandleValue] | None) -> None:
        self.key = key
        self._values = None if values is None else tuple(values)
        self._blob: bytes | None = None

    @classmethod
    def packed(cls, key: str, blob: bytes) -> Write:
        write = cls.__new__(cls)
        write.key, write._values, write._blob = key, None, blob
        return write

    @property
    def is_delete(self) -> bool:
        return self._values is None and self._blob is None

    @property
    def values(self) -> tuple[HandleValue, ...] | None:
        if self._values is None and self._blob is not None:
            self._values = unpack_values(self._blob)
        return self._values

    @property
    def blob(self) -> bytes | None:
        """``codec.pack_values(values)``, packed at most once; None for a delete. Raises what
        ``pack_values`` raises (TypeError, ValueError, OverflowError) for values it cannot encode."""
        if self._blob is None and self._values is not None:
            self._blob = pack_values(self._values)
        return self._blob

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Write):
            return NotImplemented
        return (self.key, self.values) == (other.key, other.values)

    def __hash__(self) -> int:
        return hash((self.key, self.values))

    def __repr__(self) -> str:
        return f"Write({self.key!r}, {self.values!r})"


@dataclass(frozen=True, slots=True)
class Change:
    """One change-log entry: the write with sequence number ``seq`` (replication replays these in order)."""

    seq: int
    key: str
    op: Literal["put", "delete"]
    values: tuple[HandleValue, ...]  # empty for a delete
    timestamp: int  # seconds since the epoch, when it was committed


@dataclass(frozen=True, slots=True)
class PackedChange:
    """A ``Change`` with its values as stored (``codec.pack_values`` bytes; None for a delete):
    what replication sends between nodes, so neither side decodes and re-encodes them."""

    seq: int
    key: str
    op: Literal["put", "delete"]
    blob: bytes | None
    timestamp: int


def digest_records(records: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """(count, SHA-256 hex) over ``(key, packed values)`` pairs given in key order (``Storage.digest``).

    Each record adds its UTF-8 key and its ``codec.pack_values`` blob, each preceded by its length
    (4 bytes, big-endian), so no two different record sets hash the same input. Key order is code
    point order, which for UTF-8 is byte order: what SQLite's ``ORDER BY key`` gives.
    """
    digest = hashlib.sha256()
    count = 0
    for key, blob in records:
        raw = key.encode("utf-8")
        digest.update(b"".join((len(raw).to_bytes(4, "big"), raw, len(blob).to_bytes(4, "big"), blob)))
        count += 1
    return count, digest.hexdigest()


class Storage(Protocol):
    """Records keyed by canonical handle (``Handle.key``, e.g. ``88.118.8/VIN-001`` or ``0.NA/88.118``).

    ``write`` applies a whole batch in one transaction and appends exactly one change per write in that
    same transaction, so the change log never disagrees with the records, even after a crash.
    """

    async def get(self, key: str) -> Record | None: ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]: ...

    async def existing(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` have a record: one query for a whole batch, nothing decoded."""
        ...

    async def write(self, writes: Sequence[Write], *, created: bool = False) -> int:
        """Apply ``writes`` atomically; return the sequence number of the last change appended.
        ``created``: the caller made sure (under its write lock) that none of the keys has a record."""
        ...

    async def list_keys(self, prefix: str, *, offset: int = 0, limit: int | None = None) -> tuple[int, list[str]]:
        """(total count, one page of keys sorted) of the records whose key is ``prefix + "/..."``."""
        ...

    async def prefixes(self) -> list[str]:
        """Every prefix (the part of a key before its first "/") some record is stored under, sorted."""
        ...

    async def changes(self, after: int, limit: int = 1000) -> list[Change]:
        """Change-log entries with ``seq > after`` in order, at most ``limit``."""
        ...

    async def changes_packed(self, after: int, limit: int = 1000) -> list[PackedChange]:
        """``changes`` with the values as stored, not decoded."""
        ...

    async def last_seq(self) -> int: ...

    async def count(self) -> int: ...

    async def digest(self) -> tuple[int, str]:
        """(record count, ``digest_records`` of every record): equal data gives equal digests.

        O(records): every record is read and hashed; implementations may cache it until the next write.
        """
        ...

    async def get_meta(self, name: str) -> str | None: ...

    async def set_meta(self, name: str, value: str) -> None: ...

    async def close(self) -> None: ...
