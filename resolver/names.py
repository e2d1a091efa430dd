"""Identifier grammar: parse, check and normalise handles, prefixes and INDEX:HANDLE identities."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from resolver.errors import InvalidHandle

__all__ = [
    "MAX_HANDLE_LENGTH",
    "MAX_PREFIX_LENGTH",
    "MAX_PREFIX_SEGMENTS",
    "NATIONAL_PREFIX",
    "PREFIX_NA",
    "Handle",
    "ancestors",
    "format_identity",
    "is_under",
    "parent_prefix",
    "parse_handle",
    "parse_identity",
    "parse_prefix",
    "prefix_handle",
]

NATIONAL_PREFIX = "88"
PREFIX_NA = "0.NA"
MAX_HANDLE_LENGTH = 255
MAX_PREFIX_LENGTH = 64
MAX_PREFIX_SEGMENTS = 8

# Largest handle value index: HANDLE.NET stores indexes in a Java ``int``.
_MAX_INDEX = 2**31 - 1
_MAX_INDEX_TEXT = str(_MAX_INDEX)

# A whole valid prefix (length is checked separately). Explicit ASCII classes: ``\d`` and ``\w``
# would also match non-ASCII digits and letters.
_PREFIX_RE = re.compile(re.escape(NATIONAL_PREFIX) + rf"(?:\.[0-9A-Za-z-]+){{0,{MAX_PREFIX_SEGMENTS - 1}}}")
_SEGMENT_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")
_DIGITS = frozenset("0123456789")
_ALLOWED_IN_SEGMENT = '(only ASCII letters, digits and "-" are allowed)'


@dataclass(frozen=True, slots=True)
class Handle:
    """A parsed identifier; build it with :func:`parse_handle` (the constructor does not check)."""

    text: str
    """Exactly as the client sent it (responses echo this byte for byte)."""
    prefix: str
    """Normalised prefix of the identifier: ``"88.118.8"``, or ``"0.NA"`` for a prefix handle."""
    suffix: str
    """The suffix as sent; for a prefix handle, the normalised prefix it names."""

    @property
    def key(self) -> str:
        """Canonical storage key: ``prefix/suffix``, normalised."""
        return f"{self.prefix}/{self.suffix}"

    @property
    def is_prefix_handle(self) -> bool:
        """Whether this is ``0.NA/<prefix>``, the handle naming a prefix."""
        return self.prefix == PREFIX_NA

    @property
    def zone(self) -> str:
        """The prefix whose authority governs this handle (the named prefix for a prefix handle)."""
        return self.suffix if self.prefix == PREFIX_NA else self.prefix


def parse_handle(text: str) -> Handle:
    """Parse ``PREFIX/SUFFIX``, split at the first "/"; raise InvalidHandle if it is malformed."""
    if len(text) > MAX_HANDLE_LENGTH:
        raise InvalidHandle(f"identifier is {len(text)} characters long (at most {MAX_HANDLE_LENGTH})", handle=text)
    head, slash, suffix = text.partition("/")
    if not slash:
        if not text:
            raise InvalidHandle("empty identifier", handle=text)
        raise InvalidHandle(f'{_quote(text)}: no "/" between prefix and suffix', handle=text)
    if len(head) == len(PREFIX_NA) and head.upper() == PREFIX_NA:
        if not suffix:
            raise InvalidHandle("empty suffix", handle=text)
        if len(suffix) <= MAX_PREFIX_LENGTH and _PREFIX_RE.fullmatch(suffix) is not None:
            return Handle(text, PREFIX_NA, suffix.upper())
        raise InvalidHandle(
            "the suffix of a prefix handle must be a valid prefix, but " + _prefix_problem(suffix),
            handle=text,
        )
    if len(head) > MAX_PREFIX_LENGTH or _PREFIX_RE.fullmatch(head) is None:
        raise InvalidHandle(_prefix_problem(head), handle=text)
    if not suffix:
        raise InvalidHandle("empty suffix", handle=text)
    if not suffix.isprintable():
        raise InvalidHandle(_suffix_problem(suffix), handle=text)
    return Handle(text, head.upper(), suffix)


def parse_prefix(text: str) -> str:
    """Check a bare prefix ("88.118") or a prefix handle ("0.NA/88.118"); return the bare prefix.

    The result is normalised (upper case).
    """
    if len(text) <= MAX_PREFIX_LENGTH and _PREFIX_RE.fullmatch(text) is not None:
        return text.upper()
    head, slash, _ = text.partition("/")
    if not slash:
        raise InvalidHandle(_prefix_problem(text), handle=text)
    if len(head) == len(PREFIX_NA) and head.upper() == PREFIX_NA:
        return parse_handle(text).suffix
    raise InvalidHandle(
        f'a prefix cannot contain "/" (only a prefix handle, "{PREFIX_NA}/<prefix>", can)',
        handle=text,
    )


def prefix_handle(prefix: str) -> str:
    """The prefix handle naming ``prefix``: "88.118" -> "0.NA/88.118" (validated and normalised)."""
    return f"{PREFIX_NA}/{parse_prefix(prefix)}"


def parent_prefix(prefix: str) -> str | None:
    """The prefix ``prefix`` derives from ("88.118.8" -> "88.118"); None for a top-level one."""
    parent, dot, _ = prefix.rpartition(".")
    return parent if dot else None


def ancestors(prefix: str) -> tuple[str, ...]:
    """``prefix`` and every prefix above it, nearest first: ("88.118.8", "88.118", "88")."""
    chain = [prefix]
    end = prefix.rfind(".")
    while end != -1:
        chain.append(prefix[:end])
        end = prefix.rfind(".", 0, end)
    return tuple(chain)


def is_under(prefix: str, ancestor: str) -> bool:
    """Whether ``prefix`` is ``ancestor`` or derived from it, segment-wise; both normalised."""
    return prefix == ancestor or (prefix.startswith(ancestor) and prefix[len(ancestor) : len(ancestor) + 1] == ".")


def parse_identity(text: str) -> tuple[int, Handle]:
    """Parse ``INDEX:HANDLE``, split at the first ":": "300:0.NA/88.118.8" -> (300, Handle)."""
    index_text, colon, handle_text = text.partition(":")
    if not colon:
        raise InvalidHandle(
            'no ":" between index and handle in identity (expected INDEX:HANDLE, e.g. "300:0.NA/88.1")',
            handle=text,
        )
    if not index_text:
        raise InvalidHandle('empty index before ":" in identity', handle=text)
    for position, char in enumerate(index_text, 1):
        if char not in _DIGITS:
            raise InvalidHandle(
                "identity index must be a non-negative decimal integer, but contains "
                f"{_describe_char(char)} at position {position}",
                handle=text,
            )
    digits = index_text.lstrip("0") or "0"
    # Compare lengths first so that int() never sees a huge digit string.
    if len(digits) > len(_MAX_INDEX_TEXT) or int(digits) > _MAX_INDEX:
        raise InvalidHandle(f"identity index is too large (at most {_MAX_INDEX})", handle=text)
    try:
        handle = parse_handle(handle_text)
    except InvalidHandle as exc:
        raise InvalidHandle(f"invalid handle in identity: {exc.message}", handle=text) from exc
    return int(digits), handle


def format_identity(index: int, handle: str) -> str:
    """Write an identity: (300, "0.NA/88.1") -> "300:0.NA/88.1"; ``handle`` is used as given."""
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"identity index {index} is out of range (0 to {_MAX_INDEX})")
    return f"{index}:{handle}"


# --- error messages (only on the slow path) -------------------------------------------------------


def _prefix_problem(prefix: str) -> str:
    """Say what is wrong with a prefix that failed the fast check."""
    if not prefix:
        return "empty prefix"
    if len(prefix) > MAX_PREFIX_LENGTH:
        return f"prefix is {len(prefix)} characters long (at most {MAX_PREFIX_LENGTH})"
    segments = prefix.split(".")
    if len(segments) > MAX_PREFIX_SEGMENTS:
        return f"prefix has {len(segments)} segments (at most {MAX_PREFIX_SEGMENTS})"
    for number, segment in enumerate(segments, 1):
        if not segment:
            return f"prefix segment {number} of {_quote(prefix)} is empty"
        for char in segment:
            if char not in _SEGMENT_CHARS:
                return f"prefix segment {_quote(segment)} contains {_describe_char(char)} " + _ALLOWED_IN_SEGMENT
    # Well-formed, so the only rule left that the fast check enforces is the national prefix.
    first = _quote(segments[0])
    return f"prefix must start with the national prefix {NATIONAL_PREFIX}, not {first}"


def _suffix_problem(suffix: str) -> str:
    """Say which character makes a suffix unprintable (positions count from 1)."""
    for position, char in enumerate(suffix, 1):
        if not char.isprintable():
            return f"suffix contains {_describe_char(char)} at position {position}"
    raise AssertionError("suffix is printable")  # pragma: no cover


_UNPRINTABLE_KINDS = {
    "Cc": "the control character",
    "Cf": "the invisible formatting character",
    "Cs": "the lone surrogate",
    "Co": "the private-use character",
    "Cn": "the unassigned code point",
    "Zl": "the line separator",
    "Zp": "the paragraph separator",
    "Zs": "the non-ASCII space",
}


def _describe_char(char: str) -> str:
    """Name a character for a message: '"_"', 'a space', 'the control character U+0007'."""
    code = f"U+{ord(char):04X}"
    if char == " ":
        return "a space"
    if char == '"':
        return "a double quote"
    if char == "\\":
        return "a backslash"
    if not char.isprintable():
        kind = _UNPRINTABLE_KINDS.get(unicodedata.category(char), "the unprintable character")
        return f"{kind} {code}"
    if char.isascii():
        return f'"{char}"'
    return f'"{char}" ({code})'


def _quote(text: str) -> str:
    """Double-quote text for a message, escaping quotes, backslashes and unprintable characters."""
    parts = ['"']
    for char in text:
        if char in '"\\':
            parts.append("\\" + char)
        elif char.isprintable():
            parts.append(char)
        elif ord(char) <= 0xFFFF:
            parts.append(f"\\u{ord(char):04x}")
        else:
            parts.append(f"\\U{ord(char):08x}")
    parts.append('"')
    return "".join(parts)
