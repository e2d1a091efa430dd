"""Helpers for the replication tests: a primary and its mirror as ``LocalNode``s, and what to ask them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from nodes.authoritative.authority import AUTHORITY
from resolver.config import Topology
from resolver.records import Record
from tests.conftest import LocalNode, auth, eventually, free_port, topology_of

__all__ = [
    "MSGPACK",
    "OP",
    "Pair",
    "ReplicatedNode",
    "pair_of",
    "refuses_writes",
    "running_pair",
    "two_nodes",
    "url_value",
]

OP = "300:0.NA/88"  # the operator of the 88 nodes (primary and mirror share the test secret)
MSGPACK = {"Accept": "application/msgpack"}


def url_value(url: str) -> list[dict[str, Any]]:
    return [{"index": 1, "type": "URL", "data": {"format": "string", "value": url}}]


def two_nodes(
    *, sync: bool = False, primary: str = "primary", mirrors: tuple[str, ...] = ("mirror",), **options: Any
) -> Topology:
    """A primary owning 88 and its mirrors, on free ports; ``options`` go into the primary's spec."""
    spec: dict[str, Any] = {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}", **options}
    if sync:
        spec["sync_mirrors"] = True
    nodes = {primary: spec}
    nodes.update({name: {"mirror_of": primary, "listen": f"127.0.0.1:{free_port()}"} for name in mirrors})
    return topology_of(nodes)


class ReplicatedNode(LocalNode):
    """A ``LocalNode`` of the 88 topology with the replication calls (status, promote) and its records."""

    async def put(
        self, handle: str, values: list[dict[str, Any]], identity: str = OP, secret: str | None = None, **params: str
    ) -> tuple[int, Any]:
        return await super().put(handle, values, identity, secret, **params)

    async def status(self, *, operator: bool = False) -> dict[str, Any]:
        """The replication status; with the operator's credentials it carries the records and the digest."""
        code, body = await self.call("GET", "/api/replication/status", headers=auth(OP) if operator else None)
        assert code == 200, f"status of {self.name}: {code} {body}"
        result: dict[str, Any] = body
        return result

    async def promote(self, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return await self.call("POST", "/api/replication/promote", headers=auth(OP) if headers is None else headers)

    async def writable(self) -> bool:
        return bool((await self.status())["writable"])

    async def records(self) -> dict[str, Record]:
        """Every record the node stores (under 0.NA and 88, all this topology has)."""
        store = self.app[AUTHORITY].store
        keys = [k for prefix in ("0.NA", "88") for k in await store.list_keys(prefix)]
        return await store.get_many(keys)


async def refuses_writes(node: ReplicatedNode, handle: str = "88/refused") -> dict[str, Any]:
    """Assert ``node`` refuses a write with 503/7; its answer (whose message says why)."""
    code, body = await node.put(handle, url_value("https://example.cn/refused"))
    assert (code, body["responseCode"]) == (503, 7), f"{node.name} should refuse writes: {code} {body}"
    result: dict[str, Any] = body
    return result


class Pair:
    """A primary and one node that follows it."""

    def __init__(self, primary: ReplicatedNode, mirror: ReplicatedNode) -> None:
        self.primary, self.mirror = primary, mirror

    async def in_sync(self) -> bool:
        primary, mirror = await self.primary.status(), await self.mirror.status()
        return bool(mirror["connected"]) and mirror["appliedSeq"] == primary["lastSeq"]

    async def resolves_on_mirror(self, handle: str, status: int = 200) -> bool:
        code, _ = await self.mirror.get(handle)
        return code == status

    async def same_digest(self) -> bool:
        primary, mirror = await self.primary.status(operator=True), await self.mirror.status(operator=True)
        return bool(primary["digest"] == mirror["digest"]) and mirror["appliedSeq"] == primary["lastSeq"]


async def pair_of(
    topology: Topology, data: Path, primary: str = "primary", mirror: str = "mirror"
) -> AsyncIterator[Pair]:
    """The two nodes of ``topology``, neither started yet; both stopped at the end."""
    async with ClientSession() as session:
        pair = Pair(ReplicatedNode(topology, primary, data, session), ReplicatedNode(topology, mirror, data, session))
        try:
            yield pair
        finally:
            await pair.mirror.stop()
            await pair.primary.stop()


async def running_pair(topology: Topology, data: Path) -> AsyncIterator[Pair]:
    """Both nodes of ``topology`` running, the mirror caught up with the (empty) primary."""
    async for pair in pair_of(topology, data):
        await pair.primary.start()
        await pair.mirror.start()
        await eventually(pair.in_sync, 5, "the mirror catches up with an empty primary")
        yield pair
