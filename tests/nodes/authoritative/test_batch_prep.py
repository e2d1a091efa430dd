"""Preparing batch operations (``nodes.authoritative.batch.prep``), with no I/O: each fast path of
validation decides exactly as the slow one it stands for (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.authoritative.batch import prep as batchprep
from resolver.codec import pack_rows, pack_values, row_packer, value_row
from resolver.config import Limits
from resolver.errors import HandleError, InvalidHandle
from resolver.names import parse_handle
from resolver.records import keep_row_timestamps, keep_timestamps, parse_put_body
from resolver.values import HandleValue, simple_value_rows, value_from_wire

NOW = 1_700_000_000
LIMITS = Limits(max_value_bytes=40, max_record_bytes=200, max_values=4, max_type_length=8)
texts = st.one_of(
    st.sampled_from(["", "x", "é", "a\ud800", "\n", "https://example.cn/x", "y" * 45, "z" * 41]), st.text(max_size=12)
)
wire_values = st.fixed_dictionaries(
    {
        "index": st.one_of(
            st.integers(-2, 6), st.sampled_from([True, "1", 2**31, 2**31 - 1, 1.0, b"\x01", 10**30, "0" * 30 + "2"])
        ),
        "type": st.one_of(
            st.sampled_from(
                ["URL", "HS_ADMIN", "hs_seckey", "HS_SITE", "HS_VLIST", "", "TOO-LONG-1", "a\tb", "EMAIL", "hs_site.6"]
            ),
            st.text(max_size=9),
        ),
        "data": st.one_of(
            texts,
            st.fixed_dictionaries(
                {
                    "format": st.sampled_from(["string", "hex", "base64", "", "admin"]),
                    "value": st.one_of(texts, st.integers(), st.none()),
                }
            ),
            st.fixed_dictionaries({"value": texts}),
            st.integers(),
        ),
    },
    optional={
        "ttl": st.one_of(
            st.integers(-1, 100_000),
            st.sampled_from(["60", True, 2**31, 2**31 - 1, "1d", "9" * 5_000, "0" * 30 + "60", b"", 10**30]),
        ),
        "permissions": st.sampled_from(["1110", "1100", "0010", "111", "11101", "11x0", 1110, b"1110"]),
        "references": st.one_of(st.just([]), st.just({}), st.just([{"index": 1, "handle": "88/x"}])),
        "timestamp": st.just("2026-11-22T08:00:00Z"),
    },
)


def _plausible(parts: list[tuple[str, Any, dict[str, Any]]], order: list[int]) -> list[dict[str, Any]]:
    return [
        {"index": index, "type": vtype, "data": data, **extra}
        for index, (vtype, data, extra) in zip(order, parts, strict=False)
    ]


# Mostly what real clients send, with the odd twist: the fast path's territory and its borders.
plausible_values = st.builds(
    _plausible,
    st.lists(
        st.tuples(
            st.sampled_from(["URL", "MODEL", "EMAIL", "BATCH-NO", "HS_ADMIN", "hs_seckey", "TOO-LONG-1", "a b"]),
            st.one_of(
                texts,
                st.builds(lambda v: {"format": "string", "value": v}, texts),
                st.builds(lambda v: {"value": v}, texts),
                st.builds(lambda v: {"format": "hex", "value": v}, texts),
            ),
            st.fixed_dictionaries(
                {},
                optional={
                    "ttl": st.sampled_from([0, 60, 86400, 2**31 - 1, -1, "60", "0" * 25 + "1", "9" * 5_000]),
                    "permissions": st.sampled_from(["1110", "0100", "111"]),
                    "references": st.just([]),
                    "timestamp": st.just("x"),
                },
            ),
        ),
        max_size=5,
    ),
    st.one_of(
        st.just([1, 2, 3, 4, 5]),
        st.just([3, 7, 100, 300, 2**31 - 1]),
        st.permutations([1, 2, 3, 4, 5]),
        st.lists(st.integers(0, 6), min_size=5, max_size=5),
    ),
)


@settings(max_examples=3_000, deadline=None)
@given(st.one_of(plausible_values, st.lists(wire_values, max_size=5), st.just({}), st.none(), st.just("values")))
def test_simple_value_rows_decides_exactly_as_parse_put_body(raw: Any) -> None:
    rows = simple_value_rows(raw, NOW, LIMITS)
    if rows is None:
        return  # the slow path decides, whatever it says
    values = parse_put_body(raw, handle_text="88/x", now=NOW, limits=LIMITS)  # must not raise
    assert rows == [value_row(v) for v in values]
    assert pack_rows(rows) == pack_values(values)


def test_simple_value_rows_takes_the_common_cases() -> None:
    common = [
        {"index": 1, "type": "URL", "data": "https://a"},
        {"index": 2, "type": "MODEL", "data": {"format": "string", "value": "é"}, "ttl": 60},
        {"index": 3, "type": "NOTE", "data": {"value": "x"}, "permissions": "1100", "references": []},
    ]
    assert simple_value_rows(common, NOW) == [
        [1, "URL", "string", "https://a", 86400, NOW, "1110", []],
        [2, "MODEL", "string", "é", 60, NOW, "1110", []],
        [3, "NOTE", "string", "x", 86400, NOW, "1100", []],
    ]
    assert simple_value_rows([], NOW) == []
    assert simple_value_rows([common[1], common[0]], NOW) is None  # out of order: the slow path sorts
    assert simple_value_rows([{"index": 1, "type": "HS_SECKEY", "data": "pw"}], NOW) is None
    with pytest.raises(HandleError, match="not valid Unicode"):
        value_from_wire({"index": 1, "type": "URL", "data": "a\ud800"}, position=1, now=NOW)


handle_texts = st.one_of(
    st.sampled_from(
        [
            "88.118/x",
            "88.118/",
            "88.ab-C/Ü",
            "0.NA/88.1",
            "0.na/88.A",
            "88..1/x",
            "88/a\x07",
            "88",
            "88.1/" + "s" * 250,
            "89/x",
            "88.1.2.3.4.5.6.7.8/x",
            "0.NA/",
            "88/a/b",
        ]
    ),
    st.builds(
        lambda p, s: f"{p}/{s}", st.sampled_from(["88", "88.118", "88.A-b", "0.NA", "88.x_y"]), st.text(max_size=260)
    ),
)


@settings(max_examples=1_000, deadline=None)
@given(st.lists(handle_texts, max_size=6))
def test_identifiers_are_parsed_exactly_as_parse_handle_does(texts_: list[str]) -> None:
    for text in texts_:  # in sequence, so the memo of valid prefixes is exercised
        try:
            expected = parse_handle(text)
        except InvalidHandle as exc:
            with pytest.raises(InvalidHandle) as info:
                batchprep._parse(text)
            assert info.value.message == exc.message
            continue
        key, zone, handle = batchprep._parse(text)
        assert (key, zone) == (expected.key, expected.zone)
        assert (handle is not None) == expected.is_prefix_handle


small_records = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from(["a", "b"]), st.integers(0, 2)), max_size=4, unique_by=lambda t: t[0]
)


@settings(max_examples=300, deadline=None)
@given(small_records, small_records)
def test_keep_row_timestamps_is_keep_timestamps_on_rows(
    old: list[tuple[int, str, int]], new: list[tuple[int, str, int]]
) -> None:
    before = tuple(HandleValue(i, "T", "string", v, 60 + t, 100 + i) for i, v, t in old)
    after = tuple(HandleValue(i, "T", "string", v, 60 + t, 500) for i, v, t in new)
    kept = keep_row_timestamps([value_row(v) for v in before], [value_row(v) for v in after])
    expected = [value_row(v) for v in keep_timestamps(before, after)]
    assert (kept if kept is not None else [value_row(v) for v in after]) == expected


# -- hostile operations fail one by one, in words (issue 11, finding 3) --------------------------------

hostile = st.one_of(
    st.binary(max_size=3),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=2)),
    st.just(msgpack.Timestamp(1, 0)),
    st.integers(min_value=2**63, max_value=2**200),
    st.sampled_from([10**5_000, "9" * 5_000, "0" * 30 + "7", json.loads("[" * 40 + "]" * 40), {b"k": 1}]),
)
hostile_values = st.fixed_dictionaries(
    {
        "index": st.one_of(st.integers(1, 3), hostile),
        "type": st.one_of(st.sampled_from(["URL", "HS_SITE", "HS_ADMIN", "HS_VLIST"]), hostile),
        "data": st.one_of(
            st.just("x"),
            hostile,
            st.fixed_dictionaries(
                {"format": st.one_of(st.sampled_from(["key", "site", "admin", "vlist"]), hostile), "value": hostile}
            ),
            st.builds(lambda h: {"format": "key", "value": {"kty": h}}, hostile),
            st.builds(
                lambda h, k: {"format": "site", "value": {"servers": [{"address": "h", k: h, "interfaces": []}]}},
                hostile,
                st.sampled_from(["publicKey", "serverId"]),
            ),
        ),
    },
    optional={"ttl": hostile, "permissions": hostile, "references": hostile},
)
hostile_ops = st.fixed_dictionaries(
    {
        "op": st.one_of(st.sampled_from(["create", "upsert", "delete"]), hostile),
        "handle": st.one_of(st.just("88.118/x"), hostile),
        "values": st.one_of(st.lists(hostile_values, max_size=3), hostile),
    }
)


@settings(max_examples=1_000, deadline=None)
@given(st.lists(st.one_of(hostile_ops, hostile), max_size=4))
def test_hostile_operations_fail_one_by_one_in_words(raws: list[Any]) -> None:
    items = batchprep.prepare_chunk(raws, 0, NOW, Limits(), row_packer())
    for item in items:
        if isinstance(item, dict):
            assert item["responseCode"] in (4, 102, 202) and len(item["message"]) < 400, item
    batchprep.Prepared.empty().add(items)  # every operation fits between processes
