"""Every byte encoding in one place: JSON and msgpack on the wire, msgpack for stored values.

Stored values are packed as compact arrays (``[index, type, format, value, ttl, timestamp,
permissions, references]``) rather than dicts: smaller files and faster loads.

Whatever a body holds, decoding it ends in a value or a ``ProtocolError`` that says what is wrong,
never another exception: containers nested deeper than ``limits.MAX_NESTING`` (Python's parsers
raise RecursionError at about 1,000), JSON integers of more than 4,300 digits (ValueError from
Python's int-string conversion limit), msgpack's StackError.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack

from resolver.errors import ProtocolError, UnsupportedMediaType
from resolver.limits import MAX_NESTING, nested_deeper
from resolver.values import HandleValue, Reference

__all__ = [
    "JSON",
    "MSGPACK",
    "NDJSON",
    "Malformed",
    "batch_operations",
    "choose_media_type",
    "decode",
    "encode",
    "pack_rows",
    "pack_values",
    "row_packer",
    "row_value",
    "unpack_rows",
    "unpack_values",
    "value_row",
]

JSON = "application/json"
MSGPACK = "application/msgpack"
NDJSON = "application/x-ndjson"
_MSGPACK_ALIASES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})


def choose_media_type(accept: str | None) -> str:
    """msgpack when the client asks for it, JSON otherwise (the HANDLE.NET default)."""
    if not accept or "msgpack" not in accept.lower():
        return JSON  # the common case, decided without parsing
    best_json, best_msgpack = 0.0, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in _MSGPACK_ALIASES:
            best_msgpack = max(best_msgpack, q)
        elif media in (JSON, "*/*", "application/*"):
            best_json = max(best_json, q)
    return MSGPACK if best_msgpack > 0 and best_msgpack >= best_json else JSON


def body_media_type(content_type: str | None) -> str:
    """The codec for a request body, from its Content-Type; JSON when none is given."""
    base = (content_type or JSON).split(";")[0].strip().lower()
    if base in _MSGPACK_ALIASES:
        return MSGPACK
    if base in (JSON, "text/json"):
        return JSON
    if base in (NDJSON, "application/jsonl", "application/json-seq"):
        return NDJSON
    raise UnsupportedMediaType(
        f"unsupported Content-Type {content_type!r}: send application/json or application/msgpack"
    )


def encode(obj: Any, media_type: str) -> bytes:
    if media_type == MSGPACK:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode(body: bytes, media_type: str) -> Any:
    """Parse a request body or an upstream answer; malformed input is a ProtocolError that says
    where it broke, and so is one nested deeper than ``MAX_NESTING`` levels."""
    if media_type == MSGPACK:
        doc = _msgpack(body, "request body")
    elif media_type == NDJSON:
        doc = [_json(line, f"line {lineno}") for lineno, line in enumerate(body.split(b"\n"), 1) if line.strip()]
    else:
        doc = _json(body, "request body")
    if nested_deeper(doc):
        raise _too_deep("request body")
    return doc


def _too_deep(what: str) -> ProtocolError:
    return ProtocolError(f"{what} is nested deeper than {MAX_NESTING} levels")


def _msgpack(body: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except msgpack.StackError as exc:  # nested past msgpack's own stack
        raise _too_deep(what) from exc
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"{what} is not valid msgpack: {exc or type(exc).__name__}") from exc


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _json_error(exc, what) from exc


def _json_error(exc: ValueError | RecursionError, what: str, *, line: bool = True) -> ProtocolError:
    """What is wrong with a JSON text, in words (``line``: say the line of a JSONDecodeError)."""
    if isinstance(exc, UnicodeDecodeError):
        return ProtocolError(f"{what} is not UTF-8: {exc}")
    if isinstance(exc, json.JSONDecodeError):
        where = f"line {exc.lineno} column {exc.colno}" if line else f"column {exc.colno}"
        return ProtocolError(f"{what} is not valid JSON: {exc.msg} at {where}")
    if isinstance(exc, RecursionError):
        return _too_deep(what)
    # The int-string conversion limit: Python refuses to read an integer of thousands of digits.
    return ProtocolError(f"{what} holds an integer of more than {sys.get_int_max_str_digits():,} digits")


def value_row(v: HandleValue) -> list[Any]:
    """One value in the stored layout: what ``pack_values`` writes for it."""
    refs = [[r.index, r.handle] for r in v.references]
    return [v.index, v.type, v.format, v.value, v.ttl, v.timestamp, v.permissions, refs]


def row_value(row: Sequence[Any]) -> HandleValue:
    index, vtype, fmt, value, ttl, timestamp, permissions, refs = row
    return HandleValue(index, vtype, fmt, value, ttl, timestamp, permissions, tuple(Reference(i, h) for i, h in refs))


def pack_rows(rows: Sequence[Sequence[Any]], packer: msgpack.Packer | None = None) -> bytes:
    """``pack_values`` for values already in the stored layout (``value_row``): the same bytes.

    ``packer`` (from ``row_packer``) saves setting one up per call, a third of the time for a small
    record; it must not be shared between threads."""
    if packer is None:
        return msgpack.packb(rows, use_bin_type=True)  # type: ignore[no-any-return]
    return packer.pack(rows)  # type: ignore[no-any-return]


def row_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True)


def unpack_rows(blob: bytes) -> list[list[Any]]:
    """The stored layout of a ``pack_values`` blob, as lists (no HandleValue built)."""
    return msgpack.unpackb(blob, raw=False)  # type: ignore[no-any-return]


# -- bulk registration bodies (POST /api/batch) --------------------------------------------------

_BATCH_SHAPE = 'the body must be {"operations": [...]} or an array of operations'


class Malformed:
    """An NDJSON line that is not JSON: that operation alone fails."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise ProtocolError(f"a batch holds at most {limit:,} operations, this one has {count:,}: split it")


def _bad_msgpack(exc: Exception) -> ProtocolError:
    if isinstance(exc, msgpack.StackError):
        return _too_deep("request body")
    return ProtocolError(f"request body is not valid msgpack: {exc or type(exc).__name__}")


def _msgpack_kind(first: int) -> str:
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "map"
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        return "array"
    return "other"


def _msgpack_operations(body: bytes, limit: int) -> tuple[int, Iterator[Any]]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(body), 1))
    unpacker.feed(body)
    rest = 0  # map entries after "operations", skipped at the end
    try:
        if _msgpack_kind(body[0]) == "map":
            entries = unpacker.read_map_header()
            for seen in range(entries):
                if unpacker.unpack() == "operations":
                    rest = entries - seen - 1
                    break
                unpacker.skip()
            else:
                raise ProtocolError(_BATCH_SHAPE)
        if _msgpack_kind(body[unpacker.tell()]) != "array":
            raise ProtocolError(_BATCH_SHAPE)
        count: int = unpacker.read_array_header()
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise _bad_msgpack(exc) from exc
    _check_count(count, limit)

    def items() -> Iterator[Any]:
        try:
            for _ in range(count):
                yield unpacker.unpack()
            for _ in range(2 * rest):
                unpacker.skip()
            if unpacker.tell() != len(body):
                raise ValueError(f"{len(body) - unpacker.tell()} bytes of extra data after the operations")
        except Exception as exc:
            raise _bad_msgpack(exc) from exc

    return count, items()


def _ndjson_line(line: bytes, number: int) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:
        return Malformed(_json_error(exc, f"line {number}", line=False).message)


def batch_operations(body: bytes, media: str, limit: int) -> tuple[int, Iterator[Any]]:
    """How many operations a batch body holds and the raw operations, decoded as they are taken.

    msgpack and JSON: ``{"operations": [...]}`` or a bare array; NDJSON: one per non-blank line, a
    line that is not JSON is a ``Malformed`` in its place. More than ``limit`` is a ProtocolError
    before any operation is decoded (msgpack: from the array header); so is a malformed body,
    raised when the iteration reaches the damage.
    """
    if media == MSGPACK:
        return _msgpack_operations(body, limit)
    if media == NDJSON:
        lines = [(number, line) for number, line in enumerate(body.split(b"\n"), 1) if line.strip()]
        _check_count(len(lines), limit)
        return len(lines), (_ndjson_line(line, number) for number, line in lines)
    doc = _json(body, "request body")  # operations are checked one by one: no walk of a whole bulk load
    ops = doc.get("operations") if isinstance(doc, dict) else doc
    if not isinstance(ops, list):
        raise ProtocolError(_BATCH_SHAPE)
    _check_count(len(ops), limit)
    return len(ops), iter(ops)


# -- stored values ----------------------------------------------------------------------------------


def pack_values(values: Sequence[HandleValue]) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [
            [
                v.index,
                v.type,
                v.format,
                v.value,
                v.ttl,
                v.timestamp,
                v.permissions,
                [[r.index, r.handle] for r in v.references],
            ]
            for v in values
        ],
        use_bin_type=True,
    )


def unpack_values(blob: bytes) -> tuple[HandleValue, ...]:
    return tuple(
        HandleValue(i, t, f, val, ttl, ts, perms, tuple(Reference(ri, rh) for ri, rh in refs))
        for i, t, f, val, ttl, ts, perms, refs in msgpack.unpackb(blob, raw=False)
    )
