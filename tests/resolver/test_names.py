"""Tests for the identifier grammar in resolver.names."""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable
from typing import Final

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from resolver.errors import InvalidHandle
from resolver.names import (
    MAX_HANDLE_LENGTH,
    MAX_PREFIX_LENGTH,
    MAX_PREFIX_SEGMENTS,
    NATIONAL_PREFIX,
    PREFIX_NA,
    Handle,
    ancestors,
    format_identity,
    is_under,
    parent_prefix,
    parse_handle,
    parse_identity,
    parse_prefix,
    prefix_handle,
)

ONLY = '(only ASCII letters, digits and "-" are allowed)'
BAD_INDEX = "identity index must be a non-negative decimal integer, but contains "
NOT_PREFIX = "the suffix of a prefix handle must be a valid prefix, but "


def rejected(parse: Callable[[str], object], text: str) -> str:
    """Assert that ``parse(text)`` raises InvalidHandle (102, HTTP 400); return its message."""
    with pytest.raises(InvalidHandle) as info:
        parse(text)
    error = info.value
    assert error.response_code == 102
    assert error.http_status == 400
    assert error.handle == text
    assert str(error) == error.message
    return error.message


# --- strategies -----------------------------------------------------------------------------------

SEGMENT_CHARS = string.ascii_letters + string.digits + "-"
segments = st.text(SEGMENT_CHARS, min_size=1, max_size=10)
prefixes = st.lists(segments, max_size=MAX_PREFIX_SEGMENTS - 1).map(lambda rest: ".".join([NATIONAL_PREFIX, *rest]))
prefixes = prefixes.filter(lambda p: len(p) <= MAX_PREFIX_LENGTH)
normalised_prefixes = prefixes.map(str.upper)
UNPRINTABLE_CATEGORIES: Final = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
printable_chars = st.characters(exclude_categories=UNPRINTABLE_CATEGORIES, include_characters=" ")
suffixes = st.text(printable_chars, min_size=1, max_size=40)
unprintable_chars = st.characters(categories=UNPRINTABLE_CATEGORIES, exclude_characters=" ")


@st.composite
def identifiers(draw: st.DrawFn) -> tuple[str, str]:
    """A valid (prefix, suffix) pair whose identifier fits in MAX_HANDLE_LENGTH."""
    prefix = draw(prefixes)
    suffix = draw(suffixes)
    assume(len(prefix) + 1 + len(suffix) <= MAX_HANDLE_LENGTH)
    return prefix, suffix


def flip_case(text: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if f else c for c, f in zip(text, flips, strict=True))


# --- valid identifiers: echo and normalisation ----------------------------------------------------


def test_ordinary_handle_keeps_text_and_normalises_prefix() -> None:
    handle = parse_handle("88.abc.8/VIN-001/x:y")
    assert handle == Handle("88.abc.8/VIN-001/x:y", "88.ABC.8", "VIN-001/x:y")
    assert handle.key == "88.ABC.8/VIN-001/x:y"
    assert handle.zone == "88.ABC.8"
    assert not handle.is_prefix_handle


def test_suffix_is_split_at_first_slash_and_kept_verbatim() -> None:
    handle = parse_handle("88.1/ a/B /Ünïcode 中文 ")
    assert handle.prefix == "88.1"
    assert handle.suffix == " a/B /Ünïcode 中文 "


def test_national_prefix_alone_is_a_valid_prefix() -> None:
    assert parse_handle("88/x").key == "88/x"


def test_suffix_case_distinguishes_handles() -> None:
    assert parse_handle("88.a/Vin").key != parse_handle("88.a/vin").key
    assert parse_handle("88.a/Vin").key == parse_handle("88.A/Vin").key


def test_limits_are_inclusive() -> None:
    prefix = "88." + "a" * (MAX_PREFIX_LENGTH - 3)
    assert parse_prefix(prefix) == prefix.upper()
    longest = prefix + "/" + "x" * (MAX_HANDLE_LENGTH - len(prefix) - 1)
    assert len(longest) == MAX_HANDLE_LENGTH
    assert parse_handle(longest).text == longest
    eight = "88.1.2.3.4.5.6.7"
    assert parse_prefix(eight) == eight


def test_prefix_handle_is_normalised() -> None:
    handle = parse_handle("0.na/88.abc")
    assert handle.text == "0.na/88.abc"
    assert handle.prefix == PREFIX_NA
    assert handle.suffix == "88.ABC"
    assert handle.key == "0.NA/88.ABC"
    assert handle.is_prefix_handle
    assert handle.zone == "88.ABC"


def test_handle_under_a_prefix_named_like_0_na_is_not_a_prefix_handle() -> None:
    # "0.NA.1" is a prefix of its own (and not under 88), not the 0.NA namespace.
    assert rejected(parse_handle, "0.NA.1/88") == ('prefix must start with the national prefix 88, not "0"')


# --- error messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("88.118.8VIN-001", '"88.118.8VIN-001": no "/" between prefix and suffix'),
        ("", "empty identifier"),
        ("/abc", "empty prefix"),
        ("88.1/", "empty suffix"),
        ("88..8/x", 'prefix segment 2 of "88..8" is empty'),
        (".88/x", 'prefix segment 1 of ".88" is empty'),
        ("88.118./x", 'prefix segment 3 of "88.118." is empty'),
        ("88.ab_c/x", f'prefix segment "ab_c" contains "_" {ONLY}'),
        ("88.a b/x", f'prefix segment "a b" contains a space {ONLY}'),
        ('88.a"/x', f'prefix segment "a\\"" contains a double quote {ONLY}'),
        ("88.a\\b/x", f'prefix segment "a\\\\b" contains a backslash {ONLY}'),
        ("88.café/x", f'prefix segment "café" contains "é" (U+00E9) {ONLY}'),
        ("88.a\x07/x", f'prefix segment "a\\u0007" contains the control character U+0007 {ONLY}'),
        ("88.1.2.3.4.5.6.7.8/x", "prefix has 9 segments (at most 8)"),
        ("88." + "a" * 67 + "/x", "prefix is 70 characters long (at most 64)"),
        ("88.1/" + "x" * 295, "identifier is 300 characters long (at most 255)"),
        ("20.1/x", 'prefix must start with the national prefix 88, not "20"'),
        ("888/x", 'prefix must start with the national prefix 88, not "888"'),
        ("88.118/ab\x07c", "suffix contains the control character U+0007 at position 3"),
        ("88.1/a\u2028", "suffix contains the line separator U+2028 at position 2"),
        ("88.1/\u2029", "suffix contains the paragraph separator U+2029 at position 1"),
        ("88.1/\ud800x", "suffix contains the lone surrogate U+D800 at position 1"),
        ("88.1/a\u00a0b", "suffix contains the non-ASCII space U+00A0 at position 2"),
        ("88.1/a\u200b", "suffix contains the invisible formatting character U+200B at position 2"),
        ("88.1/ok\tno\n", "suffix contains the control character U+0009 at position 3"),
        ("0.NA/", "empty suffix"),
        ("0.NA/88.118/x", NOT_PREFIX + f'prefix segment "118/x" contains "/" {ONLY}'),
        ("0.na/20.1", NOT_PREFIX + 'prefix must start with the national prefix 88, not "20"'),
        ("0.NA/88..1", NOT_PREFIX + 'prefix segment 2 of "88..1" is empty'),
        ("0.NA/88." + "a" * 70, NOT_PREFIX + "prefix is 73 characters long (at most 64)"),
    ],
)
def test_parse_handle_error_messages(text: str, message: str) -> None:
    assert rejected(parse_handle, text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty prefix"),
        ("88.118/x", 'a prefix cannot contain "/" (only a prefix handle, "0.NA/<prefix>", can)'),
        ("x" * 1000, "prefix is 1000 characters long (at most 64)"),
        ("0.NA", 'prefix must start with the national prefix 88, not "0"'),
        ("88.", 'prefix segment 2 of "88." is empty'),
        ("88.1\n", f'prefix segment "1\\u000a" contains the control character U+000A {ONLY}'),
        ("0.NA/88.1/x", NOT_PREFIX + f'prefix segment "1/x" contains "/" {ONLY}'),
        ("0.NA/", "empty suffix"),
    ],
)
def test_parse_prefix_error_messages(text: str, message: str) -> None:
    assert rejected(parse_prefix, text) == message


# --- prefixes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("88.abc", "88.ABC"), ("88", "88"), ("0.NA/88.118", "88.118"), ("0.na/88.x-y", "88.X-Y")],
)
def test_parse_prefix_accepts_bare_prefixes_and_prefix_handles(text: str, expected: str) -> None:
    assert parse_prefix(text) == expected


def test_prefix_handle() -> None:
    assert prefix_handle("88.118") == "0.NA/88.118"
    assert prefix_handle("88.abc") == "0.NA/88.ABC"
    assert prefix_handle("0.na/88.abc") == "0.NA/88.ABC"
    assert rejected(prefix_handle, "88.118/x").startswith('a prefix cannot contain "/"')


def test_parent_and_ancestors() -> None:
    assert parent_prefix("88.118.8") == "88.118"
    assert parent_prefix("88.118") == "88"
    assert parent_prefix("88") is None
    assert ancestors("88.118.8") == ("88.118.8", "88.118", "88")
    assert ancestors("88") == ("88",)


@pytest.mark.parametrize(
    ("prefix", "ancestor", "expected"),
    [
        ("88.118.8", "88.118", True),
        ("88.118.8", "88", True),
        ("88.1", "88.1", True),
        ("88.11", "88.1", False),
        ("88.1", "88.11", False),
        ("88", "88.1", False),
        ("88.1-2", "88.1", False),
    ],
)
def test_is_under(prefix: str, ancestor: str, expected: bool) -> None:
    assert is_under(prefix, ancestor) is expected


# --- identities -----------------------------------------------------------------------------------


def test_parse_identity() -> None:
    assert parse_identity("300:0.NA/88.118.8") == (300, Handle("0.NA/88.118.8", "0.NA", "88.118.8"))
    index, handle = parse_identity("0:88.118.8/ADMIN")
    assert index == 0
    assert handle.key == "88.118.8/ADMIN"
    assert parse_identity("0300:88.1/a:b") == (300, Handle("88.1/a:b", "88.1", "a:b"))
    assert parse_identity("2147483647:88/x")[0] == 2**31 - 1
    assert parse_identity("300:0.na/88.abc")[1].key == "0.NA/88.ABC"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "300",
            'no ":" between index and handle in identity (expected INDEX:HANDLE, e.g. "300:0.NA/88.1")',
        ),
        (":88/x", 'empty index before ":" in identity'),
        (
            "-1:88/x",
            BAD_INDEX + '"-" at position 1',
        ),
        (
            "+1:88/x",
            BAD_INDEX + '"+" at position 1',
        ),
        (
            "3 :88/x",
            BAD_INDEX + "a space at position 2",
        ),
        (
            "\u0663:88/x",
            BAD_INDEX + '"\u0663" (U+0663) at position 1',
        ),
        ("2147483648:88/x", "identity index is too large (at most 2147483647)"),
        ("9" * 5000 + ":88/x", "identity index is too large (at most 2147483647)"),
        ("300:88.1", 'invalid handle in identity: "88.1": no "/" between prefix and suffix'),
        ("300:", "invalid handle in identity: empty identifier"),
        (
            "300:20/x",
            'invalid handle in identity: prefix must start with the national prefix 88, not "20"',
        ),
    ],
)
def test_parse_identity_error_messages(text: str, message: str) -> None:
    assert rejected(parse_identity, text) == message


def test_format_identity() -> None:
    assert format_identity(300, "0.NA/88.118.8") == "300:0.NA/88.118.8"
    assert format_identity(0, "88.1/x") == "0:88.1/x"
    with pytest.raises(ValueError, match="out of range"):
        format_identity(-1, "88.1/x")
    with pytest.raises(ValueError, match="out of range"):
        format_identity(2**31, "88.1/x")


# --- properties -----------------------------------------------------------------------------------


@given(identifiers())
def test_every_valid_identifier_parses_and_its_key_is_canonical(pair: tuple[str, str]) -> None:
    prefix, suffix = pair
    text = f"{prefix}/{suffix}"
    handle = parse_handle(text)
    assert handle.text == text
    assert handle.prefix == prefix.upper()
    assert handle.suffix == suffix
    assert parse_handle(handle.key).key == handle.key
    assert handle.zone == handle.prefix


@given(prefixes, suffixes, st.data())
def test_prefix_case_variants_give_the_same_key(prefix: str, suffix: str, data: st.DataObject) -> None:
    assume(len(prefix) + 1 + len(suffix) <= MAX_HANDLE_LENGTH)
    flips = data.draw(st.lists(st.booleans(), min_size=len(prefix), max_size=len(prefix)))
    variant = flip_case(prefix, flips)
    original, changed = parse_handle(f"{prefix}/{suffix}"), parse_handle(f"{variant}/{suffix}")
    assert original.key == changed.key
    assert changed.text == f"{variant}/{suffix}"
    assert parse_prefix(variant) == parse_prefix(prefix) == prefix.upper()
    assert parse_handle(f"{PREFIX_NA.lower()}/{variant}").key == f"{PREFIX_NA}/{prefix.upper()}"


@given(prefixes, suffixes, st.data())
def test_suffix_case_is_preserved(prefix: str, suffix: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(suffix), max_size=len(suffix)))
    variant = flip_case(suffix, flips)
    assume(variant.isprintable() and len(prefix) + 1 + max(len(suffix), len(variant)) <= MAX_HANDLE_LENGTH)
    original, changed = parse_handle(f"{prefix}/{suffix}"), parse_handle(f"{prefix}/{variant}")
    assert original.suffix == suffix
    assert changed.suffix == variant
    assert (original.key == changed.key) == (suffix == variant)


@given(identifiers(), unprintable_chars, st.data())
def test_any_unprintable_character_in_the_suffix_is_rejected(
    pair: tuple[str, str], char: str, data: st.DataObject
) -> None:
    prefix, suffix = pair
    at = data.draw(st.integers(0, len(suffix)))
    text = f"{prefix}/{suffix[:at]}{char}{suffix[at:]}"
    assume(len(text) <= MAX_HANDLE_LENGTH)
    message = rejected(parse_handle, text)
    assert message.startswith("suffix contains ")
    assert message.endswith(f" U+{ord(char):04X} at position {at + 1}")


@given(st.characters(categories=["Cc"]), st.integers(0, 3))
def test_any_control_character_is_reported_as_one(char: str, at: int) -> None:
    suffix = "abc"[:at] + char + "abc"[at:]
    assert rejected(parse_handle, "88.1/" + suffix) == (
        f"suffix contains the control character U+{ord(char):04X} at position {at + 1}"
    )


@given(prefixes, st.data())
def test_any_over_long_identifier_is_rejected(prefix: str, data: st.DataObject) -> None:
    length = data.draw(st.integers(MAX_HANDLE_LENGTH + 1, 2000))
    needed = length - len(prefix) - 1
    suffix = data.draw(st.text(printable_chars, min_size=needed, max_size=needed))
    text = f"{prefix}/{suffix}"
    assert rejected(parse_handle, text) == (f"identifier is {length} characters long (at most {MAX_HANDLE_LENGTH})")
    named = "88." + "8" * (length - len(PREFIX_NA) - 4)
    assert rejected(parse_handle, f"{PREFIX_NA}/{named}") == (
        f"identifier is {length} characters long (at most {MAX_HANDLE_LENGTH})"
    )


@given(st.text(min_size=MAX_HANDLE_LENGTH + 1))
def test_any_text_over_the_length_limit_is_rejected_first(text: str) -> None:
    assert rejected(parse_handle, text) == (f"identifier is {len(text)} characters long (at most {MAX_HANDLE_LENGTH})")


def reference_prefix_is_valid(text: str) -> bool:
    """The prefix rules written out plainly, as an oracle for parse_prefix's fast path."""
    parts = text.split(".")
    return (
        len(text) <= MAX_PREFIX_LENGTH
        and len(parts) <= MAX_PREFIX_SEGMENTS
        and parts[0] == NATIONAL_PREFIX
        and all(part and all(c in SEGMENT_CHARS for c in part) for part in parts)
    )


@given(st.text("88.aZ0-_ \x07é\u0663", max_size=20) | prefixes)
def test_parse_prefix_agrees_with_the_rules(text: str) -> None:
    if reference_prefix_is_valid(text):
        assert parse_prefix(text) == text.upper()
        assert parse_handle(f"{text}/x").prefix == text.upper()
    else:
        message = rejected(parse_prefix, text)
        # Only a prefix whose first segment is wrong may be told so.
        if text.split(".")[0] == NATIONAL_PREFIX:
            assert "national prefix" not in message
        assert rejected(parse_handle, f"{text}/x") == message


@given(st.text(max_size=300))
def test_parse_handle_accepts_or_raises_invalid_handle(text: str) -> None:
    try:
        handle = parse_handle(text)
    except InvalidHandle as error:
        assert error.response_code == 102
        assert error.message
    else:
        assert handle.text == text
        assert parse_handle(handle.key) == Handle(handle.key, handle.prefix, handle.suffix)


@given(normalised_prefixes, st.data())
def test_is_under_iff_ancestor(prefix: str, data: st.DataObject) -> None:
    ancestor = data.draw(st.sampled_from(ancestors(prefix)) | normalised_prefixes)
    assert is_under(prefix, ancestor) == (ancestor in ancestors(prefix))


@given(normalised_prefixes)
def test_ancestors_walk_parents_up_to_the_national_prefix(prefix: str) -> None:
    chain = ancestors(prefix)
    assert chain[0] == prefix
    assert chain[-1] == NATIONAL_PREFIX
    assert len(chain) == prefix.count(".") + 1
    for child, parent in itertools.pairwise(chain):
        assert parent_prefix(child) == parent
        assert is_under(child, parent) and not is_under(parent, child)
    assert parent_prefix(chain[-1]) is None


@given(st.integers(0, 2**31 - 1), identifiers())
def test_identity_round_trip(index: int, pair: tuple[str, str]) -> None:
    handle = parse_handle("/".join(pair))
    assert parse_identity(format_identity(index, handle.key)) == (index, parse_handle(handle.key))
    assert parse_identity(format_identity(index, handle.text))[1] == handle
