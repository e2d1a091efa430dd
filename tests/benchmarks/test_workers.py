"""The workers benchmark's own logic (benchmarks/workers.py); its figures come from real runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.workers import _hit_ratio, _topology_with_workers, main
from nodes.running.topology_file import load_topology


def test_the_second_topology_runs_its_recursive_node_on_n_workers(tmp_path: Path) -> None:
    topology = load_topology(_topology_with_workers(tmp_path, 3))
    assert topology.node("recursive").workers == 3
    assert all(spec.workers == 1 for name, spec in topology.nodes.items() if name != "recursive")


def test_the_hit_ratio_is_of_the_measured_run_only() -> None:
    before = {"hits": 100.0, "misses": 50.0, "entries": 10.0}
    assert _hit_ratio(before, {"hits": 1100.0, "misses": 50.0, "entries": 10.0}) == 1.0
    assert _hit_ratio(before, {"hits": 1000.0, "misses": 150.0, "entries": 10.0}) == 0.9
    assert _hit_ratio(before, before) == 0.0


def test_nonsense_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--workers", "1"])
    assert exited.value.code == 2
    assert "need --workers >= 2" in capsys.readouterr().err
