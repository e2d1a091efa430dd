"""Handle values: the typed entries of a record, validated from and written to HANDLE.NET's JSON shape.

A value's ``data`` is kept in the JSON-compatible form HANDLE.NET uses on the wire (a string for
``string``/``base64``/``hex``, a dict for ``admin`` and ``site``, a list for ``vlist``), normalised on
the way in, so encoding a value for JSON or msgpack is a dict build and nothing more.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resolver.errors import InvalidHandle, InvalidValue
from resolver.limits import DEFAULT_LIMITS, MAX_NESTING, Limits
from resolver.names import parse_handle

__all__ = [
    "DEFAULT_PERMISSIONS",
    "DEFAULT_TTL",
    "FORMATS",
    "HandleValue",
    "Reference",
    "describe",
    "format_timestamp",
    "simple_value_rows",
    "value_from_wire",
    "value_to_wire",
]

DEFAULT_TTL = 86_400  # HANDLE.NET's default: one day
MAX_TTL = 2**31 - 1  # the wire protocol carries TTLs as signed 32-bit integers
MAX_INDEX = 2**31 - 1
# Value permission flags, left to right: admin read, admin write, public read, public write.
DEFAULT_PERMISSIONS = "1110"
SECRET_PERMISSIONS = "1100"  # HS_SECKEY: never public (Technical Manual §3.6)
FORMATS = frozenset({"string", "base64", "hex", "admin", "vlist", "site", "key"})
# Value types whose data is structured, so a bare or format-less value gets the right format.
_TYPE_FORMATS = {
    "HS_ADMIN": "admin",
    "HS_VLIST": "vlist",
    "HS_SITE": "site",
    "HS_SITE.6": "site",
    "HS_SITE.PREFIX": "site",
}
ADMIN_PERMISSION_BITS = 12


@dataclass(frozen=True, slots=True)
class Reference:
    index: int
    handle: str


@dataclass(frozen=True, slots=True)
class HandleValue:
    index: int
    type: str
    format: str
    value: Any  # JSON-compatible, normalised for its format
    ttl: int = DEFAULT_TTL
    timestamp: int = 0  # seconds since the epoch; 0 means "not recorded" and is not shown
    permissions: str = DEFAULT_PERMISSIONS
    references: tuple[Reference, ...] = ()

    @property
    def public_read(self) -> bool:
        return self.permissions[2] == "1"

    @property
    def admin_read(self) -> bool:
        return self.permissions[0] == "1"

    def with_timestamp(self, timestamp: int) -> HandleValue:
        return HandleValue(
            self.index, self.type, self.format, self.value, self.ttl, timestamp, self.permissions, self.references
        )

    def same_content(self, other: HandleValue) -> bool:
        """Equal in everything a client set, whatever the timestamps."""
        return (self.index, self.type, self.format, self.value, self.ttl, self.permissions, self.references) == (
            other.index,
            other.type,
            other.format,
            other.value,
            other.ttl,
            other.permissions,
            other.references,
        )


def format_timestamp(seconds: int) -> str:
    """ISO 8601 UTC without fractions, as HANDLE.NET writes it: ``2026-11-22T08:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def value_to_wire(v: HandleValue) -> dict[str, Any]:
    """The HANDLE.NET JSON form of one value (``permissions`` omitted when it is the usual 1110)."""
    out: dict[str, Any] = {
        "index": v.index,
        "type": v.type,
        "data": {"format": v.format, "value": v.value},
        "ttl": v.ttl,
    }
    if v.timestamp:
        out["timestamp"] = format_timestamp(v.timestamp)
    # Omitted when it is the usual 1110, as HANDLE.NET does; HS_SECKEY defaults to 1100 on the way
    # in, so its permissions are always written out to survive a read-modify-write round trip.
    if v.permissions != DEFAULT_PERMISSIONS or v.type.upper() == "HS_SECKEY":
        out["permissions"] = v.permissions
    if v.references:
        out["references"] = [{"index": r.index, "handle": r.handle} for r in v.references]
    return out


# -- reading values from clients ---------------------------------------------------------------

_SHOWN = 60  # characters of a client's string quoted back in an error message
_SHOWN_BITS = 64  # a larger integer is described, not written out (4,300 digits raise ValueError)


def describe(raw: Any) -> str:
    """A client's value, short, for an error message: JSON for a short scalar, else what it is.

    The one place messages quote what a client sent. Safe for anything a decoder returns: bytes,
    msgpack extension types and timestamps, integers of thousands of digits, deep containers (a
    ``json.dumps`` or ``repr`` of those raises or runs for pages)."""
    if raw is None or type(raw) is bool:
        return "null" if raw is None else str(raw).lower()
    if isinstance(raw, int):
        return str(raw) if raw.bit_length() <= _SHOWN_BITS else f"an integer of {raw.bit_length()} bits"
    if isinstance(raw, float):
        return json.dumps(raw)
    if isinstance(raw, str):
        if len(raw) <= _SHOWN:
            return json.dumps(raw, ensure_ascii=False)
        return json.dumps(raw[:_SHOWN] + "...", ensure_ascii=False) + f" ({len(raw):,} characters)"
    if isinstance(raw, (bytes, bytearray)):
        return f"binary data ({len(raw):,} bytes)"
    if isinstance(raw, list):
        return f"a list of {len(raw):,} items" if raw else "[]"
    if isinstance(raw, Mapping):
        return f"an object of {len(raw):,} members" if raw else "{}"
    return f"a msgpack {type(raw).__name__}"  # ExtType, Timestamp: what else msgpack decodes


def _plain_json(raw: Any, where: str, what: str, depth: int = 0) -> None:
    """Refuse data kept as sent (a JSON Web Key, a site's public key) unless it is plain JSON of
    bounded depth: a msgpack body can carry bytes or extension types, which no JSON answer can
    hold, and a deep value would break the encoder of every answer that includes it."""
    if depth > MAX_NESTING:
        raise _fail(where, f"{what} is nested deeper than {MAX_NESTING} levels")
    if isinstance(raw, Mapping):
        for key, item in raw.items():
            if not isinstance(key, str):
                raise _fail(where, f"{what} must be plain JSON: a member name is {describe(key)}")
            _plain_json(item, where, what, depth + 1)
    elif isinstance(raw, list):
        for item in raw:
            _plain_json(item, where, what, depth + 1)
    elif isinstance(raw, float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise _fail(where, f"{what} must be plain JSON, not {describe(raw)}")
    elif not (raw is None or isinstance(raw, (str, int))):
        raise _fail(where, f"{what} must be plain JSON, not {describe(raw)}")


def _fail(where: str, message: str) -> InvalidValue:
    return InvalidValue(f"{where}: {message}")


def _int(raw: Any, where: str, what: str, *, low: int, high: int) -> int:
    # pyhandle sends the admin index as the string "200"; HANDLE.NET accepts both.
    if isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit():
        digits = raw.strip().lstrip("0")
        if len(digits) > len(str(high)):  # never int() thousands of digits (ValueError past 4,300)
            raise _fail(where, f"{what} {describe(raw)} is out of range ({low} to {high})")
        raw = int(digits or "0")
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise _fail(where, f"{what} must be an integer, not {describe(raw)}")
    if not low <= raw <= high:
        raise _fail(where, f"{what} {describe(raw)} is out of range ({low} to {high})")
    return raw


def _handle_ref(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise _fail(where, f"handle must be a string, not {describe(raw)}")
    try:
        return parse_handle(raw).text
    except InvalidHandle as exc:
        raise _fail(where, exc.message) from exc


def admin_permissions(raw: Any, where: str) -> str:
    """HS_ADMIN permissions as 12 characters of 0/1, rightmost bit 0 (HANDLE.NET ``AdminRecord``)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw < 1 << ADMIN_PERMISSION_BITS:
            raise _fail(where, f"admin permissions {describe(raw)} do not fit in 12 bits")
        return format(raw, "012b")
    if raw == "*":
        return "1" * ADMIN_PERMISSION_BITS
    if not isinstance(raw, str) or not raw or len(raw) > ADMIN_PERMISSION_BITS or set(raw) - {"0", "1"}:
        raise _fail(where, f"admin permissions must be up to 12 characters of 0 and 1, not {describe(raw)}")
    return raw.rjust(ADMIN_PERMISSION_BITS, "0")


def _admin(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise _fail(where, 'admin data must be {"handle", "index", "permissions"}')
    return {
        "handle": _handle_ref(raw.get("handle"), where),
        "index": _int(raw.get("index"), where, "admin index", low=0, high=MAX_INDEX),
        "permissions": admin_permissions(raw.get("permissions", "*"), where),
    }


def _vlist(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _fail(where, 'vlist data must be a list of {"handle", "index"}')
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise _fail(where, f'vlist entry {i} must be {{"handle", "index"}}')
        out.append(
            {
                "handle": _handle_ref(item.get("handle"), where),
                "index": _int(item.get("index"), where, "vlist index", low=0, high=MAX_INDEX),
            }
        )
    return out


def _site(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise _fail(where, "site data must be an object with a list of servers")
    servers = raw.get("servers")
    if not isinstance(servers, list) or not servers:
        raise _fail(where, "site data must list at least one server")
    clean_servers = []
    for i, server in enumerate(servers):
        if not isinstance(server, Mapping) or not isinstance(server.get("address"), str):
            raise _fail(where, f"site server {i} must have an address")
        interfaces = server.get("interfaces")
        if not isinstance(interfaces, list) or not interfaces:
            raise _fail(where, f"site server {i} must list its interfaces")
        clean_interfaces = []
        for iface in interfaces:
            if not isinstance(iface, Mapping) or not isinstance(iface.get("protocol"), str):
                raise _fail(where, f"site server {i}: each interface needs a protocol and a port")
            clean_interfaces.append(
                {
                    "query": bool(iface.get("query", True)),
                    "admin": bool(iface.get("admin", True)),
                    "protocol": iface["protocol"].upper(),
                    "port": _int(iface.get("port"), where, "port", low=1, high=65535),
                }
            )
        clean = {
            "serverId": _int(server.get("serverId", i + 1), where, "serverId", low=0, high=MAX_INDEX),
            "address": server["address"],
            "interfaces": clean_interfaces,
        }
        if "publicKey" in server:
            _plain_json(server["publicKey"], where, f"site server {i} publicKey")
            clean["publicKey"] = server["publicKey"]
        clean_servers.append(clean)
    attributes = raw.get("attributes", [])
    if not isinstance(attributes, list) or not all(
        isinstance(a, Mapping) and isinstance(a.get("name"), str) and isinstance(a.get("value"), str)
        for a in attributes
    ):
        raise _fail(where, 'site attributes must be a list of {"name", "value"} strings')
    protocol_version = raw.get("protocolVersion", "2.10")
    if not isinstance(protocol_version, (str, int, float)) or isinstance(protocol_version, bool):
        raise _fail(where, f'site protocolVersion must be a string such as "2.10", not {describe(protocol_version)}')
    return {
        "version": _int(raw.get("version", 1), where, "site version", low=0, high=MAX_INDEX),
        "protocolVersion": str(protocol_version),
        "serialNumber": _int(raw.get("serialNumber", 1), where, "serialNumber", low=0, high=MAX_INDEX),
        "primarySite": bool(raw.get("primarySite", True)),
        "multiPrimary": bool(raw.get("multiPrimary", False)),
        "attributes": [{"name": a["name"], "value": a["value"]} for a in attributes],
        "servers": clean_servers,
    }


def _data(fmt: str, raw: Any, where: str) -> Any:
    if fmt == "string":
        if not isinstance(raw, str):
            raise _fail(where, f"string data must be a JSON string, not {type(raw).__name__}")
        return raw
    if fmt == "base64":
        if not isinstance(raw, str):
            raise _fail(where, "base64 data must be a string")
        try:
            return base64.b64encode(base64.b64decode(raw, validate=True)).decode("ascii")
        except (binascii.Error, ValueError) as exc:
            raise _fail(where, f"base64 data does not decode ({exc})") from exc
    if fmt == "hex":
        if not isinstance(raw, str):
            raise _fail(where, "hex data must be a string")
        try:
            return bytes.fromhex(raw).hex().upper()
        except ValueError as exc:
            raise _fail(where, "hex data must be pairs of hexadecimal digits") from exc
    if fmt == "admin":
        return _admin(raw, where)
    if fmt == "vlist":
        return _vlist(raw, where)
    if fmt == "site":
        return _site(raw, where)
    # "key": a JSON Web Key, kept as sent, but it must be JSON (a msgpack body could carry bytes).
    if not isinstance(raw, Mapping):
        raise _fail(where, "key data must be a JSON Web Key object")
    _plain_json(raw, where, "key data")
    return dict(raw)


def _encoded_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def value_from_wire(raw: Any, *, position: int, now: int, limits: Limits = DEFAULT_LIMITS) -> HandleValue:
    """Validate one value as a client sent it; ``position`` names it in errors. Timestamp is ``now``."""
    where = f"value {position}"
    if not isinstance(raw, Mapping):
        raise _fail(where, 'each value must be an object with "index", "type" and "data"')
    if "index" in raw:
        where = f"value {position} (index {describe(raw['index'])})"
    if "index" not in raw:
        raise _fail(where, 'missing "index"')
    index = raw["index"]
    if not isinstance(index, int) or isinstance(index, bool):
        raise _fail(where, f"index must be an integer, not {describe(index)}")
    if not 1 <= index <= MAX_INDEX:
        raise _fail(where, "value indexes must be positive")
    vtype = raw.get("type")
    if not isinstance(vtype, str) or not vtype:
        raise _fail(where, 'missing or empty "type"')
    if len(vtype) > limits.max_type_length:
        raise _fail(where, f"type is {len(vtype)} characters long (at most {limits.max_type_length})")
    if not vtype.isprintable():
        raise _fail(where, "type contains a non-printable character")
    if "data" not in raw:
        raise _fail(where, 'missing "data"')
    data = raw["data"]
    if isinstance(data, Mapping):
        fmt = data.get("format") or _TYPE_FORMATS.get(vtype.upper(), "string")
        if "value" not in data:
            raise _fail(where, 'data has no "value"')
        payload = data["value"]
    else:
        # A bare value is accepted, as HANDLE.NET does (Technical Manual §14.8); pyhandle sends these.
        fmt, payload = _TYPE_FORMATS.get(vtype.upper(), "string"), data
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise _fail(where, f"unknown data format {describe(fmt)} (known: {', '.join(sorted(FORMATS))})")
    value = _data(fmt, payload, where)
    try:
        size = _encoded_size(value)
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON "\\ud800" escapes can carry one)
        raise _fail(where, f"data is not valid Unicode: {exc.reason} (character {exc.start + 1})") from exc
    if size > limits.max_value_bytes:
        raise _fail(where, f"data is {size} bytes (at most {limits.max_value_bytes})")
    ttl = raw.get("ttl", DEFAULT_TTL)
    if isinstance(ttl, str) and not (ttl.isascii() and ttl.isdigit()):
        raise _fail(where, f"absolute TTLs are not supported; give seconds, not {describe(ttl)}")
    ttl = _int(ttl, where, "ttl", low=0, high=MAX_TTL)
    default_perms = SECRET_PERMISSIONS if vtype.upper() == "HS_SECKEY" else DEFAULT_PERMISSIONS
    perms = raw.get("permissions", default_perms)
    if not isinstance(perms, str) or len(perms) != 4 or set(perms) - {"0", "1"}:
        raise _fail(
            where,
            f"permissions must be 4 characters of 0 and 1 (admin read, admin write, "
            f"public read, public write), not {describe(perms)}",
        )
    refs_raw = raw.get("references", [])
    if not isinstance(refs_raw, list):
        raise _fail(where, 'references must be a list of {"index", "handle"}')
    refs = tuple(
        Reference(
            _int(r.get("index") if isinstance(r, Mapping) else None, where, "reference index", low=0, high=MAX_INDEX),
            _handle_ref(r.get("handle"), where),
        )
        for r in refs_raw
    )
    return HandleValue(index, vtype, fmt, value, ttl, now, perms, refs)


# -- the common case, fast: bulk registration ---------------------------------------------------

_VALID_PERMISSIONS = frozenset(format(n, "04b") for n in range(16))
# Types value_from_wire treats specially: a structured default format, or HS_SECKEY's permissions.
_SPECIAL_TYPES = frozenset({*_TYPE_FORMATS, "HS_SECKEY"})
_plain_types: dict[str, bool] = {}  # type -> printable and not special (_plain_type); types repeat a lot


def _plain_type(vtype: str) -> bool:
    if len(_plain_types) >= 4096:
        _plain_types.clear()
    known = _plain_types[vtype] = vtype.isprintable() and vtype.upper() not in _SPECIAL_TYPES
    return known


def simple_value_rows(raw_values: Any, now: int, limits: Limits = DEFAULT_LIMITS) -> list[list[Any]] | None:
    """A record's values in the stored row layout (``codec.value_row``) when every one is of the
    common kind, else None; then ``records.parse_put_body`` must decide (it may refuse them).

    The common kind: a list, in increasing index order, of maps with an int ``index``, a short
    printable ``type`` that is none of the structured or secret types, ``data`` a string or
    ``{"format": "string", "value": str}``, and ``ttl``, ``permissions`` and ``references``
    absent or plainly valid. For such a list the rows are exactly ``parse_put_body``'s values
    (tests check this with generated input), at a fraction of the cost: no HandleValue is built.
    """
    if type(raw_values) is not list or len(raw_values) > limits.max_values:
        return None
    rows: list[list[Any]] = []
    last = 0
    total = 0
    max_type, max_value = limits.max_type_length, limits.max_value_bytes
    plain = _plain_types
    for raw in raw_values:
        if type(raw) is not dict:
            return None
        try:
            index, vtype, data = raw["index"], raw["type"], raw["data"]
        except KeyError:
            return None
        if type(index) is not int or not last < index <= MAX_INDEX:
            return None  # also out of order or repeated: parse_put_body sorts and checks those
        last = index
        if type(vtype) is not str or not 0 < len(vtype) <= max_type or not (plain.get(vtype) or _plain_type(vtype)):
            return None
        if type(data) is not str:
            if type(data) is not dict or data.get("format", "string") != "string":
                return None
            data = data.get("value")
            if type(data) is not str:
                return None
        if data.isascii():
            size = len(data)
        else:
            try:
                size = len(data.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate: value_from_wire says what is wrong
                return None
        if size > max_value:
            return None
        total += size + len(vtype) + 32  # as values_size counts it
        if len(raw) == 3:  # index, type and data only: the defaults
            rows.append([index, vtype, "string", data, DEFAULT_TTL, now, DEFAULT_PERMISSIONS, []])
            continue
        ttl = raw.get("ttl", DEFAULT_TTL)
        if type(ttl) is not int or not 0 <= ttl <= MAX_TTL:
            return None
        perms = raw.get("permissions", DEFAULT_PERMISSIONS)
        if type(perms) is not str or perms not in _VALID_PERMISSIONS:
            return None
        refs = raw.get("references")
        if refs is not None and refs != []:
            return None
        rows.append([index, vtype, "string", data, ttl, now, perms, []])
    if total > limits.max_record_bytes:
        return None
    return rows


def values_size(values: Sequence[HandleValue]) -> int:
    """Approximate encoded size of a record's values, for the record size limit."""
    return sum(_encoded_size(v.value) + len(v.type) + 32 for v in values)
