"""Wire and storage encodings (resolver.codec)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolver.codec import (
    JSON,
    MSGPACK,
    NDJSON,
    Malformed,
    batch_operations,
    body_media_type,
    choose_media_type,
    decode,
    encode,
    pack_values,
    unpack_values,
)
from resolver.errors import ProtocolError, UnsupportedMediaType
from resolver.limits import nested_deeper
from resolver.sites import site_data
from resolver.values import HandleValue, Reference, value_from_wire

# -- content negotiation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "application/msgpack",
        "application/x-msgpack",
        "application/vnd.msgpack",
        "Application/MsgPack; charset=binary",
        "text/html, application/msgpack;q=0.9",
    ],
)
def test_msgpack_when_the_client_asks_for_it(accept: str) -> None:
    assert choose_media_type(accept) == MSGPACK


@pytest.mark.parametrize("accept", [None, "", "*/*", "application/json", "text/html,application/xhtml+xml"])
def test_json_otherwise(accept: str | None) -> None:
    assert choose_media_type(accept) == JSON


def test_msgpack_refused_with_q0_gives_json() -> None:
    assert choose_media_type("application/json, application/msgpack;q=0") == JSON


@pytest.mark.parametrize(
    ("content_type", "media"),
    [
        (None, JSON),
        ("application/json", JSON),
        ("application/json; charset=utf-8", JSON),
        ("text/json", JSON),
        ("APPLICATION/MSGPACK", MSGPACK),
        ("application/x-msgpack", MSGPACK),
        ("application/x-ndjson", NDJSON),
        ("application/jsonl", NDJSON),
    ],
)
def test_body_media_type(content_type: str | None, media: str) -> None:
    assert body_media_type(content_type) == media


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x"])
def test_unsupported_body_type_is_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        body_media_type(content_type)
    assert info.value.http_status == 415
    assert info.value.response_code == 4
    assert repr(content_type) in info.value.message
    assert "application/json" in info.value.message


# -- encode / decode -------------------------------------------------------------------------------------


def test_json_is_compact_utf8() -> None:
    assert encode({"handle": "88.118.8/车", "n": 1}, JSON) == '{"handle":"88.118.8/车","n":1}'.encode()


def test_msgpack_is_msgpack() -> None:
    body = encode({"values": [1, "a"]}, MSGPACK)
    assert msgpack.unpackb(body) == {"values": [1, "a"]}


def test_bytes_travel_as_msgpack_binary() -> None:
    assert decode(encode({"b": b"\x00\xff"}, MSGPACK), MSGPACK) == {"b": b"\x00\xff"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"values": [', "request body is not valid JSON"),
        (b"", "request body is not valid JSON"),
        (b'{"a": 1} x', "at line 1 column 10"),
        (b'{"a": "\xff"}', "request body is not UTF-8"),
    ],
)
def test_bad_json_is_a_protocol_error(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(body, JSON)
    assert (info.value.response_code, info.value.http_status) == (4, 400)
    assert message in info.value.message


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never used
        b"\x92\x01",  # array of 2, only one item
        msgpack.packb({1: "int key"}),
        msgpack.packb("a") + b"\x01",  # trailing data
        b"\xa2\xff\xfe",  # str that is not UTF-8
    ],
)
def test_bad_msgpack_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(body, MSGPACK)
    assert (info.value.response_code, info.value.http_status) == (4, 400)
    assert "request body is not valid msgpack" in info.value.message


def test_ndjson_one_document_per_line_blank_lines_skipped() -> None:
    body = b'{"op": "create"}\n\n  \n{"op": "delete"}\n'
    assert decode(body, NDJSON) == [{"op": "create"}, {"op": "delete"}]


def test_ndjson_error_names_the_line() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(b'{"op": "create"}\n{"op": \n', NDJSON)
    assert info.value.message.startswith("line 2 is not valid JSON")


json_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _typed(doc: Any) -> Any:
    """A form that tells 1, 1.0 and True apart, for exact comparison."""
    if isinstance(doc, dict):
        return {k: _typed(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_typed(v) for v in doc]
    return (type(doc).__name__, doc)


@pytest.mark.parametrize("media", [JSON, MSGPACK])
@given(doc=json_documents)
def test_documents_round_trip(media: str, doc: Any) -> None:
    assert _typed(decode(encode(doc, media), media)) == _typed(doc)


@given(docs=st.lists(json_documents, max_size=5))
def test_ndjson_round_trips_json_lines(docs: list[Any]) -> None:
    body = b"\n".join(encode(d, JSON) for d in docs)
    assert _typed(decode(body, NDJSON)) == _typed(docs)


# -- stored values ---------------------------------------------------------------------------------------

NOW = 1_700_000_000


def test_pack_and_unpack_every_format() -> None:
    raws = [
        {"index": 1, "type": "URL", "data": "https://x/车", "references": [{"index": 1, "handle": "88.1/a"}]},
        {"index": 2, "type": "C", "data": {"format": "base64", "value": "AAE="}, "permissions": "1100"},
        {"index": 3, "type": "H", "data": {"format": "hex", "value": "0aff"}, "ttl": 0},
        {"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": {"handle": "0.NA/88.1", "index": 300}}},
        {"index": 200, "type": "HS_VLIST", "data": [{"handle": "0.NA/88.1", "index": 300}]},
        {
            "index": 10,
            "type": "HS_SITE",
            "data": {"format": "site", "value": site_data("::1", 80, primary=False, description="d")},
        },
        {"index": 301, "type": "HS_PUBKEY", "data": {"format": "key", "value": {"kty": "OKP", "n": [1, 2]}}},
    ]
    values = tuple(value_from_wire(r, position=i, now=NOW) for i, r in enumerate(raws, 1))
    assert unpack_values(pack_values(values)) == values


def test_pack_empty_record() -> None:
    assert unpack_values(pack_values(())) == ()


_plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
handle_values = st.builds(
    HandleValue,
    index=st.integers(1, 2**31 - 1),
    type=st.text(min_size=1, max_size=20),
    format=st.sampled_from(["string", "base64", "hex", "admin", "vlist", "site", "key"]),
    value=_plain,
    ttl=st.integers(0, 2**31 - 1),
    timestamp=st.integers(0, 2**40),
    permissions=st.text("01", min_size=4, max_size=4),
    references=st.lists(st.builds(Reference, st.integers(0, 2**31 - 1), st.text(max_size=10)), max_size=3).map(tuple),
)


@given(st.lists(handle_values, max_size=6))
def test_pack_unpack_round_trip(values: list[HandleValue]) -> None:
    blob = pack_values(values)
    assert isinstance(blob, bytes)
    back = unpack_values(blob)
    assert back == tuple(values)
    assert pack_values(back) == blob


# -- hostile bodies: a ProtocolError in words, never another exception (issue 11, finding 3) -----------


@pytest.mark.parametrize(
    ("body", "media", "message"),
    [
        (b"[" * 33 + b"]" * 33, JSON, "request body is nested deeper than 32 levels"),
        (b"[" * 1_000 + b"]" * 1_000, JSON, "request body is nested deeper than 32 levels"),  # RecursionError
        (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, JSON, "request body is nested deeper than 32 levels"),
        (b"\x91" * 33 + b"\xc0", MSGPACK, "request body is nested deeper than 32 levels"),
        (b"\x91" * 5_000 + b"\xc0", MSGPACK, "request body is nested deeper than 32 levels"),  # StackError
        (b'{"ok": 1}\n' + b"[" * 1_000 + b"]" * 1_000, NDJSON, "line 2 is nested deeper than 32 levels"),
        (b'{"index": ' + b"7" * 5_000 + b"}", JSON, "request body holds an integer of more than 4,300 digits"),
        (b"\n-" + b"1" * 4_301, NDJSON, "line 2 holds an integer of more than 4,300 digits"),
    ],
)
def test_hostile_bodies_are_protocol_errors(body: bytes, media: str, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(body, media)
    assert info.value.message == message


def test_nesting_up_to_the_limit_is_read() -> None:
    assert decode(b"[" * 32 + b"]" * 32, JSON) == json.loads(b"[" * 32 + b"]" * 32)
    assert not nested_deeper({"a": [{"b": [1]}]}, 4) and nested_deeper({"a": [{"b": [1]}]}, 3)
    assert not nested_deeper("x", 0) and not nested_deeper([], 1) and nested_deeper([], 0)


def batch(body: bytes, media: str) -> list[Any]:
    _, items = batch_operations(body, media, 10)
    return list(items)


def test_a_batch_that_cannot_be_read_is_refused_whole() -> None:
    for body, media in [
        (b"[" * 2_000 + b"]" * 2_000, JSON),
        (b"\x91" * 5_000 + b"\xc0", MSGPACK),
        (msgpack.packb({"operations": [[[[1]]]]})[:-1] + b"\x91" * 5_000 + b"\xc0", MSGPACK),
    ]:
        with pytest.raises(ProtocolError, match="nested deeper than 32 levels"):
            batch(body, media)
    with pytest.raises(ProtocolError, match="integer of more than 4,300 digits"):
        batch(b'[{"op": ' + b"1" * 5_000 + b"}]", JSON)


def test_an_ndjson_line_that_cannot_be_read_fails_alone() -> None:
    body = b'{"op": "delete"}\n' + b"[" * 2_000 + b"]" * 2_000 + b"\n" + b"9" * 5_000 + b"\n"
    ok, deep, digits = batch(body, NDJSON)
    assert ok == {"op": "delete"}
    assert isinstance(deep, Malformed) and deep.message == "line 2 is nested deeper than 32 levels"
    assert isinstance(digits, Malformed) and digits.message == "line 3 holds an integer of more than 4,300 digits"
