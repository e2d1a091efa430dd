"""The storage interface every node uses: records by key, atomic batched writes, and the change log."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from resolver.codec import pack_values, unpack_values
from resolver.records import Record
from resolver.storage.buckets import digest_buckets, root
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
    """(count, root hex) over ``(key, packed values)`` pairs in any order: what ``Storage.digest``
    answers for those records, computed the slow way (``buckets``: the buckets and their root)."""
    return root((bucket, count, four) for bucket, (count, four) in digest_buckets(records).items())


class Storage(Protocol):
    """Records keyed by canonical handle (``Handle.key``, e.g. ``88.118.8/VIN-001`` or ``0.NA/88.118``).

    ``write`` applies a whole batch in one transaction and appends exactly one change per write that
    changes something, in that same transaction, so the change log never disagrees with the records,
    even after a crash; the per-prefix counts and the digest buckets are kept in it too.
    """

    async def get(self, key: str) -> Record | None: ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]: ...

    async def existing(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` have a record: one query for a whole batch, nothing decoded."""
        ...

    async def write(self, writes: Sequence[Write], *, created: bool = False) -> int:
        """Apply ``writes`` atomically; return the seq of the last change appended, or ``last_seq()`` if
        none was: a put of exactly the values a record already has (the same packed blob) is left
        out, with no change-log entry. ``created``: the caller made sure (under its write lock) that
        none of the keys has a record (so nothing is compared or left out)."""
        ...

    async def list_keys(
        self, prefix: str, *, after: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[str]:
        """Keys of the records under ``prefix`` (``"PREFIX/..."``), sorted: only those after ``after``
        (keyset, for a cursor), then skipping ``offset`` of them (O(offset)), at most ``limit``."""
        ...

    async def count_prefix(self, prefix: str) -> int:
        """How many records ``prefix`` holds: kept in the write transaction, O(1)."""
        ...

    async def prefixes(self) -> list[str]:
        """Every prefix (the part of a key before its first "/") some record is stored under, sorted."""
        ...

    async def records_after(self, after_key: str, limit: int) -> list[tuple[str, bytes]]:
        """(key, packed values as stored) of every record with key > ``after_key``, in key order, at most
        ``limit``: a snapshot read a page at a time ("" starts at the first key)."""
        ...

    async def keys_between(self, after_key: str, upto_key: str | None, limit: int) -> list[str]:
        """Keys with ``after_key < key <= upto_key`` (None: no upper bound) in key order, at most ``limit``."""
        ...

    async def changes(self, after: int, limit: int = 1000) -> list[Change]:
        """Change-log entries with ``seq > after`` in order, at most ``limit``. Entries below ``first_seq``
        were trimmed: a reader that needs them must start from a snapshot instead."""
        ...

    async def changes_packed(self, after: int, limit: int = 1000) -> list[PackedChange]:
        """``changes`` with the values as stored, not decoded."""
        ...

    async def last_seq(self) -> int:
        """The highest seq ever assigned (0 before the first write); trimming never lowers it."""
        ...

    async def first_seq(self) -> int:
        """The oldest seq the log still holds; ``last_seq() + 1`` when it holds none."""
        ...

    async def trim_changes(self, below: int) -> int:
        """Delete the change-log entries with ``seq < below``; how many were deleted."""
        ...

    async def trim_changes_older(self, seconds: float, below: int) -> int:
        """Delete the entries older than ``seconds`` with ``seq < below``, oldest first, stopping at the
        first younger one (the log stays one contiguous run of seqs); how many were deleted."""
        ...

    async def count(self) -> int: ...

    async def digest(self) -> tuple[int, str]:
        """(record count, root hex of the digest buckets): equal records give equal digests, whatever
        writes made them (``buckets``). Kept in the write transaction: O(buckets), never O(records)."""
        ...

    async def digest_buckets(self) -> list[tuple[int, int, str]]:
        """(bucket, record count, hash hex) of every non-empty bucket, in bucket order: two nodes
        compare these to find which buckets differ."""
        ...

    async def bucket_keys(self, bucket: int, after_key: str, limit: int) -> list[str]:
        """Keys after ``after_key`` in one digest bucket, in key order, at most ``limit`` (a scan of the
        keys: for locating a difference, not for serving)."""
        ...

    async def get_meta(self, name: str) -> str | None: ...

    async def set_meta(self, name: str, value: str) -> None: ...

    async def close(self) -> None: ...
