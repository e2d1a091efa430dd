"""Reading CSV and JSON Lines into batches (resolver.bulk.reader): the header, the rows, the line numbers."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.datagen import rows
from resolver.bulk.reader import Batch, BatchReader, Column, InputError, parse_header
from tests.resolver.bulk.cars import HEADER, bare, wire


def batches(text: bytes, fmt: str = "csv", **kw: Any) -> list[Batch]:
    return list(BatchReader(io.BytesIO(text), fmt=fmt, op=kw.pop("op", "create"), **kw))


def operations(text: bytes, fmt: str = "csv", **kw: Any) -> list[dict[str, Any]]:
    return [op for b in batches(text, fmt, **kw) if b.body for op in msgpack.unpackb(b.body)["operations"]]


# -- the CSV header -----------------------------------------------------------------------------------


def test_header_gives_indexes_in_order_skipping_explicit_ones() -> None:
    assert parse_header(["handle", "URL", "1:MODEL", "BATCH", "7:COMPONENT", "NOTE"]) == (
        Column(2, "URL"),
        Column(1, "MODEL"),
        Column(3, "BATCH"),
        Column(7, "COMPONENT"),
        Column(4, "NOTE"),
    )
    # The same type twice is two values (a car with two COMPONENTs).
    assert parse_header(["handle", "COMPONENT", "COMPONENT"]) == (Column(1, "COMPONENT"), Column(2, "COMPONENT"))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["id", "URL"], 'first column of the header must be "handle"'),
        (["handle", "URL", ""], "names no value type"),
        (["handle", "2:URL", "2:MODEL"], "explicit index appears twice"),
        (["handle", "0:URL"], "value indexes are 1 to"),
        (["handle", "X" * 129], "printable characters"),
    ],
)
def test_bad_header_is_refused_with_a_reason(header: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_header(header)


# -- reading CSV -------------------------------------------------------------------------------------


def test_csv_rows_become_operations_and_empty_cells_are_omitted() -> None:
    text = b"handle,URL,3:MODEL,BATCH,1:HS_ADMIN\n88.118.8/A,https://a,,B-1,\n88.118.8/B,,M\xc3\xa9,,x\n"
    assert operations(text) == [
        {"op": "create", "handle": "88.118.8/A", "values": [bare(2, "URL", "https://a"), bare(4, "BATCH", "B-1")]},
        # In index order, and a structured type's string data with its format said.
        {"op": "create", "handle": "88.118.8/B", "values": [wire(1, "HS_ADMIN", "x"), bare(3, "MODEL", "Mé")]},
    ]
    assert operations(text, op="upsert")[0]["op"] == "upsert"


def test_quoted_multiline_and_crlf_rows_read_like_the_csv_module() -> None:
    text = (
        '\ufeffhandle,URL,NOTE\r\n88.118.8/A,https://a,"two\nlines, and a ""quote"""\r\n'
        "88.118.8/B,https://b,plain\r\n\r\n88.118.8/C,https://c,x\r\n"
    ).encode()
    ops = operations(text)
    assert [op["handle"] for op in ops] == ["88.118.8/A", "88.118.8/B", "88.118.8/C"]
    assert ops[0]["values"][1]["data"] == 'two\nlines, and a "quote"'
    [batch] = batches(text)
    assert (batch.records, batch.end_line) == (3, 6)
    assert [batch.item(i)[0] for i in range(3)] == [2, 4, 6]  # the line each record starts on


def test_bad_rows_are_rejected_one_by_one_with_their_line() -> None:
    text = b"handle,URL,MODEL\n88.118.8/A,u,m\n88.118.8/B,u\n88.118.8/C,u,m,extra\n88.118.8/\xff,u,m\n88.118.8/E,u,m\n"
    [batch] = batches(text)
    assert [(r.line, r.handle, r.response_code) for r in batch.rejected] == [
        (3, "88.118.8/B", 4),
        (4, "88.118.8/C", 4),
        (5, "88.118.8/\ufffd", 4),
    ]
    assert [r.message for r in batch.rejected] == [
        "the row has 2 cells, but the header has 3 columns",
        "the row has 4 cells, but the header has 3 columns",
        "the row is not valid UTF-8",
    ]
    assert [batch.item(i)[:2] for i in range(batch.count)] == [(2, "88.118.8/A"), (6, "88.118.8/E")]


def test_a_quoted_field_running_past_the_chunk_stays_in_its_batch() -> None:
    text = b'handle,NOTE\n88.118.8/A,"1\n2\n3"\n88.118.8/B,x\n88.118.8/C,y\n'
    got = batches(text, batch_size=2)
    assert [(b.first_line, b.end_line, b.count) for b in got] == [(2, 4, 1), (5, 6, 2)]
    assert operations(text, batch_size=2)[0]["values"][0]["data"] == "1\n2\n3"


cells = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
plain_cells = st.text(st.characters(exclude_categories=["Cs"], exclude_characters='",\r\n\x00'), max_size=40)


def read_like_the_csv_module(table: list[list[str]], batch_size: int) -> None:
    out = io.StringIO(newline="")
    csv.writer(out).writerows([["handle", "A", "1:B"], *table])  # CRLF, which quotes any CR or LF
    expected = [
        {
            "op": "create",
            "handle": row[0],
            "values": [bare(i, t, v) for (i, t), v in [((1, "B"), row[2]), ((2, "A"), row[1])] if v],
        }
        for row in csv.reader(io.StringIO(out.getvalue(), newline=""))
        if row
    ][1:]
    assert operations(out.getvalue().encode(), batch_size=batch_size) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(cells, min_size=3, max_size=3), min_size=1, max_size=30), st.integers(1, 7))
def test_any_csv_reads_as_the_csv_module_reads_it(table: list[list[str]], batch_size: int) -> None:
    read_like_the_csv_module(table, batch_size)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(plain_cells, min_size=3, max_size=3), min_size=1, max_size=30), st.integers(1, 7))
def test_plain_csv_takes_the_fast_path_and_reads_the_same(table: list[list[str]], batch_size: int) -> None:
    read_like_the_csv_module(table, batch_size)


def test_batches_follow_batch_size_and_byte_budget_and_cover_every_line() -> None:
    text = (HEADER + "".join(",".join(r) + "\n" for r in rows(103))).encode()
    got = batches(text, batch_size=10)
    assert [b.count for b in got] == [10] * 10 + [3]
    small = batches(text, batch_size=50, max_bytes=8_000)
    assert all(len(b.body) <= 8_000 for b in small) and len(small) > 5
    for found in (got, small):
        assert [b.first_line for b in found] == [2] + [b.end_line + 1 for b in found[:-1]]
        assert found[-1].end_line == 104
        assert sum(b.count for b in found) == 103


def test_resume_skips_acknowledged_lines_and_keeps_line_numbers() -> None:
    text = (HEADER + "".join(",".join(r) + "\n" for r in rows(30))).encode()
    all_ops = operations(text, batch_size=7)
    got = batches(text, batch_size=7, skip_lines=11)
    assert got[0].first_line == 12
    assert [op for b in got for op in msgpack.unpackb(b.body)["operations"]] == all_ops[10:]


def test_empty_file_and_bad_header_are_input_errors() -> None:
    with pytest.raises(InputError, match="the file is empty: a CSV file starts with a header line"):
        batches(b"")
    with pytest.raises(InputError, match="line 1: the first column of the header must be \"handle\", not 'name'"):
        batches(b"name,URL\n88.118.8/A,u\n")


# -- reading JSON Lines ------------------------------------------------------------------------------------


def test_jsonl_lines_become_operations_and_bad_lines_are_rejected() -> None:
    good = {"handle": "88.118.8/A", "values": [wire(1, "URL", "https://a")]}
    lines = [
        json.dumps(good),
        "",
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"handle": "88.118.8/B"}),
        json.dumps({"handle": "88.118.8/C", "values": [], "ttl": 5}),
    ]
    [batch] = batches("\n".join(lines).encode() + b"\n", "jsonl")
    assert [(r.line, r.handle) for r in batch.rejected] == [(3, ""), (4, ""), (5, "88.118.8/B")]
    assert batch.rejected[0].message.startswith("not valid JSON: ")
    assert batch.rejected[1].message == 'each line must be a JSON object {"handle": "...", "values": [...]}'
    assert batch.rejected[2].message == '"values" must be a list of values'
    assert batch.records == 5 and batch.count == 2
    assert msgpack.unpackb(batch.body)["operations"] == [
        {"op": "create", **good},
        {"op": "create", "handle": "88.118.8/C", "values": []},
    ]
    assert batch.item(1)[0] == 6


def test_jsonl_value_that_msgpack_cannot_carry_is_rejected_alone() -> None:
    text = (
        b'{"handle": "88.118.8/A", "values": [{"index": 1, "ttl": 1e999999}]}\n'
        b'{"handle": "88.118.8/B", "values": [{"index": 99999999999999999999999}]}\n'
    )
    [batch] = batches(text, "jsonl")
    assert [(r.line, r.handle) for r in batch.rejected] == [(2, "88.118.8/B")]
    assert batch.rejected[0].message.startswith("cannot be encoded: ")
    assert batch.count == 1
