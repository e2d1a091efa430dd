"""Records: a handle's list of values, and the pure operations on them (filter, merge, read views)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resolver.errors import InvalidValue, ProtocolError, ValueAlreadyExists, ValuesNotFound
from resolver.limits import DEFAULT_LIMITS, Limits
from resolver.values import HandleValue, describe, value_from_wire, values_size

__all__ = [
    "Record",
    "filter_values",
    "keep_row_timestamps",
    "merge_values",
    "parse_put_body",
    "public_values",
    "remove_values",
]


@dataclass(frozen=True, slots=True)
class Record:
    """A stored record: its canonical key (``Handle.key``) and values ordered by index."""

    key: str
    values: tuple[HandleValue, ...]

    def by_index(self) -> dict[int, HandleValue]:
        return {v.index: v for v in self.values}


def sort_values(values: Iterable[HandleValue]) -> tuple[HandleValue, ...]:
    return tuple(sorted(values, key=lambda v: v.index))


def parse_put_body(
    body: Any, *, handle_text: str, now: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[HandleValue, ...]:
    """The values of a PUT body: ``{"values": [...]}``, a bare list, or one value (Technical Manual §14.5.2)."""
    if isinstance(body, Mapping) and "values" in body:
        if "handle" in body and body["handle"] != handle_text:
            raise ProtocolError(
                f"body names handle {describe(body['handle'])} but the path names {describe(handle_text)}",
                handle=handle_text,
            )
        raw_values = body["values"]
    elif isinstance(body, list):
        raw_values = body
    elif isinstance(body, Mapping) and {"index", "type", "data"} <= body.keys():
        raw_values = [body]
    else:
        raise ProtocolError('the body must be {"values": [...]}, a list of values, or one value', handle=handle_text)
    if not isinstance(raw_values, list):
        raise ProtocolError('"values" must be a list', handle=handle_text)
    if len(raw_values) > limits.max_values:
        raise InvalidValue(f"{len(raw_values)} values in one record (at most {limits.max_values})", handle=handle_text)
    values = [value_from_wire(raw, position=i + 1, now=now, limits=limits) for i, raw in enumerate(raw_values)]
    seen: set[int] = set()
    for v in values:
        if v.index in seen:
            raise InvalidValue(f"index {v.index} appears more than once", handle=handle_text)
        seen.add(v.index)
    check_record_size(values, handle_text, limits)
    return sort_values(values)


def check_record_size(values: Sequence[HandleValue], handle_text: str, limits: Limits) -> None:
    size = values_size(values)
    if size > limits.max_record_bytes:
        raise InvalidValue(f"the record would be {size} bytes (at most {limits.max_record_bytes})", handle=handle_text)
    if len(values) > limits.max_values:
        raise InvalidValue(
            f"the record would have {len(values)} values (at most {limits.max_values})", handle=handle_text
        )


def merge_values(
    current: Sequence[HandleValue],
    new: Sequence[HandleValue],
    *,
    overwrite: bool,
    handle_text: str,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[HandleValue, ...]:
    """Add or replace ``new`` by index in ``current`` (PUT with ``index=``); 409/201 if not overwriting."""
    merged = {v.index: v for v in current}
    for v in new:
        old = merged.get(v.index)
        if old is not None and not overwrite:
            raise ValueAlreadyExists(f"a value with index {v.index} already exists", handle=handle_text)
        # An unchanged value keeps its timestamp: a no-op write is not a modification.
        merged[v.index] = v.with_timestamp(old.timestamp) if old is not None and old.same_content(v) else v
    result = sort_values(merged.values())
    check_record_size(result, handle_text, limits)
    return result


def keep_timestamps(current: Sequence[HandleValue], new: Sequence[HandleValue]) -> tuple[HandleValue, ...]:
    """Values of a whole-record overwrite, keeping the timestamps of those that did not change."""
    old = {v.index: v for v in current}
    return tuple(
        v.with_timestamp(old[v.index].timestamp) if v.index in old and old[v.index].same_content(v) else v for v in new
    )


def keep_row_timestamps(old: Sequence[Sequence[Any]], new: Sequence[Sequence[Any]]) -> list[list[Any]] | None:
    """``keep_timestamps`` on values in the stored row layout (``codec.value_row``); None when no
    value kept its old timestamp (``new`` stands as it is)."""
    before = {row[0]: row for row in old}
    out, kept = [], False
    for row in new:
        was = before.get(row[0])
        if was is not None and was[5] != row[5] and was[1:5] == row[1:5] and was[6:] == row[6:]:
            out.append([*row[:5], was[5], *row[6:]])
            kept = True
        else:
            out.append(list(row))
    return out if kept else None


def remove_values(
    current: Sequence[HandleValue], indexes: Iterable[int], *, handle_text: str
) -> tuple[HandleValue, ...]:
    """The record without ``indexes``; asking to remove an index that is not there is 200 (values not found)."""
    wanted = set(indexes)
    missing = wanted - {v.index for v in current}
    if missing:
        raise ValuesNotFound(f"no value with index {', '.join(map(str, sorted(missing)))}", handle=handle_text)
    return tuple(v for v in current if v.index not in wanted)


def _type_matches(vtype: str, wanted: str) -> bool:
    # A type ending in "." selects its period-delimited subtypes too (HANDLE.NET §14.5.1).
    if wanted.endswith("."):
        return vtype.upper().startswith(wanted.upper()) or vtype.upper() == wanted[:-1].upper()
    return vtype.upper() == wanted.upper()


def filter_values(
    values: Sequence[HandleValue], types: Sequence[str], indexes: Sequence[int]
) -> tuple[HandleValue, ...]:
    """Values selected by ``type=`` or ``index=`` (the two filters are OR-ed); all when neither is given."""
    if not types and not indexes:
        return tuple(values)
    wanted = set(indexes)
    return tuple(v for v in values if v.index in wanted or any(_type_matches(v.type, t) for t in types))


def public_values(values: Sequence[HandleValue]) -> tuple[HandleValue, ...]:
    """What an unauthenticated client may see: public-read values only."""
    return tuple(v for v in values if v.public_read)
