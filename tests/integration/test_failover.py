"""Nodes killed under load: the recursive node keeps answering through mirrors, stale data and errors."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from nodes.running.launcher import NodeProcess, seed_running_nodes, start_nodes, stop_nodes
from nodes.running.seeding import DEMO_CAR
from nodes.running.topology_file import load_topology
from resolver.client import basic_auth
from resolver.config import Topology
from tests.processes import copy_topology, get_json, request, serve_node, wait_healthy, wait_until

pytestmark = pytest.mark.integration

SECRET = "failover-test-secret"
SERIALS = 400


class Tree:
    def __init__(self, topology: Topology, path: Path, data: Path, nodes: list[NodeProcess]) -> None:
        self.topology, self.path, self.data, self.nodes = topology, path, data, nodes

    def url(self, name: str) -> str:
        return self.topology.node(name).url

    def kill(self, name: str) -> None:
        node = next(n for n in self.nodes if n.spec.name == name)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)

    def restart(self, name: str) -> None:
        node = next(n for n in self.nodes if n.spec.name == name)
        node.process = serve_node(self.path, self.data, name, admin_secret=SECRET)
        wait_healthy(self.url(name), node.process)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tree]:
    monkeypatch.setenv("IDRES_ADMIN_SECRET", SECRET)
    path = copy_topology(tmp_path / "topology.toml")
    topology = load_topology(path)
    data = tmp_path / "data"
    nodes = start_nodes(topology, path, data)
    try:
        assert seed_running_nodes(topology, data, Console(quiet=True), demo=True, timeout=30) == 0
        yield Tree(topology, path, data, nodes)
    finally:
        stop_nodes(nodes)


async def _put_serials(top: str) -> None:
    auth = {"Authorization": basic_auth("300:0.NA/88", SECRET)}
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(16)

        async def put(i: int) -> None:
            async with (
                sem,
                session.put(
                    f"{top}/api/handles/88/SERIAL-{i}",
                    headers=auth,
                    json={"values": [{"index": 1, "type": "URL", "data": f"https://e.cn/{i}"}]},
                ) as r,
            ):
                assert r.status == 200, await r.text()

        await asyncio.gather(*(put(i) for i in range(SERIALS)))


def test_recursive_node_rides_through_the_loss_of_chongqing(tree: Tree) -> None:
    chongqing, chengdu, recursive = tree.url("chongqing-top"), tree.url("chengdu-top"), tree.url("recursive")
    asyncio.run(_put_serials(chongqing))
    wait_until(
        lambda: (
            get_json(f"{chengdu}/api/replication/status")[1].get("appliedSeq", 0)
            >= get_json(f"{chongqing}/healthz")[1]["lastSeq"]
        ),
        "chengdu-top to catch up",
    )

    answered_by: list[str] = []
    failures: list[tuple[int, object]] = []

    def resolve(i: int) -> None:
        # Every serial is a new handle: a cache miss the recursive node must take to a top-level node.
        status, body = get_json(f"{recursive}/api/handles/88/SERIAL-{i}?trace=true")
        if status != 200:
            failures.append((status, body))
            return
        answered_by.append(body["trace"][-1]["address"])

    for i in range(100):
        resolve(i)
    assert set(answered_by) == {chongqing}, "the primary is preferred while it is healthy"
    tree.kill("chongqing-top")
    for i in range(100, 250):
        resolve(i)
    assert failures == [], f"{len(failures)} client requests failed: {failures[:3]}"
    assert set(answered_by[100:]) == {chengdu}, "after the kill the Chengdu mirror answers"

    tree.restart("chongqing-top")
    # The recursive node probes a server it marked down and takes it back once it answers.
    deadline = time.monotonic() + 10
    i = 250
    while time.monotonic() < deadline and answered_by[-1] != chongqing and i < SERIALS:
        resolve(i)
        i += 1
        time.sleep(0.05)
    assert failures == []
    assert answered_by[-1] == chongqing, "the restarted primary is used again"


def test_dead_enterprise_node_cached_answers_stay_others_fail_fast(tree: Tree) -> None:
    recursive, automaker = tree.url("recursive"), tree.url("automaker")
    status, _ = get_json(f"{recursive}/api/handles/{DEMO_CAR}")
    assert status == 200
    status, _ = get_json(f"{recursive}/api/handles/88.118.8/NOT-CACHED-YET-0")  # caches the referral too
    assert status == 404
    tree.kill("automaker")

    status, body = get_json(f"{recursive}/api/handles/{DEMO_CAR}")
    assert status == 200 and body["handle"] == DEMO_CAR, "a cached identifier still answers"
    status, body = get_json(f"{recursive}/api/handles/88.118.8/NOT-CACHED-1")
    assert 500 <= status < 600 and body["responseCode"] == 2
    message = str(body["message"])
    assert "could not resolve 88.118.8/NOT-CACHED-1" in message, body
    # Fast: the client is told at once that the dead node's port refuses connections, not that the
    # request ran out of time waiting for it.
    assert f"{automaker.removeprefix('http://')}: cannot connect" in message, body
    assert "timed out" not in message, body


def test_pyhandle_reads_and_writes_through_the_recursive_node(tree: Tree) -> None:
    from pyhandle.handleclient import PyHandleClient

    client = PyHandleClient("rest").instantiate_with_username_and_password(
        tree.url("recursive"), "300:0.NA/88.118.8", SECRET, HTTPS_verify=False
    )
    handle = client.register_handle("88.118.8/VIA-RECURSIVE-1", "https://example.cn/r1", MODEL="CQ-EV7")
    assert client.get_value_from_handle(handle, "MODEL") == "CQ-EV7"
    client.modify_handle_value(handle, MODEL="CQ-EV9")
    assert client.retrieve_handle_record(handle)["MODEL"] == "CQ-EV9", "the write invalidated the cached record"
    status, body = get_json(f"{tree.url('automaker')}/api/handles/{handle}")
    assert status == 200 and any(v["data"]["value"] == "CQ-EV9" for v in body["values"])
    client.delete_handle(handle)
    assert client.retrieve_handle_record(handle) is None


def _status(url: str) -> dict[str, Any]:
    """The top operator's view of a node's replication status (the digest is the operator's to see)."""
    return request(
        "GET", f"{url}/api/replication/status", headers={"Authorization": basic_auth("300:0.NA/88", SECRET)}
    )[1]


def test_mirror_digest_matches_after_10000_writes(tree: Tree) -> None:
    chongqing, chengdu = tree.url("chongqing-top"), tree.url("chengdu-top")

    async def write_many() -> None:
        auth = {"Authorization": basic_auth("300:0.NA/88", SECRET)}
        async with aiohttp.ClientSession() as session:
            sem = asyncio.Semaphore(32)

            async def put(i: int) -> None:
                body = {"values": [{"index": 1, "type": "URL", "data": f"https://e.cn/{i}"}]}
                async with sem, session.put(f"{chongqing}/api/handles/88/BULK-{i}", headers=auth, json=body) as r:
                    assert r.status == 200, await r.text()

            await asyncio.gather(*(put(i) for i in range(10_000)))

    asyncio.run(write_many())
    wait_until(lambda: _status(chengdu).get("digest") == _status(chongqing).get("digest"), "equal digests", 30)
    primary, mirror = _status(chongqing), _status(chengdu)
    assert primary["records"] == mirror["records"] and int(primary["records"]) > 10_000


def test_promote_chengdu_then_the_old_primary_refuses_writes(tree: Tree) -> None:
    chongqing, chengdu = tree.url("chongqing-top"), tree.url("chengdu-top")
    auth = {"Authorization": basic_auth("300:0.NA/88", SECRET), "Content-Type": "application/json"}
    body = json.dumps({"values": [{"index": 1, "type": "URL", "data": "https://after.cn"}]}).encode()
    tree.kill("chongqing-top")
    status, answer = request("POST", f"{chengdu}/api/replication/promote", b"", auth)
    assert status == 200 and answer["role"] == "primary", answer
    status, answer = request("PUT", f"{chengdu}/api/handles/88/AFTER-PROMOTION", body, auth)
    assert status == 200, answer

    tree.restart("chongqing-top")
    status, answer = request("PUT", f"{chongqing}/api/handles/88/SPLIT-BRAIN", body, auth)
    assert status == 503 and answer["responseCode"] == 7, answer
    # It found chengdu-top promoted while it was down (or, had chengdu-top not answered yet, waits to know).
    message = str(answer["message"])
    assert "chongqing-top is no longer the primary: chengdu-top" in message or (
        "checking for a promoted mirror" in message
    ), answer
    # The old primary follows the new one.
    wait_until(lambda: get_json(f"{chongqing}/api/handles/88/AFTER-PROMOTION")[0] == 200, "the old primary to follow")
    assert get_json(f"{chengdu}/api/handles/88/SPLIT-BRAIN")[0] == 404
