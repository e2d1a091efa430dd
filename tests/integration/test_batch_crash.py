"""kill -9 an enterprise node while batches are being posted: every acknowledged item survives, once."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from resolver.client import basic_auth
from resolver.storage import SQLiteStorage
from tests.processes import copy_topology, serve_node, urls_of, wait_healthy

pytestmark = pytest.mark.integration

SECRET = "batch-crash-test-secret"
WRITERS = 4
BATCH = 2500  # ~320 KB bodies: prepared by the node's worker processes (nodes.authoritative.batch.workers)
KILL_AFTER = 12  # acknowledged batches


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def url_of(handle: str) -> str:
    return f"https://example.cn/{handle}"


def batch_of(writer: int, number: int) -> list[dict[str, Any]]:
    """BATCH creates, and in every other batch two rows that must fail (a malformed identifier, a repeat)."""
    ops: list[dict[str, Any]] = [
        {
            "op": "create",
            "handle": f"88.118.8/B{writer}-{number}-{i}",
            "values": [
                {"index": 1, "type": "URL", "data": url_of(f"88.118.8/B{writer}-{number}-{i}")},
                {"index": 2, "type": "BATCH", "data": {"format": "string", "value": f"{writer}-{number}"}},
            ],
        }
        for i in range(BATCH)
    ]
    if number % 2:
        ops.insert(7, {"op": "create", "handle": "88.118.8..bad/x", "values": []})
        ops.append(dict(ops[0]))
    return ops


async def post_until_killed(url: str, node: Any) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(acknowledged batch -> its applied handles, unacknowledged batch -> its valid handles)."""
    acked: dict[str, list[str]] = {}
    sent: dict[str, list[str]] = {}
    headers = {
        "Authorization": basic_auth("300:0.NA/88.118.8", SECRET),
        "Content-Type": "application/msgpack",
        "Accept": "application/msgpack",
    }

    async def writer(session: aiohttp.ClientSession, w: int) -> None:
        for number in range(10_000):
            ops = batch_of(w, number)
            name = f"{w}-{number}"
            sent[name] = [op["handle"] for op in ops[: BATCH + 1] if op["handle"] != "88.118.8..bad/x"]
            try:
                async with session.post(
                    f"{url}/api/batch", data=msgpack.packb({"operations": ops}), headers=headers
                ) as r:
                    body = msgpack.unpackb(await r.read())
            except (aiohttp.ClientError, OSError):
                return  # the node is gone
            assert r.status == 200, body
            codes = [res["responseCode"] for res in body["results"]]
            assert codes.count(1) == BATCH and body["applied"] == BATCH, codes
            acked[name] = [op["handle"] for op, code in zip(ops, codes, strict=True) if code == 1]
            del sent[name]
            if len(acked) == KILL_AFTER:
                # A little later, so the kill lands anywhere: validating, committing, answering.
                asyncio.get_running_loop().call_later(random.uniform(0, 0.15), kill)

    def kill() -> None:
        if node.poll() is None:
            node.send_signal(signal.SIGKILL)

    async with aiohttp.ClientSession() as session:
        await asyncio.wait_for(asyncio.gather(*(writer(session, w) for w in range(WRITERS))), timeout=120)
    return acked, sent


async def test_kill_9_during_batches_loses_no_acknowledged_item(tmp_path: Path) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    data = tmp_path / "data"
    url = urls_of(topology)["automaker"]
    node = serve_node(topology, data, admin_secret=SECRET)
    try:
        await asyncio.to_thread(wait_healthy, url, node)
        workers: set[int] = set()

        async def watch() -> None:  # the node's worker processes, seen while it runs
            while node.poll() is None:
                workers.update(_children(node.pid))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        acked, unacked = await post_until_killed(url, node)
        assert node.wait(timeout=10) == -signal.SIGKILL
        await watcher
    finally:
        if node.poll() is None:
            node.kill()
    assert len(acked) >= KILL_AFTER
    assert workers, "the node prepared the batches in worker processes"
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a batch worker outlived the killed node"

    node = serve_node(topology, data, admin_secret=SECRET)  # a restart recovers the WAL
    try:
        await asyncio.to_thread(wait_healthy, url, node)
        async with aiohttp.ClientSession() as session:
            for handle in (handles[-1] for handles in acked.values()):
                async with session.get(f"{url}/api/handles/{handle}") as r:
                    assert r.status == 200, f"{handle} was acknowledged before the kill but is gone"
    finally:
        node.terminate()
        node.wait(timeout=10)

    store = await SQLiteStorage.open(data / "automaker.sqlite3")
    try:
        changes = await store.changes(0, limit=10_000_000)
        records = await store.get_many([h for handles in acked.values() for h in handles])
    finally:
        await store.close()
    per_key = Counter(c.key for c in changes)
    for name, handles in acked.items():
        for handle in handles:
            assert per_key[handle] == 1, f"{handle} (batch {name}): {per_key[handle]} change-log entries"
            values = records[handle].values
            assert values[0].value == url_of(handle) and values[1].value == name
    # A batch the node died answering is all there or not at all: it was one transaction.
    for name, handles in unacked.items():
        assert {per_key[h] for h in handles} in ({0}, {1}), f"batch {name} is partly applied"
    assert [c.seq for c in changes] == list(range(1, len(changes) + 1)), "the change log has no gaps"
    assert per_key["0.NA/88.118.8"] == 1
    assert not any(c.key.startswith("88.118.8..") for c in changes)
