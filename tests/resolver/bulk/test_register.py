"""Registering a file (resolver.bulk.register): every good row lands once, bad rows are reported with their
line, and a stopped run resumes from its checkpoint. The node is ``FakeNode``."""

from __future__ import annotations

import fcntl
from dataclasses import replace
from pathlib import Path

from resolver.bulk.register import load_checkpoint, save_checkpoint
from resolver.bulk.sender import same_values
from tests.resolver.bulk.cars import sent_values, wire, write_csv
from tests.resolver.bulk.fake_node import FakeNode, node_message
from tests.resolver.bulk.runs import options, report_lines, run_quietly


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
    assert same_values(sent_values(car, wire), node.records[car[0]])
    checkpoint = load_checkpoint(tmp_path / "cars.csv.idres-checkpoint")
    assert checkpoint is not None and checkpoint.complete and checkpoint.lines == 205


def test_everything_good_exits_0_and_writes_no_report(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "ok.csv", 120)
    (tmp_path / "ok.csv.rejected.jsonl").write_text("stale\n")
    code, out = run_quietly(options(tmp_path / "ok.csv", node.url, batch_size=25))
    assert code == 0, out
    assert "applied 120, rejected 0" in out
    assert not (tmp_path / "ok.csv.rejected.jsonl").exists()
    assert len(node.records) == 120


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
