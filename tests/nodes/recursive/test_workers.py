"""A recursive node's workers answering /metrics and /healthz for the whole node (nodes.recursive.workers).

Two workers run here in one event loop, on two ports, in front of a real top / secondary /
enterprise tree: what the kernel's SO_REUSEPORT does (send each connection to one of them) is the
test's choice of URL. The processes and the shared port are tests/integration/test_recursive_workers.py.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from prometheus_client.parser import text_string_to_metric_families

from nodes.recursive.app import RecursiveConfig, create_recursive_app
from nodes.recursive.workers import ASK_TIMEOUT, Reply, WorkerSlot, ask_workers, node_health
from nodes.running.seeding import DEMO_CAR, register_topology
from resolver.client import HandleClient
from tests.conftest import OPERATOR_SECRET, LocalNode, free_port, topology_of

SECRETS = {"top": "top-operator-secret", "auto": "auto-operator-secret", "carmaker": "carmaker-operator-secret"}
MISSING = "88.118.8/NO-SUCH-VIN"


@dataclass
class Workers:
    session: ClientSession
    urls: list[str]
    runners: list[web.AppRunner]
    directory: Path

    async def get(self, worker: int, path: str) -> tuple[int, Any]:
        async with self.session.get(self.urls[worker] + path) as r:
            return r.status, await r.json()

    async def metrics(self, worker: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.session.get(self.urls[worker] + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Workers]:
    def listen() -> str:
        return f"127.0.0.1:{free_port()}"

    topology = topology_of(
        {
            "recursive": {"role": "recursive", "listen": listen(), "root_hints": ["top"], "workers": 2},
            "top": {"role": "top", "prefix": "88", "listen": listen()},
            "auto": {"role": "secondary", "prefix": "88.118", "listen": listen()},
            "carmaker": {"role": "enterprise", "prefix": "88.118.8", "listen": listen()},
        }
    )
    # A short directory: a Unix socket's path must fit in 108 bytes, pytest's tmp_path may not.
    directory = Path(tempfile.mkdtemp(prefix="idres-test-"))
    async with ClientSession() as session:
        tree = [
            LocalNode(topology, name, tmp_path, session, secret=SECRETS.get(name, OPERATOR_SECRET))
            for name in ("top", "auto", "carmaker")
        ]
        runners: list[web.AppRunner] = []
        try:
            for node in tree:
                await node.start()
            await register_topology(HandleClient(session), topology, SECRETS, demo=True)
            spec = topology.node("recursive")
            urls = []
            for index in range(2):
                app = create_recursive_app(RecursiveConfig(spec, topology), WorkerSlot(index, 2, directory))
                runner = web.AppRunner(app)
                await runner.setup()
                port = free_port()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                runners.append(runner)
                urls.append(f"http://127.0.0.1:{port}")
            yield Workers(session, urls, runners, directory)
        finally:
            for runner in runners:
                await runner.cleanup()
            for node in tree:
                await node.stop()
            shutil.rmtree(directory, ignore_errors=True)


async def test_metrics_from_either_worker_count_what_both_answered(workers: Workers) -> None:
    for _ in range(3):  # a walk, then hits (the later ones from the hot path's plain tallies)
        assert (await workers.get(0, f"/api/handles/{DEMO_CAR}"))[0] == 200
    for _ in range(2):
        assert (await workers.get(1, f"/api/handles/{DEMO_CAR}"))[0] == 200
    assert (await workers.get(1, f"/api/handles/{MISSING}"))[0] == 404
    for asked in (0, 1):
        found = await workers.metrics(asked)
        assert found[("idres_resolutions_total", (("outcome", "answer"),))] == 5, f"worker {asked}"
        assert found[("idres_resolutions_total", (("outcome", "not_found"),))] == 1
        assert found[("idres_cache_hits_total", ())] == 3, "two hits on worker 0, one on worker 1"
        assert found[("idres_cache_entries", ())] == 3, "each worker caches what it was asked (a not-found too)"
        assert found[("idres_workers", ())] == 2 and found[("idres_workers_answering", ())] == 2
        per_worker = {dict(labels).get("worker") for (name, labels) in found if name == "idres_upstream_down"}
        assert per_worker == {"0", "1"}, "each worker's view of upstream health, labelled"


async def test_healthz_from_either_worker_reports_both(workers: Workers) -> None:
    await workers.get(0, f"/api/handles/{DEMO_CAR}")
    await workers.get(1, f"/api/handles/{MISSING}")
    await workers.get(1, f"/api/handles/{DEMO_CAR}")
    for asked in (0, 1):
        status, body = await workers.get(asked, "/healthz")
        assert status == 200 and body["status"] == "ok" and body["role"] == "recursive"
        assert (body["workers"], body["alive"], body["answeredBy"]) == (2, 2, asked)
        assert [w["cacheEntries"] for w in body["perWorker"]] == [1, 2]
        assert body["cacheEntries"] == 3
        assert all(w["alive"] and w["pid"] > 0 for w in body["perWorker"])


async def test_a_stopped_worker_is_reported_and_the_other_still_answers(workers: Workers) -> None:
    assert (await workers.get(1, f"/api/handles/{DEMO_CAR}"))[0] == 200
    await workers.runners[1].cleanup()
    status, body = await workers.get(0, "/healthz")
    assert status == 200 and body["status"] == "degraded"
    assert (body["workers"], body["alive"]) == (2, 1)
    assert body["perWorker"][1] == {"worker": 1, "alive": False, "error": "not running"}
    found = await workers.metrics(0)
    assert found[("idres_workers_answering", ())] == 1
    assert found[("idres_workers", ())] == 2


async def test_a_worker_that_hangs_is_not_waited_for(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="idres-test-"))
    slot = WorkerSlot(0, 2, directory)

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_unix_server(never_answer, str(slot.socket_path(1)))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        replies = await ask_workers(slot, "health", {"cacheEntries": 1}, timeout=0.2)
        assert loop.time() - started < ASK_TIMEOUT
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)
    assert replies == [Reply(0, {"cacheEntries": 1}), Reply(1, error="no answer within 0.2 s")]


def test_node_health_sums_entries_and_joins_what_any_worker_marks_down() -> None:
    own = {"status": "ok", "node": "recursive", "cacheEntries": 2, "down": ["http://b"], "pid": 10}
    other = {"status": "ok", "node": "recursive", "cacheEntries": 5, "down": ["http://a", "http://b"], "pid": 11}
    body = node_health([Reply(0, other), Reply(1, own), Reply(2, error="not running"), Reply(3, [1])], 1)
    assert body["status"] == "degraded" and "pid" not in body
    assert (body["cacheEntries"], body["down"]) == (7, ["http://a", "http://b"])
    assert (body["workers"], body["alive"], body["answeredBy"]) == (4, 2, 1)
    assert body["perWorker"][0] == {
        "worker": 0,
        "alive": True,
        "pid": 11,
        "cacheEntries": 5,
        "down": ["http://a", "http://b"],
    }
    assert body["perWorker"][3] == {"worker": 3, "alive": False, "error": "unusable answer"}
