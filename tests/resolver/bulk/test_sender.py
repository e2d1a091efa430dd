"""Sending batches (resolver.bulk.sender): comparing what was sent with what is stored, reading answers,
and retrying against a node that fails (drops the connection after committing, stalls, answers 5xx, is a
mirror, is not there)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from resolver.bulk.sender import RetryPolicy, decode_reply, same_values
from resolver.names import parse_handle
from tests.conftest import free_port
from tests.resolver.bulk.cars import wire, write_csv
from tests.resolver.bulk.fake_node import FakeNode
from tests.resolver.bulk.runs import options, report_lines, run_quietly

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
    assert decode_reply(b"\xc1", "application/msgpack", 3) == {
        "responseCode": 2,
        "message": "the answer is not valid msgpack",
    }
    assert decode_reply(b"<html>", "text/html", 3) == {"responseCode": 2, "message": "<html>"}
    assert decode_reply(b"[1]", "application/json", 3) == {"responseCode": 2, "message": "unexpected answer"}


# -- retrying against a node that fails -------------------------------------------------------------------


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
    assert rejection["message"] == f"{data[25][0]} already exists"


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
