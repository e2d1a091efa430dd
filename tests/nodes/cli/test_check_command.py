"""``idres check`` (nodes.running.check): the full integrity check of the nodes' files, one line per node,
exit status 1 when any is damaged or emptied."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from nodes.cli.main import main
from resolver.storage.base import Write
from resolver.storage.sqlite import SQLiteStorage
from tests.resolver.storage.cases import url

AUTHORITATIVE = ["chongqing-top", "chengdu-top", "auto-secondary", "elec-secondary", "automaker", "batterymaker"]


def stored(path: Path, records: int = 2_000) -> Path:
    """A node's file holding ``records`` records (about 500 KB at 2,000)."""

    async def write() -> None:
        store = await SQLiteStorage.open(path)
        await store.write([Write(f"88.118.8/VIN-{n:06d}", url(f"{n}-{'x' * 200}")) for n in range(records)])
        await store.close()

    asyncio.run(write())
    return path


def idres_check(data: Path, *nodes: str) -> tuple[int, list[str]]:
    args = ["check", "--data", str(data), *(arg for node in nodes for arg in ("--node", node))]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output.splitlines()


def test_healthy_files_and_nodes_never_started_are_ok(tmp_path: Path) -> None:
    automaker = stored(tmp_path / "automaker.sqlite3")
    code, lines = idres_check(tmp_path)
    assert code == 0
    assert [line.split(":")[0] for line in lines] == AUTHORITATIVE  # no line for the recursive node
    assert f"automaker: ok ({automaker})" in lines
    assert (
        f"batterymaker: no database yet ({tmp_path / 'batterymaker.sqlite3'}): the node has not stored anything"
        in lines
    )

    assert idres_check(tmp_path, "automaker") == (0, [f"automaker: ok ({automaker})"])


def test_a_damaged_file_is_reported_with_exit_status_1(tmp_path: Path) -> None:
    automaker = stored(tmp_path / "automaker.sqlite3")
    stored(tmp_path / "batterymaker.sqlite3")
    with automaker.open("r+b") as f:
        f.seek(automaker.stat().st_size // 2)
        f.write(b"\xa5" * 20 * 1024)

    code, lines = idres_check(tmp_path, "automaker", "batterymaker")
    assert code == 1
    assert lines[0].startswith(f"automaker: {automaker} is damaged (SQLite found: ")
    assert lines[0].endswith("`idres check` runs the full integrity check")
    assert lines[1] == f"batterymaker: ok ({tmp_path / 'batterymaker.sqlite3'})"


def test_an_emptied_file_a_node_used_is_reported(tmp_path: Path) -> None:
    stored(tmp_path / "chongqing-top.sqlite3", records=1).write_bytes(b"")
    code, lines = idres_check(tmp_path, "chongqing-top")
    assert code == 1
    assert lines == [
        f"chongqing-top: {tmp_path / 'chongqing-top.sqlite3'} is empty but this node stored data there before "
        f"(see {tmp_path / 'chongqing-top.sqlite3.id'}): restore it, or remove both files to start an empty node"
    ]


def test_a_recursive_or_unknown_node_is_a_usage_error(tmp_path: Path) -> None:
    code, lines = idres_check(tmp_path, "recursive")
    assert code == 1 and lines == ["Error: recursive: a recursive node keeps no database to check"]
    code, lines = idres_check(tmp_path, "nowhere")
    assert code == 1 and "no node named 'nowhere'" in lines[0]


def test_a_data_directory_without_any_database_is_not_reported_healthy(tmp_path: Path) -> None:
    """A mistyped --data (issue 13, finding 5) used to print "no database yet" for every node and exit 0."""
    code, lines = idres_check(tmp_path / "d5")
    assert code == 1
    assert lines == [
        f"{tmp_path / 'd5'} holds no node's database: is it the --data directory the nodes use? Nothing checked."
    ]
    assert not (tmp_path / "d5").exists()
