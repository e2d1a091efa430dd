"""The bodies of the HANDLE.NET REST API's answers, built in one place for every node and for tests.

Shapes follow the HANDLE.NET REST API (Technical Manual §14): an answer carries ``responseCode`` 1, the
handle exactly as the client wrote it and the values; "not found" is 100 with the message HANDLE.NET
uses; a type or index filter that matches nothing is 200 with no values; a referral (our extension for
walking the tree, DESIGN §4) is 303 with the delegated prefix and its HS_SITE values. Error bodies come
from ``HandleError.to_body``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from resolver.values import HandleValue, value_to_wire

__all__ = [
    "NOT_FOUND_MESSAGE",
    "answer_body",
    "not_found_body",
    "referral_body",
    "values_not_found_body",
]

NOT_FOUND_MESSAGE = "Handle Not Found"


def answer_body(handle: str, values: Iterable[HandleValue]) -> dict[str, Any]:
    """HTTP 200, responseCode 1: the record (its values as the client may see them)."""
    return {"responseCode": 1, "handle": handle, "values": [value_to_wire(v) for v in values]}


def not_found_body(handle: str) -> dict[str, Any]:
    """HTTP 404, responseCode 100: no such handle. An answer, not an error."""
    return {"responseCode": 100, "handle": handle, "message": NOT_FOUND_MESSAGE}


def values_not_found_body(handle: str) -> dict[str, Any]:
    """HTTP 200, responseCode 200: the handle exists, but no value matches the type or index given."""
    return {"responseCode": 200, "handle": handle, "values": [], "message": "no value matches the type or index given"}


def referral_body(handle: str, prefix: str, sites: Iterable[HandleValue]) -> dict[str, Any]:
    """HTTP 300, responseCode 303: ``prefix`` is delegated; ask one of its sites."""
    return {
        "responseCode": 303,
        "handle": handle,
        "prefix": prefix,
        "message": f"prefix {prefix} is delegated: ask one of its sites",
        "values": [value_to_wire(v) for v in sites],
    }
