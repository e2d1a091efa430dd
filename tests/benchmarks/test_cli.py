"""``python -m benchmarks``: one help style for every command, no secret on the command line, and
result tables whose rows can be told apart at 80 columns (issue 13, findings 1 and 9)."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from rich.console import Console

from benchmarks import compare, failover, resolve, scale, tls, workers
from benchmarks.__main__ import main as benchmarks_main
from benchmarks.bulk import with_durability
from nodes.running.topology_file import DEFAULT_TOPOLOGY, load_topology

ROOT = Path(__file__).resolve().parents[2]
# The commands whose options argparse reads (click hands them their arguments untouched).
ARGPARSE = {
    "resolve": resolve,
    "failover": failover,
    "tls": tls,
    "workers": workers,
    "compare": compare,
    "scale": scale,
}
CLICK = [name for name in benchmarks_main.commands if name not in ARGPARSE]
ALL = sorted(benchmarks_main.commands)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks ARGS`` as a user runs it, in an 80-column terminal."""
    environment = {**os.environ, "COLUMNS": "80", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=environment, capture_output=True, text=True
    )


def summary(name: str) -> str:
    """The command's description as ``python -m benchmarks --help`` has it (its docstring)."""
    return " ".join((benchmarks_main.commands[name].help or "").split())


@pytest.mark.parametrize("name", ALL)
def test_every_command_helps_in_the_one_style(name: str) -> None:
    done = run(name, "--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"Usage: python -m benchmarks {name} [OPTIONS]")
    assert summary(name) in " ".join(done.stdout.split()), "the description differs from the command list's"
    assert "Options:" in lines
    options = [line.split()[0] for line in lines if line.startswith("  --")]
    assert options[-1] == "--help" and "  --help" in done.stdout and "Show this message and exit." in done.stdout
    assert max(len(line) for line in lines) <= 80, "help wider than the terminal"


@pytest.mark.parametrize("name", sorted(ARGPARSE))
def test_every_argparse_option_has_help_and_shows_its_default(name: str) -> None:
    module = ARGPARSE[name]
    parser: argparse.ArgumentParser = module.parser()
    assert " ".join(module.SUMMARY.split()) == summary(name)
    shown = " ".join(parser.format_help().split())
    listed = [a for a in parser._actions if a.help != argparse.SUPPRESS]  # not --secret: gone, says so when named
    options = shown.index(" Options: ")  # the description may name an option too
    starts = [shown.index(f" {a.option_strings[0]} ", options) for a in listed]
    for action, start in zip(listed, starts, strict=True):
        assert action.help, f"{name} {action.option_strings}: no help"
        after = [s for s in starts if s > start]
        entry = shown[start : min(after, default=len(shown))]
        has_default = action.default is not None and action.default is not False and not action.required
        assert ("[default: " in entry) == (has_default and action.option_strings != ["--help"]), entry


@pytest.mark.parametrize("name", CLICK)
def test_every_click_option_has_help_and_shows_its_default(name: str) -> None:
    for param in benchmarks_main.commands[name].params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{name} {param.opts}: no help"
            assert param.default is None or param.show_default, f"{name} {param.opts}: default not shown"


@pytest.mark.parametrize("name", ["resolve", "failover"])
def test_a_secret_on_the_command_line_is_refused_with_where_it_goes(name: str) -> None:
    done = run(name, "--secret", "s3cret")
    assert done.returncode == 2
    assert "--secret is gone: set IDRES_ADMIN_SECRET in the environment" in done.stderr
    assert "--secret" not in run(name, "--help").stdout


def test_running_nodes_are_measured_with_the_secret_from_the_environment() -> None:
    assert "$IDRES_ADMIN_SECRET" in " ".join(run("resolve", "--help").stdout.split())


# -- result tables at 80 columns ------------------------------------------------------------------------


def rendered(print_table: Any, result: dict[str, Any]) -> str:
    console = Console(width=80, file=io.StringIO())
    print_table(result, console)
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return text


def _figures(rps: int) -> dict[str, Any]:
    latency = {"p50": 1.64, "p90": 1.89, "p99": 3.09, "p99.9": 7.99}
    return {
        "rps_median": rps,
        "rps_runs": [rps - 1000, rps, rps + 1000],
        "latency_ms": latency,
        "failed": 0,
        "non_2xx": 0,
    }


def _cold(hops: float) -> dict[str, Any]:
    return {
        "count": 2000.0,
        "mean": 1.7,
        "p50": 1.61,
        "p90": 2.0,
        "p99": 2.68,
        "p99.9": 4.96,
        "max": 23.3,
        "upstream_queries_per_request": hops,
    }


def test_resolve_rows_can_be_told_apart_at_80_columns() -> None:
    result = {
        "load": {
            name: _figures(37_080)
            for name in (
                "recursive_hot",
                "baseline_preencoded",
                "baseline_encode",
                "authoritative_automaker",
                "front_door_redirect",
                "front_door_page",
            )
        },
        "cold": {"cold_three_level": _cold(3.0), "miss_referral_cached": _cold(1.0)},
        "targets": {
            "hot_ratio_vs_preencoded": 0.935,
            "hot_ratio_vs_preencoded_paired_median": 0.935,
            "hot_ratio_vs_preencoded_paired": [0.9],
            "hot_ratio_target": 0.9,
            "hot_ratio_vs_encode": 1.4,
            "cold_p99_ms": 2.68,
            "cold_p99_target_ms": 5.0,
        },
    }
    text = rendered(resolve.print_table, result)
    assert "…" not in text
    words = " ".join(text.replace("│", " ").replace("┃", " ").split())
    for label in resolve.TARGET_LABELS.values():
        assert all(word in words for word in label.split()), f"{label!r} is cut"
    assert "37,080" in words and "2.68" in words and "36,080 / 37,080 / 38,080" in words
    assert max(len(line) for line in text.splitlines()) <= 80


def test_failover_rows_cut_nothing_at_80_columns() -> None:
    row = {"second": 10, "requests": 300, "failed": 0, "p50_ms": 1.52, "p99_ms": 3.23, "max_ms": 7.6}
    per_second = [{**row, "by_primary": 150, "by_backup": 150}]
    figures = {"events": {"kill": 10.0, "restart": 10.2}, "failed": 0, "p99_kill_second_ms": 3.23, "requests": 300}
    figures |= {"p99_before_kill_ms": 3.15, "first_backup_answer_after_kill_s": 0.01, "requests_that_failed_over": 2}
    figures |= {"backup_alone_after_kill_s": 0.01, "primary_again_after_restart_s": 0.8}
    figures |= {"answered_by_primary_after_restart": 2527}
    result = {"victim": "chongqing-top", "backup": "chengdu-top", "figures": figures, "per_second": per_second}
    text = rendered(failover.print_results, {"top": result})
    words = " ".join(text.replace("│", " ").split())
    assert "…" not in text and "10 kill" in words and " restart " in words  # the label wraps, whole


def test_tls_and_workers_tables_cut_nothing_at_80_columns() -> None:
    pair = {"plain": _figures(14_140), "tls": _figures(10_483), "ratio": 0.74, "ratio_paired_median": 0.74}
    cold = {v: {**_cold(3.0), "failed": 0, "upstream_queries_by_scheme": {v: 1500.0}} for v in ("plain", "tls")}
    tls_result = {
        "setup": {"connections": 64},
        "hot_keepalive": pair,
        "new_connection": pair,
        "cold_three_level": {"plain": cold["plain"], "tls": cold["tls"]},
    }
    assert "…" not in rendered(tls.print_table, tls_result)
    one = {
        "rps": 11_909,
        "rps_runs": [10_356, 11_909],
        "latency_ms": {"p99": 10.84},
        "hit_ratio": 1.0,
        "failed": 0,
        "non_2xx": 0,
    }
    text = rendered(workers.print_table, {"workers_1": one, "workers_2": one, "ratio": 1.8, "ratio_rounds": [1.8]})
    assert "…" not in text and "hit ratio (lowest round)" in " ".join(text.replace("│", " ").split())


# -- bulk: --durability ---------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_bulk_sets_the_durability_of_the_enterprise_node_only(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "topology.toml"
    path.write_text(with_durability(DEFAULT_TOPOLOGY.read_text(), "automaker", durability))
    topology = load_topology(path)
    assert topology.node("automaker").durability == durability
    assert {spec.durability for name, spec in topology.nodes.items() if name != "automaker"} == {"full"}


@pytest.mark.integration
def test_bulk_runs_with_normal_durability_and_says_so(tmp_path: Path) -> None:
    done = run("bulk", "--count", "2000", "--durability", "normal", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "durability normal" in " ".join(done.stdout.split()) and "load average" in done.stdout
    figures = json.loads((tmp_path / "bulk.json").read_text())
    assert figures["options"]["durability"] == "normal" and figures["identifiers"] == 2000
    assert figures["idres_register"]["per_second"] > 0


def test_bulk_refuses_an_unknown_durability() -> None:
    done = run("bulk", "--durability", "off")
    assert done.returncode == 2 and "'off' is not one of 'full', 'normal'" in done.stderr
