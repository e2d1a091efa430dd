"""``idres register``: reading CSV and JSON Lines into batches, and sending them to a node that may fail.

The node is ``FakeNode``: ``POST /api/batch`` and ``GET /api/handles/...`` as the server contract says,
in memory, in a thread of the test process, with failures on demand (commit and then drop the
connection, commit and then stall past the client's timeout, answer 503). The CLI runs as a subprocess
where a test kills it.
"""

from __future__ import annotations

import asyncio
import csv
import fcntl
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from benchmarks.datagen import COLUMNS, rows
from nodes.cli.register_run import run
from resolver.bulk.reader import BatchReader, Column, InputError, parse_header
from resolver.bulk.register import RegisterOptions, load_checkpoint, save_checkpoint
from resolver.bulk.sender import RetryPolicy, decode_reply, same_values
from resolver.client import basic_auth
from resolver.errors import InvalidHandle, InvalidValue
from resolver.names import parse_handle
from resolver.values import value_from_wire, value_to_wire
from tests.conftest import free_port

IDENTITY = "300:0.NA/88.118.8"
SECRET = "bulk-secret-for-tests"
HEADER = "handle,URL,MODEL,MANUFACTURER,SUPPLIER,BATCH,PRODUCTION_DATE,COMPONENT\n"


# -- the fake node ----------------------------------------------------------------------------------


class FakeNode:
    """The batch endpoint's contract in memory. ``creates`` counts how often each handle was created."""

    def __init__(self, prefix: str = "88.118.8") -> None:
        self.prefix = prefix
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.creates: Counter[str] = Counter()
        self.requests = 0
        self.delay = 0.0  # after committing, before answering
        self.drop_after_commit: set[int] = set()  # request numbers (from 1) whose connection is dropped
        self.stall_after_commit: dict[int, float] = {}  # request number -> seconds to wait before answering
        self.fail: dict[int, int] = {}  # request number -> HTTP status, without committing
        self.mirror = False
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/batch", self._batch)
        app.router.add_get("/api/handles/{handle:.+}", self._get)
        return app

    @staticmethod
    def _answer(status: int, body: dict[str, Any]) -> web.Response:
        return web.Response(status=status, body=msgpack.packb(body), content_type="application/msgpack")

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        number = self.requests
        if request.headers.get("Authorization") != basic_auth(IDENTITY, SECRET):
            return self._answer(401, {"responseCode": 403, "message": f"authentication failed for {IDENTITY}"})
        if self.mirror:
            return self._answer(503, {"responseCode": 7, "message": "this node is a mirror"})
        if number in self.fail:
            return self._answer(self.fail[number], {"responseCode": 2, "message": "injected failure"})
        operations = msgpack.unpackb(await request.read())["operations"]
        assert len(operations) <= 10_000
        results = [self._apply(op) for op in operations]
        failed = sum(r["responseCode"] != 1 for r in results)
        if self.delay:
            await asyncio.sleep(self.delay)
        if number in self.drop_after_commit:
            assert request.transport is not None
            request.transport.close()  # committed, and the client never hears of it
            return web.Response(status=500)
        if number in self.stall_after_commit:
            await asyncio.sleep(self.stall_after_commit[number])
        body = {"responseCode": 1, "applied": len(results) - failed, "failed": failed, "lastSeq": number}
        return self._answer(200, {**body, "results": results})

    def _apply(self, op: dict[str, Any]) -> dict[str, Any]:
        text = op.get("handle")
        try:
            handle = parse_handle(text) if isinstance(text, str) else parse_handle("")
        except InvalidHandle as exc:
            return {"responseCode": 102, "handle": text, "message": exc.message}
        if handle.prefix != self.prefix:
            return {"responseCode": 301, "handle": text, "message": f"{handle.prefix} is not served here"}
        try:
            values = [value_from_wire(v, position=i, now=int(time.time())) for i, v in enumerate(op["values"], 1)]
        except InvalidValue as exc:
            return {"responseCode": 202, "handle": text, "message": exc.message}
        if op["op"] == "create" and handle.key in self.records:
            return {"responseCode": 101, "handle": text, "message": f"{text} already exists"}
        self.records[handle.key] = [value_to_wire(v) for v in values]
        self.creates[handle.key] += 1
        return {"responseCode": 1, "handle": text}

    async def _get(self, request: web.Request) -> web.Response:
        text = request.match_info["handle"]
        values = self.records.get(parse_handle(text).key)
        if values is None:
            return self._answer(404, {"responseCode": 100, "handle": text, "message": "Handle Not Found"})
        return self._answer(200, {"responseCode": 1, "handle": text, "values": values})


@pytest.fixture
def node() -> Iterator[FakeNode]:
    """A FakeNode serving on a free port in a thread of its own, with its own event loop."""
    fake, port = FakeNode(), free_port()
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        runner = web.AppRunner(fake.app(), handler_cancellation=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


# -- helpers -------------------------------------------------------------------------------------------


def write_csv(path: Path, count: int, *, seed: int = 0, extra: str = "") -> list[list[str]]:
    data = list(rows(count, seed=seed))
    path.write_text(HEADER + "".join(",".join(r) + "\n" for r in data) + extra)
    return data


def batches(text: bytes, fmt: str = "csv", **kw: Any) -> list[Any]:
    return list(BatchReader(io.BytesIO(text), fmt=fmt, op=kw.pop("op", "create"), **kw))


def operations(text: bytes, fmt: str = "csv", **kw: Any) -> list[dict[str, Any]]:
    return [op for b in batches(text, fmt, **kw) if b.body for op in msgpack.unpackb(b.body)["operations"]]


def options(path: Path, server: str, **kw: Any) -> RegisterOptions:
    kw.setdefault("policy", RetryPolicy(retries=3, backoff=0.05, timeout=10))
    return RegisterOptions(path, server, IDENTITY, kw.pop("secret", SECRET), **kw)


def run_quietly(opts: RegisterOptions) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, width=200)
    code = run(opts, console, show_progress=False, summary=console)
    return code, out.getvalue()


def report_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def idres(*args: str, secret: str | None = SECRET, **kw: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "IDRES_SECRET"}
    if secret is not None:
        env["IDRES_SECRET"] = secret
    cmd = [sys.executable, "-m", "nodes", "register", *args]
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def wire(index: int, vtype: str, value: str) -> dict[str, Any]:
    return {"index": index, "type": vtype, "data": {"format": "string", "value": value}}


def bare(index: int, vtype: str, value: str) -> dict[str, Any]:
    """A CSV cell as it is sent: HANDLE.NET's short form, string data without a format."""
    return {"index": index, "type": vtype, "data": value}


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
    assert "2 cells, but the header has 3 columns" in batch.rejected[0].message
    assert "not valid UTF-8" in batch.rejected[2].message
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
    with pytest.raises(InputError, match="empty"):
        batches(b"")
    with pytest.raises(InputError, match="line 1"):
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
    assert "not valid JSON" in batch.rejected[0].message
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
    assert batch.count == 1


# -- comparing records and reading answers ---------------------------------------------------------------


def test_same_values_ignores_timestamps_and_defaults_but_not_data() -> None:
    sent = [wire(1, "URL", "https://a"), {"index": 2, "type": "MODEL", "data": "M"}]
    stored = [
        {**wire(1, "URL", "https://a"), "ttl": 86400, "timestamp": "2026-01-01T00:00:00Z"},
        {**wire(2, "MODEL", "M"), "ttl": 86400, "timestamp": "2026-01-01T00:00:00Z"},
    ]
    assert same_values(sent, stored)
    assert not same_values(sent, [stored[0]])
    assert not same_values(sent, [stored[0], {**stored[1], "data": {"format": "string", "value": "N"}}])
    assert not same_values(sent, [stored[0], {**stored[1], "ttl": 60}])


def test_all_applied_answers_skip_the_results() -> None:
    results = [{"responseCode": 1, "handle": f"88.118.8/{i}"} for i in range(3)]
    raw = msgpack.packb({"responseCode": 1, "applied": 3, "failed": 0, "lastSeq": 9, "results": results})
    assert decode_reply(raw, "application/msgpack", 3)["results"] is None
    assert decode_reply(raw, "application/msgpack", 4)["results"] == results
    assert decode_reply(b"\xc1", "application/msgpack", 3)["responseCode"] == 2
    assert decode_reply(b"<html>", "text/html", 3)["message"] == "<html>"


# -- registering against the fake node ------------------------------------------------------------------


def test_bad_rows_are_reported_one_by_one_and_every_good_row_lands(node: FakeNode, tmp_path: Path) -> None:
    data = write_csv(
        tmp_path / "cars.csv",
        200,
        extra="88.118.8/,https://x,,,,,,\n99.1/WRONG,https://x,,,,,,\n88.118.8/SHORT,x\n",
    )
    (tmp_path / "cars.csv").write_text(
        (tmp_path / "cars.csv").read_text() + f"{data[5][0]},https://dup,,,,,,\n"  # a different record: taken
    )
    code, out = run_quietly(options(tmp_path / "cars.csv", node.url, batch_size=40, concurrency=3))
    assert code == 1
    assert "applied 200, rejected 4, already present (verified) 0" in out
    assert report_lines(tmp_path / "cars.csv.rejected.jsonl") == [
        {"line": 202, "handle": "88.118.8/", "responseCode": 102, "message": "empty suffix"},
        {"line": 203, "handle": "99.1/WRONG", "responseCode": 102, "message": node_message("99.1/WRONG")},
        {
            "line": 204,
            "handle": "88.118.8/SHORT",
            "responseCode": 4,
            "message": "the row has 2 cells, but the header has 8 columns",
        },
        {"line": 205, "handle": data[5][0], "responseCode": 101, "message": f"{data[5][0]} already exists"},
    ]
    assert sorted(node.records) == sorted(r[0] for r in data)
    assert set(node.creates.values()) == {1}
    car = data[1]
    sent = [wire(i, t, v) for i, (t, v) in enumerate(zip(COLUMNS, car[1:], strict=True), 1) if v]
    assert same_values(sent, node.records[car[0]])
    checkpoint = load_checkpoint(tmp_path / "cars.csv.idres-checkpoint")
    assert checkpoint is not None and checkpoint.complete and checkpoint.lines == 205


def node_message(handle: str) -> str:
    try:
        parse_handle(handle)
    except InvalidHandle as exc:
        return exc.message
    raise AssertionError(handle)


def test_everything_good_exits_0_and_writes_no_report(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "ok.csv", 120)
    (tmp_path / "ok.csv.rejected.jsonl").write_text("stale\n")
    code, out = run_quietly(options(tmp_path / "ok.csv", node.url, batch_size=25))
    assert code == 0, out
    assert "applied 120, rejected 0" in out
    assert not (tmp_path / "ok.csv.rejected.jsonl").exists()
    assert len(node.records) == 120


@pytest.mark.parametrize("failure", ["drop", "stall"])
def test_retry_of_a_committed_batch_is_no_false_rejection(node: FakeNode, tmp_path: Path, failure: str) -> None:
    """The node commits batch 2 and then drops the connection, or answers after the client gave up:
    the retry is told "already exists" for every row of it, checks them, and counts them as applied."""
    data = write_csv(tmp_path / "cars.csv", 100)
    if failure == "drop":
        node.drop_after_commit = {2}
    else:
        node.stall_after_commit = {2: 3.0}
    opts = options(
        tmp_path / "cars.csv",
        node.url,
        batch_size=20,
        concurrency=1,
        policy=RetryPolicy(retries=3, backoff=0.05, timeout=1.0),
    )
    code, out = run_quietly(opts)
    assert code == 0, out
    assert "applied 80, rejected 0, already present (verified) 20" in out
    assert "retrying" in out
    assert sorted(node.records) == sorted(r[0] for r in data)
    assert set(node.creates.values()) == {1}


def test_a_genuine_duplicate_in_a_retried_batch_is_still_rejected(node: FakeNode, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "cars.csv", 40)
    node.records[parse_handle(data[25][0]).key] = [wire(1, "URL", "https://someone-else")]
    node.drop_after_commit = {2}
    code, out = run_quietly(options(tmp_path / "cars.csv", node.url, batch_size=20, concurrency=1))
    assert code == 1, out
    assert "applied 20, rejected 1, already present (verified) 19" in out
    [rejection] = report_lines(tmp_path / "cars.csv.rejected.jsonl")
    assert (rejection["line"], rejection["responseCode"]) == (27, 101)


def test_5xx_is_retried_and_gives_up_with_exit_2(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 30)
    node.fail = {1: 500, 2: 502}
    code, out = run_quietly(options(tmp_path / "cars.csv", node.url, batch_size=30))
    assert code == 0, out
    assert len(node.records) == 30
    node.fail = {n: 503 for n in range(1, 100)}
    write_csv(tmp_path / "more.csv", 10, seed=1)
    code, out = run_quietly(options(tmp_path / "more.csv", node.url, policy=RetryPolicy(retries=2, backoff=0.01)))
    assert code == 2
    assert "failed 3 times (last: HTTP 503" in out


def test_a_mirror_stops_the_run_with_exit_2(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    node.mirror = True
    code, out = run_quietly(options(tmp_path / "cars.csv", node.url))
    assert code == 2
    assert "is a mirror and refuses writes" in out


def test_unreachable_server_exits_2(tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    opts = options(tmp_path / "cars.csv", f"http://127.0.0.1:{free_port()}", policy=RetryPolicy(1, backoff=0.01))
    code, out = run_quietly(opts)
    assert code == 2
    assert "cannot connect" in out


def test_resume_refuses_a_file_that_changed(node: FakeNode, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    write_csv(path, 20)
    assert run_quietly(options(path, node.url, batch_size=5))[0] == 0
    write_csv(path, 21)
    code, out = run_quietly(options(path, node.url, resume=True))
    assert code == 2
    assert "changed since" in out


def test_resume_reports_each_rejection_once_and_checks_what_landed(node: FakeNode, tmp_path: Path) -> None:
    """A run stopped after its report got a batch's rejections but before its checkpoint did: the
    resumed run cuts the report back, sends that batch again, and finds its rows already there."""
    path = tmp_path / "cars.csv"
    data = write_csv(path, 30)
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = lines[25] = "88.118.8/,x,,,,,,\n"  # rejected: lines 5 and 26
    path.write_text("".join(lines))
    assert run_quietly(options(path, node.url, batch_size=10))[0] == 1
    report = path.with_name("cars.csv.rejected.jsonl")
    first_line = report.read_bytes().splitlines(keepends=True)[0]
    finished = load_checkpoint(path.with_name("cars.csv.idres-checkpoint"))
    assert finished is not None
    stopped = replace(finished, lines=11, records=10, applied=9, rejected=1, complete=False)
    stopped = replace(stopped, report_bytes=len(first_line))
    save_checkpoint(path.with_name("cars.csv.idres-checkpoint"), stopped)
    code, out = run_quietly(options(path, node.url, batch_size=10, resume=True))
    assert code == 1
    assert "applied 9, rejected 2, already present (verified) 19 (resumed after line 11)" in out
    assert [r["line"] for r in report_lines(report)] == [5, 26]
    assert set(node.creates.values()) == {1} and len(node.records) == len(data) - 2
    # Without --resume a run starts over: the old checkpoint and report go, duplicates are duplicates.
    assert run_quietly(options(path, node.url, batch_size=10))[0] == 1
    assert len(report_lines(report)) == 30


def test_a_second_run_on_the_same_file_stops(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    with (tmp_path / "cars.csv").open("rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        code, out = run_quietly(options(tmp_path / "cars.csv", node.url))
    assert code == 2
    assert "another idres register is working on" in out
    assert not node.records


# -- the command line ------------------------------------------------------------------------------------


def test_cli_kill_halfway_and_resume_lands_every_identifier_exactly_once(node: FakeNode, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    data = write_csv(path, 3000, extra="88.118.8/bad\x07,x,,,,,,\n")
    node.delay = 0.05  # commit, then answer a little later: at the kill some commits are unacknowledged
    args = [str(path), "--server", node.url, "--user", IDENTITY, "--batch-size", "50", "--concurrency", "4"]
    proc = idres(*args)
    checkpoint = path.with_name("cars.csv.idres-checkpoint")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = load_checkpoint(checkpoint)
        if found is not None and found.lines >= 1000:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    interrupted = load_checkpoint(checkpoint)
    assert interrupted is not None and 1000 <= interrupted.lines < 3000 and not interrupted.complete
    assert len(node.records) >= interrupted.records  # and often more: committed, not yet acknowledged

    proc = idres(*args, "--resume")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err  # the one bad row
    assert "rejected 1," in out
    assert sorted(node.records) == sorted(r[0] for r in data)
    assert set(node.creates.values()) == {1}  # each created exactly once
    [bad] = report_lines(path.with_name("cars.csv.rejected.jsonl"))
    assert (bad["line"], bad["responseCode"]) == (3002, 102)
    final = load_checkpoint(checkpoint)
    assert final is not None and final.complete and final.applied + final.verified == 3000


def test_cli_wrong_secret_exits_2(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    proc = idres(str(tmp_path / "cars.csv"), "--server", node.url, "--user", IDENTITY, secret="wrong")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"refused the credentials of {IDENTITY}" in err
    assert not node.records


def test_cli_takes_the_secret_from_a_prompt_never_from_the_command_line(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    base = [str(tmp_path / "cars.csv"), "--server", node.url, "--user", IDENTITY]
    for option in ("--secret", "--password"):
        proc = idres(*base, option, SECRET)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "No such option" in err
    proc = idres(*base, secret=None, stdin=subprocess.PIPE)
    out, err = proc.communicate(SECRET + "\n", timeout=60)
    assert proc.returncode == 0, err
    assert "Secret of 300:0.NA/88.118.8" in err and SECRET not in out + err
    assert len(node.records) == 10


def test_cli_bad_input_exits_2_with_a_message(node: FakeNode, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("name,URL\n88.118.8/A,u\n")
    proc = idres(str(tmp_path / "bad.csv"), "--server", node.url, "--user", IDENTITY)
    assert proc.wait(60) == 2
    assert 'the first column of the header must be "handle"' in proc.communicate()[1]
    (tmp_path / "data.txt").write_text("x")
    proc = idres(str(tmp_path / "data.txt"), "--server", node.url, "--user", IDENTITY)
    assert proc.wait(60) == 2
    assert "cannot tell the format" in proc.communicate()[1]
    proc = idres(str(tmp_path / "bad.csv"), "--server", node.url, "--user", "nope")
    assert proc.wait(60) == 2
    assert "--user" in proc.communicate()[1]


# -- against a real node ----------------------------------------------------------------------------------

OPERATOR = "operator-secret-for-register-tests"


@pytest.fixture
def real_node(tmp_path: Path) -> Iterator[str]:
    """The default topology's enterprise node for 88.118.8 (`idres serve`), alone, on a free port."""
    from nodes.running.topology_file import DEFAULT_TOPOLOGY

    port = free_port()
    text = re.sub(r'listen = "127\.0\.0\.1:8300"', f'listen = "127.0.0.1:{port}"', DEFAULT_TOPOLOGY.read_text())
    topology = tmp_path / "topology.toml"
    topology.write_text(text)
    env = {**os.environ, "IDRES_ADMIN_SECRET": OPERATOR}
    cmd = [sys.executable, "-m", "nodes", "serve", "--node", "automaker", "--topology", str(topology)]
    proc = subprocess.Popen([*cmd, "--data", str(tmp_path / "data")], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while health(url) is None:
        assert proc.poll() is None and time.monotonic() < deadline, "the node did not start"
        time.sleep(0.1)
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()


def health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
            body: dict[str, Any] = json.loads(answer.read())
            return body
    except OSError:
        return None


def stored(url: str, handle: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/handles/{handle}", timeout=5) as answer:
        values: list[dict[str, Any]] = json.loads(answer.read())["values"]
        return values


@pytest.mark.integration
def test_real_node_kill_halfway_and_resume_lands_every_identifier_once(real_node: str, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    data = write_csv(path, 30_000, extra="88.118.8/bad\x07,x,,,,,,\n")
    first_seq = health(real_node)["lastSeq"]  # type: ignore[index]
    args = [str(path), "--server", real_node, "--user", "300:0.NA/88.118.8", "--batch-size", "500"]
    proc = idres(*args, secret=OPERATOR)
    checkpoint = path.with_name("cars.csv.idres-checkpoint")
    deadline = time.monotonic() + 60
    while (found := load_checkpoint(checkpoint)) is None or found.lines < 6000:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    interrupted = load_checkpoint(checkpoint)
    assert interrupted is not None and interrupted.lines < 30_000

    proc = idres(*args, "--resume", secret=OPERATOR)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "rejected 1," in out
    # Each create is one change-log entry: exactly 30,000 more means none landed twice, none was lost.
    assert health(real_node)["lastSeq"] == first_seq + 30_000  # type: ignore[index]
    [bad] = report_lines(path.with_name("cars.csv.rejected.jsonl"))
    assert (bad["line"], bad["handle"], bad["responseCode"]) == (30_002, "88.118.8/bad\x07", 102)
    for row in (data[0], data[12_345], data[-1]):
        sent = [bare(i, t, v) for i, (t, v) in enumerate(zip(COLUMNS, row[1:], strict=True), 1) if v]
        assert same_values(sent, stored(real_node, row[0]))


@pytest.mark.integration
def test_real_node_wrong_secret_exits_2(real_node: str, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    proc = idres(str(tmp_path / "cars.csv"), "--server", real_node, "--user", "300:0.NA/88.118.8", secret="nope")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "refused the credentials of 300:0.NA/88.118.8" in err
