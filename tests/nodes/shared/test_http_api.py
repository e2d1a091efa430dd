"""Reading query parameters (nodes.shared.http_api): integers bounded before they reach SQLite."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from nodes.shared.http_api import MAX_QUERY_INT, query_bool, query_int, query_ints
from resolver.errors import ProtocolError

DIGITS = "7" * 5_000  # past Python's 4,300-digit int-string conversion limit


def refusal(query: str, read: object) -> str:
    request = make_mocked_request("GET", f"/api/handles/88/x?{query}")
    with pytest.raises(ProtocolError) as info:
        read(request)  # type: ignore[operator]
    assert (info.value.response_code, info.value.http_status) == (4, 400)
    return info.value.message


@pytest.mark.parametrize(
    ("query", "expected"),
    [("index=1", [1]), ("index=1,2&index=300", [1, 2, 300]), (f"index={MAX_QUERY_INT}", [MAX_QUERY_INT]), ("", [])],
)
def test_query_ints(query: str, expected: list[int]) -> None:
    assert query_ints(make_mocked_request("GET", f"/x?{query}"), "index") == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("page=3", 3),
        ("page=-1", -1),
        ("page=+2", 2),
        ("page=", None),
        ("", None),
        (f"page=-{MAX_QUERY_INT}", -MAX_QUERY_INT),
    ],
)
def test_query_int(query: str, expected: int | None) -> None:
    assert query_int(make_mocked_request("GET", f"/x?{query}"), "page") == expected


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (
            f"index={DIGITS}",
            'index="' + "7" * 60 + '..." (5,000 characters) is out of range (at most 9223372036854775807)',
        ),
        (f"index={2**63}", 'parameter index="9223372036854775808" is out of range'),
        ("index=1,", 'parameter index="1," is not a non-negative integer'),
        ("index=-1", "is not a non-negative integer"),
        ("index=%D9%A1", "is not a non-negative integer"),  # an Arabic-Indic digit: int() would take it
    ],
)
def test_query_ints_refused(query: str, words: str) -> None:
    assert words in refusal(query, lambda r: query_ints(r, "index"))


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (f"after={DIGITS}", "parameter after="),
        (f"after={2**63}", 'parameter after="9223372036854775808" is out of range (at most 9223372036854775807)'),
        (f"after=-{2**63}", "is out of range"),
        ("after=1_000", 'parameter after="1_000" is not an integer'),
        ("after=1e3", "is not an integer"),
        ("after=--1", "is not an integer"),
    ],
)
def test_query_int_refused(query: str, words: str) -> None:
    assert words in refusal(query, lambda r: query_int(r, "after"))


def test_query_bool_quotes_briefly() -> None:
    message = refusal("publicOnly=" + "y" * 5_000, lambda r: query_bool(r, "publicOnly"))
    assert message.endswith("(5,000 characters) is not a boolean (true or false)") and len(message) < 200
