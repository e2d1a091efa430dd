"""Record operations: PUT bodies, merging, removing and filtering values (resolver.records)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolver.config import Limits
from resolver.errors import InvalidValue, ProtocolError, ValueAlreadyExists, ValuesNotFound
from resolver.records import (
    Record,
    filter_values,
    keep_timestamps,
    merge_values,
    parse_put_body,
    public_values,
    remove_values,
)
from resolver.values import HandleValue

H = "88.118.8/VIN-001"
NOW = 1_700_000_000
LATER = NOW + 3600


def url(index: int = 1, value: str = "https://example.org/a", *, ts: int = NOW, **kw: Any) -> HandleValue:
    return HandleValue(index, kw.pop("type", "URL"), "string", value, timestamp=ts, **kw)


def raw(index: int, vtype: str = "URL", data: str = "x") -> dict[str, Any]:
    return {"index": index, "type": vtype, "data": data}


# -- parse_put_body --------------------------------------------------------------------------------------


def test_values_object_body() -> None:
    body = {"values": [raw(2, "EMAIL", "a@b.c"), raw(1, "URL", "https://x")]}
    values = parse_put_body(body, handle_text=H, now=NOW)
    assert [(v.index, v.type, v.value, v.timestamp) for v in values] == [
        (1, "URL", "https://x", NOW),
        (2, "EMAIL", "a@b.c", NOW),
    ]


def test_values_object_with_matching_handle() -> None:
    assert len(parse_put_body({"handle": H, "values": [raw(1)]}, handle_text=H, now=NOW)) == 1


def test_bare_list_body() -> None:
    assert [v.index for v in parse_put_body([raw(3), raw(1)], handle_text=H, now=NOW)] == [1, 3]


def test_single_value_body() -> None:
    (v,) = parse_put_body(raw(5, "MODEL", "LFV3A"), handle_text=H, now=NOW)
    assert (v.index, v.type, v.value) == (5, "MODEL", "LFV3A")


def test_empty_record_is_allowed() -> None:
    assert parse_put_body({"values": []}, handle_text=H, now=NOW) == ()


def test_pyhandle_registration_body() -> None:
    body = {
        "values": [
            {
                "index": 100,
                "type": "HS_ADMIN",
                "data": {
                    "value": {"index": "200", "handle": "0.NA/88.118.8", "permissions": "011111110011"},
                    "format": "admin",
                },
            },
            {"index": 2, "type": "EXTRA", "data": "x"},
            {"index": 1, "type": "URL", "data": "https://example.org"},
            {"index": 3, "type": "CHECKSUM", "data": "abc"},
        ]
    }
    values = parse_put_body(body, handle_text=H, now=NOW)
    assert [v.index for v in values] == [1, 2, 3, 100]
    assert values[-1].value == {"handle": "0.NA/88.118.8", "index": 200, "permissions": "011111110011"}


def test_handle_in_body_must_match_the_path() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_put_body({"handle": "88.118.8/OTHER", "values": [raw(1)]}, handle_text=H, now=NOW)
    assert (info.value.response_code, info.value.http_status) == (4, 400)
    assert info.value.handle == H
    assert "88.118.8/OTHER" in info.value.message
    assert H in info.value.message


@pytest.mark.parametrize("body", [None, "values", 5, {}, {"index": 1, "type": "URL"}, {"value": []}])
def test_unreadable_body(body: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_put_body(body, handle_text=H, now=NOW)
    assert info.value.response_code == 4
    assert '{"values": [...]}' in info.value.message


@pytest.mark.parametrize("values", [{"1": raw(1)}, "x", None])
def test_values_must_be_a_list(values: Any) -> None:
    with pytest.raises(ProtocolError, match='"values" must be a list'):
        parse_put_body({"values": values}, handle_text=H, now=NOW)


def test_bad_value_is_named_by_position() -> None:
    with pytest.raises(InvalidValue) as info:
        parse_put_body({"values": [raw(1), {"index": 0, "type": "URL", "data": "x"}]}, handle_text=H, now=NOW)
    assert info.value.response_code == 202
    assert info.value.message == "value 2 (index 0): value indexes must be positive"


def test_duplicate_index_is_refused() -> None:
    with pytest.raises(InvalidValue) as info:
        parse_put_body([raw(1), raw(2), raw(1, "EMAIL")], handle_text=H, now=NOW)
    assert (info.value.response_code, info.value.http_status) == (202, 400)
    assert info.value.message == "index 1 appears more than once"
    assert info.value.handle == H


def test_too_many_values() -> None:
    limits = Limits(max_values=2)
    assert len(parse_put_body([raw(1), raw(2)], handle_text=H, now=NOW, limits=limits)) == 2
    with pytest.raises(InvalidValue) as info:
        parse_put_body([raw(1), raw(2), raw(3)], handle_text=H, now=NOW, limits=limits)
    assert info.value.message == "3 values in one record (at most 2)"


def test_default_limit_is_1000_values() -> None:
    assert len(parse_put_body([raw(i) for i in range(1, 1001)], handle_text=H, now=NOW)) == 1000
    with pytest.raises(InvalidValue, match="1001 values in one record"):
        parse_put_body([raw(i) for i in range(1, 1002)], handle_text=H, now=NOW)


def test_record_size_limit() -> None:
    limits = Limits(max_record_bytes=200)
    parse_put_body([raw(1, "URL", "x" * 100)], handle_text=H, now=NOW, limits=limits)
    with pytest.raises(InvalidValue) as info:
        parse_put_body([raw(1, "URL", "x" * 100), raw(2, "URL", "y" * 100)], handle_text=H, now=NOW, limits=limits)
    assert "the record would be" in info.value.message
    assert "(at most 200)" in info.value.message


# -- merge_values ------------------------------------------------------------------------------------------


def test_merge_adds_and_replaces_by_index() -> None:
    current = (url(1, "old"), url(3, "three"))
    new = (url(1, "new", ts=LATER), url(2, "two", ts=LATER))
    merged = merge_values(current, new, overwrite=True, handle_text=H)
    assert [(v.index, v.value, v.timestamp) for v in merged] == [
        (1, "new", LATER),
        (2, "two", LATER),
        (3, "three", NOW),
    ]


def test_merge_without_overwrite_refuses_an_existing_index() -> None:
    with pytest.raises(ValueAlreadyExists) as info:
        merge_values((url(1), url(2)), (url(3), url(2, "other")), overwrite=False, handle_text=H)
    assert (info.value.response_code, info.value.http_status) == (201, 409)
    assert info.value.message == "a value with index 2 already exists"
    assert info.value.handle == H


def test_merge_without_overwrite_adds_new_indexes() -> None:
    merged = merge_values((url(1),), (url(2, "b"),), overwrite=False, handle_text=H)
    assert [v.index for v in merged] == [1, 2]


def test_unchanged_value_keeps_its_timestamp() -> None:
    merged = merge_values((url(1, "same", ts=NOW),), (url(1, "same", ts=LATER),), overwrite=True, handle_text=H)
    assert merged[0].timestamp == NOW


def test_changed_ttl_or_permissions_is_a_modification() -> None:
    old = url(1, "same", ts=NOW)
    for new in (url(1, "same", ts=LATER, ttl=60), url(1, "same", ts=LATER, permissions="1100")):
        assert merge_values((old,), (new,), overwrite=True, handle_text=H)[0].timestamp == LATER


def test_merge_respects_the_limits() -> None:
    with pytest.raises(InvalidValue, match=r"the record would have 3 values \(at most 2\)"):
        merge_values((url(1), url(2)), (url(3),), overwrite=True, handle_text=H, limits=Limits(max_values=2))
    with pytest.raises(InvalidValue, match=r"the record would be \d+ bytes \(at most 100\)"):
        merge_values(
            (url(1, "x" * 60),), (url(2, "y" * 60),), overwrite=True, handle_text=H, limits=Limits(max_record_bytes=100)
        )


def test_keep_timestamps_on_whole_record_overwrite() -> None:
    current = (url(1, "same", ts=NOW), url(2, "before", ts=NOW), url(9, "gone", ts=NOW))
    new = (url(1, "same", ts=LATER), url(2, "after", ts=LATER), url(3, "added", ts=LATER))
    assert [(v.index, v.timestamp) for v in keep_timestamps(current, new)] == [(1, NOW), (2, LATER), (3, LATER)]


# -- remove_values -----------------------------------------------------------------------------------------


def test_remove_values() -> None:
    assert [v.index for v in remove_values((url(1), url(2), url(3)), [1, 3], handle_text=H)] == [2]


def test_remove_missing_index_is_values_not_found() -> None:
    with pytest.raises(ValuesNotFound) as info:
        remove_values((url(1), url(2)), [7, 2, 5], handle_text=H)
    assert (info.value.response_code, info.value.http_status) == (200, 400)
    assert info.value.message == "no value with index 5, 7"
    assert info.value.handle == H


# -- filter_values / public_values -------------------------------------------------------------------------

RECORD = (
    url(1, type="URL"),
    url(2, type="URL.PDF"),
    url(3, type="url.pdf.v2"),
    url(4, type="URLX"),
    url(5, type="EMAIL"),
    url(100, type="HS_ADMIN"),
)


def indexes(values: tuple[HandleValue, ...]) -> list[int]:
    return [v.index for v in values]


def test_no_filter_returns_everything() -> None:
    assert filter_values(RECORD, [], []) == RECORD


def test_type_filter_is_exact_and_case_insensitive() -> None:
    assert indexes(filter_values(RECORD, ["url"], [])) == [1]
    assert indexes(filter_values(RECORD, ["URL.PDF"], [])) == [2]


def test_type_ending_in_dot_selects_subtypes() -> None:
    assert indexes(filter_values(RECORD, ["URL."], [])) == [1, 2, 3]
    assert indexes(filter_values(RECORD, ["URL.pdf."], [])) == [2, 3]


def test_index_and_type_filters_are_ored() -> None:
    assert indexes(filter_values(RECORD, ["EMAIL"], [100, 1])) == [1, 5, 100]
    assert indexes(filter_values(RECORD, [], [4, 42])) == [4]
    assert filter_values(RECORD, ["NOPE"], [42]) == ()


def test_public_values() -> None:
    secret = HandleValue(300, "HS_SECKEY", "string", "h", permissions="1100")
    public_write = url(2, permissions="1111")
    hidden = url(3, permissions="0000")
    assert public_values((url(1), secret, public_write, hidden)) == (url(1), public_write)


def test_record_by_index() -> None:
    record = Record("88.118.8/VIN-001", (url(1), url(2, "b")))
    assert record.by_index() == {1: url(1), 2: url(2, "b")}


_type_names = st.sampled_from(["URL", "url", "URL.PDF", "URL.PDF.V2", "URLX", "EMAIL", "EMAIL.WORK", "HS_ADMIN"])
_filter_types = st.sampled_from(["URL", "URL.", "url.pdf.", "EMAIL.", "email", "X.", ".", "URLX"])


def _oracle(v: HandleValue, types: list[str], wanted: list[int]) -> bool:
    segments = v.type.upper().split(".")
    for t in types:
        if t.endswith("."):
            head = t[:-1].upper().split(".")
            if segments[: len(head)] == head:
                return True
        elif t.upper() == v.type.upper():
            return True
    return v.index in wanted


@given(
    st.lists(st.builds(lambda i, t: url(i, type=t), st.integers(1, 20), _type_names), max_size=10),
    st.lists(_filter_types, max_size=3),
    st.lists(st.integers(1, 20), max_size=3),
)
def test_filter_returns_exactly_the_matching_values_in_order(
    values: list[HandleValue], types: list[str], wanted: list[int]
) -> None:
    got = filter_values(values, types, wanted)
    if not types and not wanted:
        assert got == tuple(values)
    else:
        assert got == tuple(v for v in values if _oracle(v, types, wanted))


# -- data kept as sent, from a msgpack body (issue 11, finding 3) --------------------------------------

SERVER = {"address": "h", "interfaces": [{"protocol": "HTTP", "port": 1}]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format": "key", "value": {"k": [{}]}}, None),
        (
            {"format": "key", "value": {"k": json.loads("[" * 33 + "]" * 33)}},
            "key data is nested deeper than 32 levels",
        ),
        ({"format": "key", "value": {"kty": b"\x01"}}, "key data must be plain JSON, not binary data (1 bytes)"),
        ({"format": "key", "value": {b"kty": "EC"}}, "a member name is binary data"),
        ({"format": "site", "value": {"servers": [{**SERVER, "publicKey": msgpack.Timestamp(0, 0)}]}}, "publicKey"),
        ({"format": "site", "value": {"protocolVersion": [1], "servers": [SERVER]}}, "protocolVersion must be"),
    ],
)
def test_data_kept_as_sent_must_be_plain_json(data: Any, message: str | None) -> None:
    body = [{"index": 1, "type": "KEY", "data": data}]
    if message is None:
        assert parse_put_body(body, handle_text=H, now=NOW)[0].value == data["value"]
        return
    with pytest.raises(InvalidValue) as info:
        parse_put_body(body, handle_text=H, now=NOW)
    assert message in info.value.message


def test_a_body_naming_another_handle_is_quoted_briefly() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_put_body({"handle": b"\x00" * 9, "values": []}, handle_text=H, now=NOW)
    assert info.value.message == f'body names handle binary data (9 bytes) but the path names "{H}"'
