"""kill -9 the enterprise node halfway through `idres register`: nothing acknowledged is lost, the load completes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

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

pytestmark = pytest.mark.integration

SECRET = "bulk-crash-test-secret"
RECORDS = 40_000
BATCH = 2_500  # ~450 KB bodies: prepared by the node's worker processes


def last_seq(url: str) -> int:
    found = health(url)
    assert found is not None, f"{url} is not healthy"
    seq: int = found["lastSeq"]
    return seq


def test_kill_9_the_node_halfway_and_the_load_completes_exactly_once(tmp_path: Path) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    data = tmp_path / "data"
    url = urls_of(topology)["automaker"]
    path = tmp_path / "cars.csv"
    rows = write_csv(path, RECORDS)
    node = serve_node(topology, data, admin_secret=SECRET)
    loader: subprocess.Popen[str] | None = None
    try:
        wait_healthy(url, node)
        first_seq = last_seq(url)
        args = [str(path), "--server", url, "--user", "300:0.NA/88.118.8", "--batch-size", str(BATCH)]
        loader = spawn_idres("register", *args, secret=SECRET)
        checkpoint = path.with_name("cars.csv.idres-checkpoint")
        deadline = time.monotonic() + 60
        while (found := load_checkpoint(checkpoint)) is None or found.lines < RECORDS // 3:
            assert time.monotonic() < deadline and loader.poll() is None, "the load did not get going"
            time.sleep(0.005)
        node.send_signal(signal.SIGKILL)
        assert node.wait(timeout=10) == -signal.SIGKILL
        acknowledged = load_checkpoint(checkpoint)
        assert acknowledged is not None and acknowledged.lines < RECORDS
        node = serve_node(topology, data, admin_secret=SECRET)  # within the loader's retry window: it carries on
        wait_healthy(url, node)
        out, err = loader.communicate(timeout=300)
        if loader.returncode != 0:  # it gave up meanwhile: running it again completes the load
            loader = spawn_idres("register", *args, "--resume", secret=SECRET)
            out, err = loader.communicate(timeout=300)
        assert loader.returncode == 0, (out, err)
        assert "rejected 0" in out
        # Each create is one change-log entry: exactly RECORDS more means none landed twice, none is missing.
        assert last_seq(url) == first_seq + RECORDS
        for row in (*rows[: acknowledged.lines - 1 : 997], rows[-1]):  # line 1 of the file is the header
            assert same_values(sent_values(row), stored_values(url, row[0])), (
                f"{row[0]} was acknowledged before the kill"
            )
    finally:
        if loader is not None and loader.poll() is None:
            loader.kill()
        stop_node(node)
