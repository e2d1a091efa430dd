"""Every byte encoding in one place: JSON and msgpack on the wire, msgpack for stored values.

Stored values are packed as compact arrays (``[index, type, format, value, ttl, timestamp,
permissions, references]``) rather than dicts: smaller files and faster loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgpack

from resolver.errors import ProtocolError, UnsupportedMediaType
from resolver.values import HandleValue, Reference

__all__ = [
    "JSON",
    "MSGPACK",
    "NDJSON",
    "choose_media_type",
    "decode",
    "encode",
    "pack_values",
    "unpack_values",
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
    """Parse a request body; malformed input is a ProtocolError that says where it broke."""
    if media_type == MSGPACK:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(f"request body is not valid msgpack: {exc}") from exc
    if media_type == NDJSON:
        items = []
        for lineno, line in enumerate(body.split(b"\n"), 1):
            if line.strip():
                items.append(_json(line, f"line {lineno}"))
        return items
    return _json(body, "request body")


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


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
