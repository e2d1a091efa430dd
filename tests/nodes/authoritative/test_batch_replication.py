"""POST /api/batch with replication: bulk loads reach mirrors, a mirror refuses them, and with sync
mirrors a batch is acknowledged only once a mirror holds it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession

from resolver.config import Topology
from tests.conftest import LocalNode, auth, eventually, free_port, topology_of

OP = "300:0.NA/88"  # the operator of the primary below


def car(n: int | str) -> list[dict[str, Any]]:
    return [
        {"index": 1, "type": "URL", "data": {"format": "string", "value": f"https://example.cn/car/{n}"}},
        {"index": 2, "type": "MODEL", "data": "CQ-EV7"},
    ]


def create(handle: str) -> dict[str, Any]:
    return {"op": "create", "handle": handle, "values": car(handle)}


def two_nodes(*, sync: bool = False) -> Topology:
    """A primary owning 88 and a mirror of it, on free ports."""
    primary: dict[str, Any] = {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}"}
    if sync:
        primary["sync_mirrors"] = True
    return topology_of({"primary": primary, "mirror": {"mirror_of": "primary", "listen": f"127.0.0.1:{free_port()}"}})


class Pair:
    def __init__(self, primary: LocalNode, mirror: LocalNode) -> None:
        self.primary, self.mirror = primary, mirror

    @staticmethod
    async def status(node: LocalNode, *, operator: bool = False) -> dict[str, Any]:
        # The digest is shown to the operator only (a mirror knows the operator once it has copied).
        code, body = await node.call("GET", "/api/replication/status", headers=auth(OP) if operator else None)
        assert code == 200, body
        result: dict[str, Any] = body
        return result

    async def in_sync(self) -> bool:
        primary, mirror = await self.status(self.primary), await self.status(self.mirror)
        return bool(mirror["connected"]) and mirror["appliedSeq"] == primary["lastSeq"]

    async def same_digest(self) -> bool:
        primary, mirror = await self.status(self.primary, operator=True), await self.status(self.mirror, operator=True)
        return bool(primary["digest"] == mirror["digest"]) and mirror["appliedSeq"] == primary["lastSeq"]


async def _running(topology: Topology, tmp_path: Path) -> AsyncIterator[Pair]:
    async with ClientSession() as session:
        pair = Pair(LocalNode(topology, "primary", tmp_path, session), LocalNode(topology, "mirror", tmp_path, session))
        try:
            await pair.primary.start()
            await pair.mirror.start()
            await eventually(pair.in_sync, 5, "the mirror catches up with an empty primary")
            yield pair
        finally:
            await pair.mirror.stop()
            await pair.primary.stop()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async for running in _running(two_nodes(), tmp_path):
        yield running


@pytest.fixture
async def sync_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async for running in _running(two_nodes(sync=True), tmp_path):
        yield running


async def post(node: LocalNode, ops: list[dict[str, Any]]) -> tuple[int, Any]:
    headers = {**auth(OP), "Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    return await node.call("POST", "/api/batch", raw=msgpack.packb(ops), headers=headers)


async def test_bulk_loads_replicate_and_the_mirror_refuses_them(pair: Pair) -> None:
    ops = [create(f"88/bulk-{n:05d}") for n in range(3_000)]
    status, body = await post(pair.primary, ops)
    assert status == 200 and body["applied"] == 3_000
    more = [{"op": "upsert", "handle": f"88/bulk-{n:05d}", "values": car(f"v2-{n}")} for n in range(0, 3_000, 3)]
    more += [{"op": "delete", "handle": f"88/bulk-{n:05d}"} for n in range(1, 3_000, 3)]
    status, body = await post(pair.primary, more)
    assert status == 200 and body["applied"] == 2_000
    await eventually(pair.same_digest, 10, "primary and mirror hold the same records")
    assert (await pair.status(pair.mirror, operator=True))["records"] == 1 + 2_000
    code, record = await pair.mirror.get("88/bulk-00003")
    assert code == 200 and record["values"][0]["data"]["value"] == "https://example.cn/car/v2-3"
    code, _ = await pair.mirror.get("88/bulk-00004")
    assert code == 404
    status, body = await post(pair.mirror, [create("88/on-mirror")])
    assert (status, body["responseCode"]) == (503, 7) and "mirror" in body["message"]


async def test_with_sync_mirrors_a_batch_is_acknowledged_once_a_mirror_holds_it(sync_pair: Pair) -> None:
    status, body = await post(sync_pair.primary, [create(f"88/sync-{n}") for n in range(2_000)])
    assert status == 200 and body["applied"] == 2_000
    mirror = await sync_pair.status(sync_pair.mirror)
    assert mirror["appliedSeq"] >= body["lastSeq"], "acknowledged before the mirror applied it"
    code, _ = await sync_pair.mirror.get("88/sync-1999")
    assert code == 200
    await sync_pair.mirror.stop()
    status, body = await post(sync_pair.primary, [create("88/unconfirmed")])
    assert (status, body["responseCode"]) == (503, 2) and "no mirror confirmed" in body["message"]
