"""Real node processes: a new mirror of a primary holding 100,000 records is killed (-9) halfway through its
snapshot, restarts, resumes after the last key it stored rather than from the start, and ends with the
primary's digest; the digest is the operator's to read."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from resolver.client import basic_auth
from resolver.storage import Write
from resolver.storage.sqlite import SQLiteStorage
from resolver.values import HandleValue
from tests.conftest import free_port
from tests.processes import ServedNode, get_json, health, request, serve_node, stop_node, wait_healthy, wait_until

pytestmark = pytest.mark.integration

SECRET = "replication-growth-test-secret"
OPERATOR = {"Authorization": basic_auth("300:0.NA/88", SECRET)}
RECORDS = 100_000


def write_topology(path: Path) -> dict[str, str]:
    ports = {"top": free_port(), "mirror": free_port()}
    path.write_text(
        f'[nodes.top]\nrole = "top"\nprefix = "88"\nlisten = "127.0.0.1:{ports["top"]}"\n\n'
        f'[nodes.mirror]\nmirror_of = "top"\nlisten = "127.0.0.1:{ports["mirror"]}"\n'
    )
    return {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


async def load(db: Path) -> None:
    """RECORDS records straight into the primary's file before it first starts (as a restore would)."""
    store = await SQLiteStorage.open(db)
    try:
        for start in range(0, RECORDS, 5_000):
            await store.write(
                [
                    Write(f"88/item-{n:06}", (HandleValue(1, "URL", "string", f"https://example.cn/item/{n}"),))
                    for n in range(start, start + 5_000)
                ],
                created=True,
            )
    finally:
        await store.close()


def status(url: str, operator: bool = True) -> dict[str, Any]:
    code, body = request("GET", f"{url}/api/replication/status", headers=OPERATOR if operator else None)
    assert code == 200, body
    return body


def test_a_mirror_killed_mid_snapshot_resumes_and_ends_equal(tmp_path: Path) -> None:
    topology = tmp_path / "topology.toml"
    urls = write_topology(topology)
    data = tmp_path / "data"
    data.mkdir()
    asyncio.run(load(data / "top.sqlite3"))
    primary = serve_node(topology, data, "top", admin_secret=SECRET)
    mirror: ServedNode | None = None
    try:
        wait_healthy(urls["top"], primary)
        mirror = serve_node(topology, data, "mirror", admin_secret=SECRET)

        def copied_some() -> bool:  # the mirror's own log counts what it applied
            found = health(urls["mirror"])
            return found is not None and found["lastSeq"] > RECORDS // 10

        wait_until(copied_some, "the mirror gets a good part of the snapshot", 60)
        mirror.send_signal(signal.SIGKILL)
        assert mirror.wait(timeout=10) == -signal.SIGKILL

        mirror = serve_node(topology, data, "mirror", admin_secret=SECRET)
        wait_healthy(urls["mirror"], mirror)
        wait_until(lambda: status(urls["mirror"]).get("digest") == status(urls["top"])["digest"], "equal digests", 120)
        primary_status, mirror_status = status(urls["top"]), status(urls["mirror"])
        assert primary_status["records"] == mirror_status["records"] == RECORDS + 1
        assert mirror_status["appliedSeq"] == primary_status["lastSeq"]
        log = mirror.log.read_text(errors="replace")
        assert "resuming the snapshot from" in log and "after '88/item-" in log, "it went on where it stopped"
        assert log.count("copied a snapshot of") == 1
        # Anonymous clients get the status without the record count and digest.
        anonymous = get_json(f"{urls['top']}/api/replication/status")[1]
        assert anonymous["role"] == "primary" and "digest" not in anonymous and "records" not in anonymous
    finally:
        if mirror is not None:
            stop_node(mirror)
        stop_node(primary)
