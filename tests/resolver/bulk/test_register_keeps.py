"""A run from the beginning leaves an earlier run's checkpoint and report alone until its own first batch
is acknowledged, and only ever points to a checkpoint there is to go on from (resolver.bulk.register)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from resolver.bulk.register import load_checkpoint, save_checkpoint
from tests.resolver.bulk.cars import write_csv
from tests.resolver.bulk.fake_node import FakeNode
from tests.resolver.bulk.runs import options, report_lines, run_quietly


def finished_run(node: FakeNode, path: Path) -> tuple[bytes, bytes]:
    """A finished run of 20 cars and one bad row: (its checkpoint's bytes, its report's bytes)."""
    write_csv(path, 20, extra="88.118.8/,x,,,,,,\n")
    assert run_quietly(options(path, node.url, batch_size=5))[0] == 1
    checkpoint, report = path.with_name(path.name + ".idres-checkpoint"), path.with_name(path.name + ".rejected.jsonl")
    return checkpoint.read_bytes(), report.read_bytes()


def test_a_run_refused_at_its_first_batch_keeps_the_earlier_checkpoint_and_report(
    node: FakeNode, tmp_path: Path
) -> None:
    path = tmp_path / "cars.csv"
    checkpoint, report = finished_run(node, path)
    code, out = run_quietly(options(path, node.url, secret="mistyped"))
    assert code == 2 and "refused the credentials" in out
    assert "nothing to resume" in out, "the earlier run finished: there is nothing to go on from"
    assert path.with_name("cars.csv.idres-checkpoint").read_bytes() == checkpoint
    assert path.with_name("cars.csv.rejected.jsonl").read_bytes() == report


def test_a_run_that_starts_replaces_them(node: FakeNode, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    finished_run(node, path)
    code, out = run_quietly(options(path, node.url, batch_size=5, op="upsert"))
    assert code == 1, out
    assert [r["line"] for r in report_lines(path.with_name("cars.csv.rejected.jsonl"))] == [22], "not appended"
    found = load_checkpoint(path.with_name("cars.csv.idres-checkpoint"))
    assert found is not None and found.complete and found.op == "upsert"


def test_a_stopped_run_points_to_an_earlier_checkpoint_it_left_to_go_on_from(node: FakeNode, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    finished_run(node, path)
    where = path.with_name("cars.csv.idres-checkpoint")
    done = load_checkpoint(where)
    assert done is not None
    save_checkpoint(where, replace(done, lines=11, records=10, applied=10, rejected=0, report_bytes=0, complete=False))
    code, out = run_quietly(options(path, node.url, secret="mistyped"))
    assert code == 2
    assert f"lines 1 to 11 are done ({where}): run the same command with --resume" in " ".join(out.split())
