"""Promoting chengdu-top while clients write to chongqing-top loses no acknowledged write (issue 11, finding 8)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nodes.running.topology_file import load_topology
from resolver.client import basic_auth
from tests.processes import (
    ServedNode,
    copy_topology,
    get_json,
    request,
    serve_node,
    stop_node,
    wait_healthy,
    wait_until,
)

pytestmark = pytest.mark.integration

SECRET = "promotion-fence-test-secret"
AUTH = {"Authorization": basic_auth("300:0.NA/88", SECRET)}
WRITERS = 4
PROMOTE_AFTER = 150  # acknowledged writes before the promotion
WRITE_ON_FOR = 1.5  # seconds the clients keep writing to chongqing-top after it


@pytest.fixture
def urls(tmp_path: Path) -> Iterator[dict[str, str]]:
    """chongqing-top and chengdu-top of the default topology (on free ports) running, chengdu-top caught up."""
    path = copy_topology(tmp_path / "topology.toml")
    topology = load_topology(path)
    urls = {name: topology.node(name).url for name in ("chongqing-top", "chengdu-top")}
    processes: list[ServedNode] = []
    try:
        for name, url in urls.items():
            processes.append(serve_node(path, tmp_path / "data", name, admin_secret=SECRET))
            wait_healthy(url, processes[-1])
        wait_until(lambda: get_json(f"{urls['chengdu-top']}/api/replication/status")[1]["connected"], "the mirror")
        yield urls
    finally:
        for process in processes:
            stop_node(process)


async def write_and_promote(chongqing: str, chengdu: str) -> tuple[list[str], dict[str, Any]]:
    """Write to chongqing-top from several clients, promote chengdu-top midway: (acknowledged handles, promotion)."""
    acknowledged: list[str] = []
    promoted: dict[str, Any] = {}
    stop_at: list[float] = []
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:

        async def writer(w: int) -> None:
            n = 0
            while not stop_at or loop.time() < stop_at[0]:
                handle = f"88/FENCE-{w}-{n}"
                n += 1
                body = {"values": [{"index": 1, "type": "URL", "data": f"https://e.cn/{handle}"}]}
                async with session.put(f"{chongqing}/api/handles/{handle}", headers=AUTH, json=body) as r:
                    if r.status in (200, 201):
                        acknowledged.append(handle)
                    else:
                        await asyncio.sleep(0.01)  # refused (fenced, or demoted): keep trying, as a client would

        async def promote() -> None:
            while len(acknowledged) < PROMOTE_AFTER:
                await asyncio.sleep(0.01)
            async with session.post(f"{chengdu}/api/replication/promote", headers=AUTH) as r:
                promoted.update(await r.json(), status=r.status)
            stop_at.append(loop.time() + WRITE_ON_FOR)

        await asyncio.gather(promote(), *(writer(w) for w in range(WRITERS)))
    return acknowledged, promoted


def test_promoting_chengdu_top_under_writes_to_chongqing_top_keeps_every_acknowledged_write(
    urls: dict[str, str],
) -> None:
    chongqing, chengdu = urls["chongqing-top"], urls["chengdu-top"]
    acknowledged, promoted = asyncio.run(write_and_promote(chongqing, chengdu))
    assert promoted["status"] == 200 and promoted["role"] == "primary", promoted
    assert len(acknowledged) >= PROMOTE_AFTER

    missing = [h for h in acknowledged if get_json(f"{chengdu}/api/handles/{h}")[0] != 200]
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged writes are not on chengdu-top"
    assert promoted["fenced"] is True, promoted

    status, body = get_json(f"{chongqing}/api/replication/status?digest=false")
    assert status == 200 and body["writable"] is False and "chengdu-top" in body["message"], body
    wait_until(
        lambda: get_json(f"{chongqing}/api/replication/status?digest=false")[1]["role"] == "mirror",
        "chongqing-top to see chengdu-top as primary and follow it",
    )
    status, body = get_json(f"{chongqing}/api/replication/status?digest=false")
    assert body["primaryNode"] == "chengdu-top", body
    put = json.dumps({"values": [{"index": 1, "type": "URL", "data": "https://e.cn/late"}]}).encode()
    status, body = request("PUT", f"{chongqing}/api/handles/88/LATE", put, {**AUTH, "Content-Type": "application/json"})
    assert (status, body["responseCode"]) == (503, 7), body
    assert "chengdu-top" in body["message"] and "was promoted" in body["message"], body
