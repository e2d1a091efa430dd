"""Authentication and authorisation rules: Basic credentials, hashed HS_SECKEY, HS_ADMIN and HS_VLIST.

HANDLE.NET's Basic scheme (Technical Manual §14.6) sends ``base64("INDEX%3AHANDLE:SECRET")``; the
identity is checked against the HS_SECKEY value at INDEX of HANDLE. We never store the secret itself:
an HS_SECKEY value holds ``pbkdf2-sha256$ITERATIONS$SALT$HASH``.

Authorisation follows HS_ADMIN values (Technical Manual §3.6, ``AdminRecord``): each names an admin
reference ``INDEX:HANDLE`` and a 12-bit permission mask; a reference to an HS_VLIST value is a group
whose members are references in turn. Record lookups are injected, so these rules do no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from resolver.errors import AuthenticationFailed, InvalidHandle
from resolver.names import parse_handle, parse_identity
from resolver.records import Record
from resolver.values import HandleValue

__all__ = [
    "Identity",
    "Perm",
    "admin_grants",
    "hash_secret",
    "hash_secret_values",
    "is_hashed",
    "parse_basic",
    "verify_secret",
]

_SCHEME = "pbkdf2-sha256"
# OWASP suggests 600,000 for PBKDF2-SHA256; 200,000 costs ~60 ms here. Verification runs in a worker
# thread and successful checks are cached, so the cost falls on the first request of a client only.
PBKDF2_ITERATIONS = 200_000
# An HS_VLIST may name another HS_VLIST; groups nested deeper than this are a loop or a mistake.
MAX_VLIST_DEPTH = 8


class Perm:
    """HS_ADMIN permission bits; bit 0 is the rightmost character of the 12-character mask."""

    ADD_HANDLE = 0
    DELETE_HANDLE = 1
    ADD_DERIVED_PREFIX = 2
    DELETE_DERIVED_PREFIX = 3
    MODIFY_VALUE = 4
    REMOVE_VALUE = 5
    ADD_VALUE = 6
    MODIFY_ADMIN = 7
    REMOVE_ADMIN = 8
    ADD_ADMIN = 9
    READ_VALUE = 10
    LIST_HANDLES = 11

    NAMES = (
        "add handle",
        "delete handle",
        "add derived prefix",
        "delete derived prefix",
        "modify value",
        "remove value",
        "add value",
        "modify admin",
        "remove admin",
        "add admin",
        "read value",
        "list handles",
    )


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated client: the HS_SECKEY at ``index`` of the handle with canonical ``key``."""

    index: int
    key: str
    text: str  # as the client wrote it, for messages

    def __str__(self) -> str:
        return f"{self.index}:{self.text}"


def hash_secret(secret: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
    return "$".join((_SCHEME, str(iterations), base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


# A stored hash with a huge iteration count would make every login attempt against it burn a worker
# thread for seconds (1,999,999 was accepted: issue 11, finding 10); such a value is not accepted as a
# hash (it is hashed as a secret when written) and verifies nothing, without being run. Twice the
# count we hash with leaves room to raise that count once and still verify the older hashes.
MAX_STORED_ITERATIONS = 2 * PBKDF2_ITERATIONS


def is_hashed(stored: object) -> bool:
    if not isinstance(stored, str) or stored.count("$") != 3:
        return False
    scheme, iterations, _, _ = stored.split("$")
    return (
        scheme == _SCHEME
        and iterations.isascii()
        and iterations.isdigit()
        and 1_000 <= int(iterations) <= MAX_STORED_ITERATIONS
    )


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a ``hash_secret`` string; False for anything malformed."""
    if not is_hashed(stored):
        return False
    try:
        _, iterations, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), base64.b64decode(salt), int(iterations))
    except (ValueError, OverflowError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def hash_secret_values(values: Iterable[HandleValue]) -> tuple[HandleValue, ...]:
    """Replace the clear text of string HS_SECKEY values with their hash, before anything is stored."""
    out = []
    for v in values:
        if v.type.upper() == "HS_SECKEY" and v.format == "string" and not is_hashed(v.value):
            v = HandleValue(
                v.index, v.type, v.format, hash_secret(v.value), v.ttl, v.timestamp, v.permissions, v.references
            )
        out.append(v)
    return tuple(out)


def parse_basic(header: str) -> tuple[Identity, str]:
    """(identity, secret) from ``Authorization: Basic ...``; the user is ``INDEX%3AHANDLE`` (split at the
    first raw colon, then percent-decoded, as HANDLE.NET's ``authenticateViaBasic`` does)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise AuthenticationFailed(f"unsupported authorization scheme {scheme!r}: use Basic")
    try:
        # b64decode raises ValueError for a token that is not ASCII (``Basic é``), binascii.Error
        # (a ValueError too) for bad base64, UnicodeDecodeError (also one) for bytes that are not UTF-8.
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError as exc:
        raise AuthenticationFailed(
            "the Basic credentials cannot be read: they are not valid base64 of UTF-8 text"
        ) from exc
    user, sep, secret = decoded.partition(":")
    if not sep:
        raise AuthenticationFailed("the Basic credentials have no ':' between user and secret")
    try:
        index, handle = parse_identity(unquote(user))
    except InvalidHandle as exc:
        raise AuthenticationFailed(
            f"the user must be INDEX:HANDLE with the colon written %3A, e.g. 300%3A0.NA/88.118.8 ({exc.message})"
        ) from exc
    return Identity(index, handle.key, handle.text), secret


def _key(handle_text: str) -> str | None:
    try:
        return parse_handle(handle_text).key
    except InvalidHandle:
        return None


LookupRecord = Callable[[str], Awaitable[Record | None]]


async def _refers_to(
    identity: Identity,
    ref_key: str | None,
    ref_index: int,
    lookup: LookupRecord,
    depth: int,
    seen: set[tuple[str, int]],
) -> bool:
    if ref_key is None:
        return False
    if ref_key == identity.key and ref_index in (0, identity.index):
        return True
    if depth >= MAX_VLIST_DEPTH or (ref_key, ref_index) in seen:
        return False
    seen.add((ref_key, ref_index))
    record = await lookup(ref_key)
    if record is None:
        return False
    for v in record.values:
        if v.type.upper() == "HS_VLIST" and v.format == "vlist" and ref_index in (0, v.index):
            for member in v.value:
                if await _refers_to(identity, _key(member["handle"]), member["index"], lookup, depth + 1, seen):
                    return True
    return False


async def admin_grants(
    identity: Identity, permission: int, admin_values: Sequence[HandleValue], lookup: LookupRecord
) -> bool:
    """Whether one of ``admin_values`` (HS_ADMIN values) gives ``identity`` the ``permission`` bit."""
    seen: set[tuple[str, int]] = set()
    for v in admin_values:
        if v.type.upper() != "HS_ADMIN" or v.format != "admin":
            continue
        mask: str = v.value["permissions"]
        if mask[len(mask) - 1 - permission] != "1":
            continue
        if await _refers_to(identity, _key(v.value["handle"]), v.value["index"], lookup, 0, seen):
            return True
    return False
