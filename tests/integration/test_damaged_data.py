"""Finding 9 of issue 11: a node refuses to start on a damaged or emptied database, and `idres check`
reports it (real `idres serve` processes of a copy of the default topology on free ports)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from resolver.client import basic_auth
from tests.processes import copy_topology, health, request, run_idres, serve_node, stop_node, urls_of, wait_healthy

pytestmark = pytest.mark.integration

SECRET = "damaged-data-secret"
BATCHES, PER_BATCH = 2, 5_000  # ~4 MB of records: 20 KB in the middle is record pages


def fill(url: str) -> None:
    """Register BATCHES * PER_BATCH identifiers through POST /api/batch, as an operator would."""
    headers = {"Authorization": basic_auth("300:0.NA/88.118.8", SECRET), "Content-Type": "application/json"}
    for batch in range(BATCHES):
        operations = [
            {
                "op": "create",
                "handle": f"88.118.8/VIN-{batch}-{n:06d}",
                "values": [
                    {"index": 1, "type": "URL", "data": f"https://automaker.example.cn/{batch}/{n}/{'v' * 300}"}
                ],
            }
            for n in range(PER_BATCH)
        ]
        status, body = request("POST", f"{url}/api/batch", json.dumps(operations).encode(), headers)
        assert (status, body["applied"]) == (200, PER_BATCH), body


def refused_start(topology: Path, data: Path, url: str) -> str:
    """Start the node, expect it to exit non-zero without ever serving; what it said."""
    node = serve_node(topology, data, admin_secret=SECRET)
    try:
        code = node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        said, healthz = node.last_words(), health(url)
        stop_node(node)
        raise AssertionError(f"the node started on a damaged file (healthz: {healthz})\n{said}") from None
    assert code != 0
    return node.last_words()


def idres_check(topology: Path, data: Path) -> subprocess.CompletedProcess[str]:
    return run_idres("check", "--topology", str(topology), "--data", str(data), "--node", "automaker")


def test_a_damaged_or_emptied_database_is_refused_and_reported(tmp_path: Path) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    data, healthy = tmp_path / "data", tmp_path / "healthy"
    url = urls_of(topology)["automaker"]
    node = serve_node(topology, data, admin_secret=SECRET)
    try:
        wait_healthy(url, node)
        fill(url)
    finally:
        assert stop_node(node) == 0
    shutil.copytree(data, healthy)
    db = data / "automaker.sqlite3"
    assert db.stat().st_size > 2_000_000

    with db.open("r+b") as f:  # a failing disk: 20 KB of noise in the middle of the file
        f.seek(db.stat().st_size // 2)
        f.write(random.Random(11).randbytes(20 * 1024))
    said = refused_start(topology, data, url)
    assert f"Error: node automaker cannot start: storage error: {db} is damaged (SQLite found: " in said
    assert "`idres check` runs the full integrity check" in said
    assert "Traceback" not in said
    checked = idres_check(topology, data)
    assert checked.returncode == 1, checked
    assert checked.stdout.startswith(f"automaker: {db} is damaged (SQLite found: ")

    db.write_bytes(b"")  # emptied (a botched restore, a full disk's truncation)
    said = refused_start(topology, data, url)
    assert (
        f"{db} is empty but this node stored data there before (see {db}.id): "
        "restore it, or remove both files to start an empty node"
    ) in said
    checked = idres_check(topology, data)
    assert checked.returncode == 1 and f"automaker: {db} is empty but this node stored data" in checked.stdout

    checked = idres_check(topology, healthy)
    assert (checked.returncode, checked.stdout) == (0, f"automaker: ok ({healthy / 'automaker.sqlite3'})\n")
    node = serve_node(topology, healthy, admin_secret=SECRET)  # the healthy copy serves every record
    try:
        wait_healthy(url, node)
        status, body = request("GET", f"{url}/api/handles/88.118.8/VIN-1-004999")
        assert status == 200 and body["values"][0]["data"]["value"].startswith("https://automaker.example.cn/1/4999/")
    finally:
        stop_node(node)
