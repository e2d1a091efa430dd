"""``python -m benchmarks scale`` runs end to end with tiny numbers and reports every figure of issue 12."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from benchmarks.scale import _section, _topology, main, print_table
from benchmarks.scale_load import _boundaries
from benchmarks.scale_reads import NotAvailable
from nodes.running.topology_file import DEFAULT_TOPOLOGY


def test_chunks_end_at_every_chunk_at_the_checkpoint_and_at_the_total() -> None:
    assert _boundaries(3000, 1000, 1500) == [1000, 1500, 2000, 3000]
    assert _boundaries(2_500_000, 1_000_000, 100_000) == [100_000, 1_000_000, 2_000_000, 2_500_000]
    assert _boundaries(500, 1000, 0) == [500]


def test_the_recursive_node_can_hold_every_answer_of_the_fill() -> None:
    text = _topology(DEFAULT_TOPOLOGY.read_text(encoding="utf-8"), 1_000_000, 2)
    recursive = tomllib.loads(text)["nodes"]["recursive"]
    assert recursive["cache"]["max_entries"] >= 1_000_000
    assert recursive["workers"] == 2


def test_a_missing_interface_is_reported_not_available() -> None:
    def measure() -> dict[str, Any]:
        raise NotAvailable("GET /api/replication/digest: HTTP 404")

    section = _section("digest", measure, Console(quiet=True))
    assert section == {"available": False, "reason": "GET /api/replication/digest: HTTP 404"}


def _positive(result: dict[str, Any], *keys: str) -> float:
    value: Any = result
    for key in keys:
        assert isinstance(value, dict) and key in value, (keys, value)
        assert value.get("available") is not False, (keys, value)
        value = value[key]
    assert isinstance(value, int | float) and value > 0, (keys, value)
    return value


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_a_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    argv = ["--identifiers", "3000", "--chunk", "1000", "--answers", "2000", "--duration", "1", "--rounds", "1"]
    argv += ["--warmup", "1", "--latency-connections", "2"]
    assert main([*argv, "--connections", "8", "--samples", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())

    assert [c["to"] for c in result["load"]["chunks"]] == [1000, 1500, 2000, 3000]
    _positive(result, "load", "per_second")
    _positive(result, "load", "bytes_per_identifier")
    _positive(result, "load", "bytes_per_identifier_database")
    for point in ("at_checkpoint", "at_n"):
        _positive(result, "get_throughput", point, "rps_median")
        figures = result["get_throughput"][point]
        assert figures["failed"] == 0 and figures["non_2xx"] == 0, figures
    _positive(result, "get_throughput", "ratio")
    _positive(result, "get_latency_alone", "latency_ms", "p99")

    listing = result["listing"]
    assert int(listing["total"]) >= 3000
    for page in ("first_page", "deep_by_page", "deep_by_cursor", "count_only"):
        _positive(listing, page, "ms", "max")
    for page in ("first_page", "deep_by_page", "deep_by_cursor"):
        assert listing[page]["handles"] == 1000, (page, listing[page])
    for section in ("get_during_listing", "get_during_digest"):
        _positive(result, section, "get", "rps_median")
        _positive(result, section, "get", "latency_ms", "p99")
        _positive(result, section, "background", "requests")
        assert result[section]["background"]["failed"] == 0, result[section]
        assert result[section]["get"]["non_2xx"] == 0, result[section]

    for asked in ("status", "digest"):
        _positive(result, "digest", asked, "ms", "max")
    assert result["digest"]["status"]["records"] >= 3000

    mirror = result["mirror"]
    for figure in ("seconds", "records_per_second", "primary_peak_rss_mib", "mirror_peak_rss_mib"):
        _positive(mirror, figure)
    assert mirror["records"] >= 3000 and mirror["digest_equal"] is True

    recursive = result["recursive"]
    assert recursive["fill"]["answered"] == 2000 and recursive["fill"]["failed"] == 0, recursive["fill"]
    assert recursive["cache_entries_added"] >= 2000
    for figure in ("bytes_per_answer", "rss_at_1m_answers_mib", "worst_pause_ms", "worst_pause_ordinary_ms"):
        _positive(recursive, figure)
    for probe in ("probe", "probe_ordinary"):
        _positive(recursive, probe, "requests")
        assert recursive[probe]["errors"] == 0, recursive[probe]
    assert recursive["probe_ordinary"]["priority"] == "normal"
    kernel = recursive["kernel"]
    assert kernel["on_cpu_s"] > 0 and kernel["waited_for_cpu_s"] >= 0 and kernel["major_faults"] >= 0, kernel
    assert kernel["worst_interval"]["on_cpu_ms"] > 0, kernel
    # The probe's slowest requests, slowest first, each with the kernel's accounts around it (none
    # when it came before the first sample).
    slowest = recursive["worst_requests"]
    assert 1 <= len(slowest) <= 100 and slowest[0]["ms"] == recursive["worst_pause_ms"], slowest
    assert [r["ms"] for r in slowest] == sorted((r["ms"] for r in slowest), reverse=True), slowest
    # (uvloop's timers count whole milliseconds: a request may go out up to 1 ms before it is due).
    assert all(r["due"] > 0 and r["sent_late_ms"] > -1.5 and isinstance(r["kernel"], dict) for r in slowest), slowest
    # ... and how long the machine stood still meanwhile (a hiccup meter on each CPU), taken out.
    assert all(0 <= r["machine_stood_still_ms"] <= r["ms"] for r in slowest), slowest
    assert all(abs(r["ms_machine_out"] - (r["ms"] - r["machine_stood_still_ms"])) < 0.01 for r in slowest), slowest
    assert 0 < recursive["worst_pause_machine_out_ms"] <= recursive["worst_pause_ms"], recursive
    meters = recursive["machine"]
    assert set(meters) == {f"cpu{cpu}" for cpu in os.sched_getaffinity(0)}, meters
    assert all(m["seconds"] > 0 and m["count"] >= 0 and "hiccups" not in m for m in meters.values()), meters
    assert recursive["cpus"].startswith(("the node on CPU 0, everything else on CPU", "not pinned (")), recursive
    # Real-time where permitted (root with CAP_SYS_NICE), else ordinary and saying why.
    assert recursive["probe"]["priority"].startswith(("SCHED_FIFO 10", "normal (real-time not permitted")), recursive
    assert recursive["upstreams_marked_down"] == {}, recursive

    print_table(result, Console(record=True, width=200))  # the table prints from what was written
