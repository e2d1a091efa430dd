"""The storage interface every node uses: records by key, atomic batched writes, and the change log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from resolver.records import Record
from resolver.values import HandleValue

__all__ = ["Change", "Storage", "Write"]


@dataclass(frozen=True, slots=True)
class Write:
    """One write of a batch: store ``values`` under ``key``, or delete the record when ``values`` is None."""

    key: str
    values: tuple[HandleValue, ...] | None


@dataclass(frozen=True, slots=True)
class Change:
    """One change-log entry: the write with sequence number ``seq`` (replication replays these in order)."""

    seq: int
    key: str
    op: Literal["put", "delete"]
    values: tuple[HandleValue, ...]  # empty for a delete
    timestamp: int  # seconds since the epoch, when it was committed


class Storage(Protocol):
    """Records keyed by canonical handle (``Handle.key``, e.g. ``88.118.8/VIN-001`` or ``0.NA/88.118``).

    ``write`` applies a whole batch in one transaction and appends exactly one change per write in that
    same transaction, so the change log never disagrees with the records, even after a crash.
    """

    async def get(self, key: str) -> Record | None: ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]: ...

    async def write(self, writes: Sequence[Write]) -> int:
        """Apply ``writes`` atomically; return the sequence number of the last change appended."""
        ...

    async def list_keys(self, prefix: str, *, offset: int = 0, limit: int | None = None) -> tuple[int, list[str]]:
        """(total count, one page of keys sorted) of the records whose key is ``prefix + "/..."``."""
        ...

    async def changes(self, after: int, limit: int = 1000) -> list[Change]:
        """Change-log entries with ``seq > after`` in order, at most ``limit``."""
        ...

    async def last_seq(self) -> int: ...

    async def count(self) -> int: ...

    async def get_meta(self, name: str) -> str | None: ...

    async def set_meta(self, name: str, value: str) -> None: ...

    async def close(self) -> None: ...
