"""What `idres up` prints (nodes.running.summary): whole URLs and identities at any width, and commands
that run when pasted (issue 13, findings 1 and 2)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from nodes.running.summary import command_lines, print_nodes, say, shown_path
from nodes.running.topology_file import load_topology

WORDS = ["printf", "%s\\n", "resolve", "88.118.8/VIN-LFV3A23C5K3000417", "--server", "http://127.0.0.1:8000"]


def printed(width: int) -> list[str]:
    out = io.StringIO()
    print_nodes(Console(width=width, file=out), load_topology(None))
    return out.getvalue().splitlines()


@pytest.mark.parametrize("width", [40, 60, 80])
def test_a_command_is_broken_between_arguments_and_runs_as_printed(width: int) -> None:
    lines = command_lines([*WORDS, "with a space", "it's"], width)
    assert all(len(line) <= width for line in lines), lines
    assert all(line.endswith(" \\") for line in lines[:-1]), "each broken line continues the command"
    # The lines pasted into a shell run the one command, every argument whole.
    ran = subprocess.run(["sh", "-c", "\n".join(lines)], capture_output=True, text=True, check=True)
    assert ran.stdout.splitlines() == [*WORDS[2:], "with a space", "it's"]


def test_an_option_stays_with_its_value_and_a_long_argument_is_never_cut() -> None:
    lines = command_lines(WORDS, 40)
    assert "    --server http://127.0.0.1:8000" in lines
    long = "http://127.0.0.1:8000/api/handles/88.118.8/VIN-LFV3A23C5K3000417"
    assert command_lines(["curl", "-s", "-G", "-d", "trace=true", long], 40)[-1] == f"    {long}"


def test_at_80_columns_the_nodes_table_shows_every_url_and_identity_whole() -> None:
    lines = printed(80)
    assert all(len(line) <= 80 for line in lines), lines
    text = "\n".join(lines)
    for port in (8000, 8100, 8101, 8200, 8210, 8300, 8310):
        assert f"http://127.0.0.1:{port}" in text
    for identity in ("300:0.NA/88 ", "300:0.NA/88.118 ", "300:0.NA/88.119 ", "300:0.NA/88.118.8", "300:0.NA/88.119.6"):
        assert identity in text
    assert "…" not in text
    assert "chengdu-top is a mirror of chongqing-top" in text


def test_narrower_than_the_table_each_node_gets_a_block_of_its_own() -> None:
    lines = printed(50)
    assert all(len(line) <= 50 for line in lines), lines
    assert "automaker: enterprise, prefix 88.118.8" in lines
    assert "  http://127.0.0.1:8300" in lines
    assert "  operator 300:0.NA/88.118.8" in lines
    assert "…" not in "\n".join(lines)


def test_paths_are_shown_relative_to_the_working_directory_when_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "idres-data") == "idres-data"
    assert shown_path(tmp_path) == "."
    assert shown_path(tmp_path.parent / "elsewhere") == str(tmp_path.parent / "elsewhere")


def test_prose_wraps_at_spaces_and_never_cuts_a_path_in_two() -> None:
    out = io.StringIO()
    path = "/tmp/pytest-of-root/pytest-260/test_a_secret_other_than_the_o0/data/chongqing-top.sqlite3"
    say(Console(width=60, file=out), f"chongqing-top was last started with another secret (see {path}).\nUse it.")
    lines = out.getvalue().splitlines()
    assert f"{path})." in lines, lines
    assert lines[-1] == "Use it.", "each line of the text starts a line"
    assert all(len(line) <= 60 for line in lines if path not in line), lines
