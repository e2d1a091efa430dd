"""``idres register`` against a real enterprise node (``idres serve``): killed halfway and resumed, every
identifier lands once; a wrong secret is refused."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resolver.bulk.register import load_checkpoint
from resolver.bulk.sender import same_values
from tests.processes import (
    copy_topology,
    health,
    serve_node,
    spawn_idres,
    stop_node,
    stored_values,
    urls_of,
    wait_healthy,
)
from tests.resolver.bulk.cars import sent_values, write_csv
from tests.resolver.bulk.fake_node import node_message
from tests.resolver.bulk.runs import report_lines

pytestmark = pytest.mark.integration

OPERATOR = "operator-secret-for-register-tests"
IDENTITY = "300:0.NA/88.118.8"


@pytest.fixture
def real_node(tmp_path: Path) -> Iterator[str]:
    """The default topology's enterprise node for 88.118.8 (`idres serve`), alone, on a free port."""
    topology = copy_topology(tmp_path / "topology.toml")
    url = urls_of(topology)["automaker"]
    node = serve_node(topology, tmp_path / "data", "automaker", admin_secret=OPERATOR)
    try:
        wait_healthy(url, node)
        yield url
    finally:
        stop_node(node)


def last_seq(url: str) -> Any:
    found = health(url)
    assert found is not None, f"{url} is not healthy"
    return found["lastSeq"]


def register(*args: str, secret: str) -> subprocess.Popen[str]:
    return spawn_idres("register", *args, secret=secret)


def test_real_node_kill_halfway_and_resume_lands_every_identifier_once(real_node: str, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    data = write_csv(path, 30_000, extra="88.118.8/bad\x07,x,,,,,,\n")
    first_seq = last_seq(real_node)
    args = [str(path), "--server", real_node, "--user", IDENTITY, "--batch-size", "500"]
    proc = register(*args, secret=OPERATOR)
    checkpoint = path.with_name("cars.csv.idres-checkpoint")
    deadline = time.monotonic() + 60
    while (found := load_checkpoint(checkpoint)) is None or found.lines < 6000:
        assert time.monotonic() < deadline and proc.poll() is None, "the load did not get going"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    interrupted = load_checkpoint(checkpoint)
    assert interrupted is not None and interrupted.lines < 30_000

    proc = register(*args, "--resume", secret=OPERATOR)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "rejected 1," in out
    # Each create is one change-log entry: exactly 30,000 more means none landed twice, none was lost.
    assert last_seq(real_node) == first_seq + 30_000
    [bad] = report_lines(path.with_name("cars.csv.rejected.jsonl"))
    assert (bad["line"], bad["handle"], bad["responseCode"]) == (30_002, "88.118.8/bad\x07", 102)
    assert bad["message"] == node_message("88.118.8/bad\x07")
    for row in (data[0], data[12_345], data[-1]):
        assert same_values(sent_values(row), stored_values(real_node, row[0])), row[0]


def test_real_node_wrong_secret_exits_2(real_node: str, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    proc = register(str(tmp_path / "cars.csv"), "--server", real_node, "--user", IDENTITY, secret="nope")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"refused the credentials of {IDENTITY}" in err
