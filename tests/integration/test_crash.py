"""kill -9 an enterprise node in the middle of a stream of writes: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from resolver.client import basic_auth
from resolver.storage import SQLiteStorage
from tests.processes import copy_topology, serve_node, urls_of, wait_healthy

pytestmark = pytest.mark.integration

SECRET = "crash-test-secret"
WRITERS = 8


async def write_until_killed(url: str, node: subprocess.Popen[bytes], kill_after: int) -> set[str]:
    """WRITERS concurrent clients create handles; the node is SIGKILLed after ``kill_after`` acks."""
    acked: set[str] = set()
    counter = iter(range(10**9))
    headers = {"Authorization": basic_auth("300:0.NA/88.118.8", SECRET)}

    async def writer(session: aiohttp.ClientSession) -> None:
        while True:
            handle = f"88.118.8/W-{next(counter)}"
            body = {"values": [{"index": 1, "type": "URL", "data": f"https://example.cn/{handle}"}]}
            try:
                async with session.put(
                    f"{url}/api/handles/{handle}", json=body, headers=headers, params={"overwrite": "false"}
                ) as r:
                    if r.status != 201:
                        return
            except (aiohttp.ClientError, OSError):
                return  # the node is gone
            acked.add(handle)
            if len(acked) >= kill_after and node.poll() is None:
                node.send_signal(signal.SIGKILL)

    async with aiohttp.ClientSession() as session:
        await asyncio.wait_for(asyncio.gather(*(writer(session) for _ in range(WRITERS))), timeout=60)
    return acked


async def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    data = tmp_path / "data"
    url = urls_of(topology)["automaker"]
    node = serve_node(topology, data, admin_secret=SECRET)
    try:
        await asyncio.to_thread(wait_healthy, url, node)
        acked = await write_until_killed(url, node, kill_after=300)
        assert node.wait(timeout=10) == -signal.SIGKILL
    finally:
        if node.poll() is None:
            node.kill()
    assert len(acked) >= 300

    node = serve_node(topology, data, admin_secret=SECRET)
    try:
        await asyncio.to_thread(wait_healthy, url, node)
        async with aiohttp.ClientSession() as session:
            for handle in sorted(acked):
                async with session.get(f"{url}/api/handles/{handle}") as r:
                    assert r.status == 200, f"{handle} was acknowledged before the kill but is gone"
                    body = await r.json()
                    assert body["values"][0]["data"]["value"] == f"https://example.cn/{handle}"
    finally:
        node.terminate()
        node.wait(timeout=10)

    store = await SQLiteStorage.open(data / "automaker.sqlite3")
    try:
        changes = await store.changes(0, limit=1_000_000)
    finally:
        await store.close()
    per_key = Counter(c.key for c in changes)
    for handle in acked:
        assert per_key[handle] == 1, f"{handle}: {per_key[handle]} change-log entries for one write"
    # Writes the node committed but could not acknowledge before it died: at most one per writer.
    unacked = {k for k in per_key if k.startswith("88.118.8/W-")} - acked
    assert len(unacked) <= WRITERS
    assert [c.seq for c in changes] == list(range(1, len(changes) + 1)), "the change log has no gaps"
    # The node's own prefix handle was written once, at first start; the restart rewrote nothing.
    assert per_key["0.NA/88.118.8"] == 1
