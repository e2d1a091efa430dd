"""A primary and its mirror, over real HTTP on 127.0.0.1 with real SQLite files: what a user of the mirror
sees (writes, deletes and delegations arrive; a late mirror copies a snapshot; reads go on while the
primary is down; the mirror refuses writes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodes.authoritative.authority import AUTHORITY
from nodes.replication import follower
from resolver.storage import Write
from resolver.values import HandleValue
from tests.conftest import auth, eventually
from tests.nodes.replication.pairs import OP, Pair, pair_of, refuses_writes, running_pair, two_nodes, url_value


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Pair]:
    """A primary owning 88 and a mirror of it, neither started yet."""
    async for pair in pair_of(two_nodes(), tmp_path):
        yield pair


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Both running, the mirror caught up."""
    async for running in running_pair(two_nodes(), tmp_path):
        yield running


async def test_a_write_on_the_primary_resolves_on_the_mirror(pair: Pair) -> None:
    code, _ = await pair.primary.put("88/x", url_value("https://example.cn/x"))
    assert code in (200, 201)
    await eventually(lambda: pair.resolves_on_mirror("88/x"), 5, "88/x resolves on the mirror")
    code, body = await pair.mirror.get("88/x")
    assert body["values"][0]["data"]["value"] == "https://example.cn/x"
    # An overwrite follows too.
    await pair.primary.put("88/x", url_value("https://example.cn/x2"))

    async def updated() -> bool:
        _, body = await pair.mirror.get("88/x")
        return bool(body["values"][0]["data"]["value"] == "https://example.cn/x2")

    await eventually(updated, 5, "the new value of 88/x reaches the mirror")
    status = await pair.mirror.status()
    assert status["role"] == "mirror" and status["primary"] == pair.primary.url
    assert status["connected"] is True and status["lagSeconds"] == 0.0
    assert (await pair.primary.status())["role"] == "primary"


async def test_a_delete_replicates(pair: Pair) -> None:
    await pair.primary.put("88/gone", url_value("https://example.cn/gone"))
    await eventually(lambda: pair.resolves_on_mirror("88/gone"), 5, "88/gone reaches the mirror")
    code, _ = await pair.primary.call("DELETE", "/api/handles/88/gone", headers=auth(OP))
    assert code == 200
    await eventually(lambda: pair.resolves_on_mirror("88/gone", 404), 5, "the delete reaches the mirror")
    code, body = await pair.mirror.get("88/gone")
    assert (code, body["responseCode"], body["message"]) == (404, 100, "Handle Not Found")


async def test_a_delegation_makes_the_mirror_refer(pair: Pair) -> None:
    site = {"servers": [{"address": "127.0.0.1", "interfaces": [{"protocol": "HTTP", "port": 8200}]}]}
    code, _ = await pair.primary.put(
        "0.NA/88.118", [{"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": site}}]
    )
    assert code in (200, 201)
    await eventually(lambda: pair.resolves_on_mirror("88.118/anything", 300), 5, "the mirror refers 88.118")
    code, body = await pair.mirror.get("88.118/anything")
    assert (code, body["responseCode"], body["prefix"]) == (300, 303, "88.118")
    assert body["values"][0]["data"]["value"]["servers"][0]["interfaces"][0]["port"] == 8200


async def test_a_late_mirror_catches_up_by_snapshot_and_holds_identical_records(nodes: Pair) -> None:
    primary, mirror = nodes.primary, nodes.mirror
    await primary.start()
    gate = asyncio.Semaphore(16)

    async def write(n: int) -> None:
        async with gate:
            code, _ = await primary.put(f"88/item-{n}", url_value(f"https://example.cn/{n}"))
            assert code in (200, 201)

    await asyncio.gather(*(write(n) for n in range(500)))
    for n in range(0, 500, 50):  # some deletes, so the snapshot is not just the log replayed
        await primary.call("DELETE", f"/api/handles/88/item-{n}", headers=auth(OP))
    before = (await primary.status())["lastSeq"]

    # Writes go on while the mirror copies: they must land too.
    await mirror.start()
    await asyncio.gather(*(write(n) for n in range(500, 560)))
    await primary.call("DELETE", "/api/handles/88/item-1", headers=auth(OP))
    await eventually(nodes.in_sync, 10, "the late mirror catches up")

    status = await mirror.status()
    assert status["snapshotSeq"] >= before, "the mirror was seeded from a snapshot"
    primary_records, mirror_records = await primary.records(), await mirror.records()
    assert len(primary_records) == 1 + 500 - 10 + 60 - 1  # 0.NA/88 and the items
    assert mirror_records == primary_records
    code, _ = await mirror.get("88/item-559")
    assert code == 200
    code, _ = await mirror.get("88/item-1")
    assert code == 404


async def test_the_mirror_refuses_writes_and_sends_them_to_its_primary(pair: Pair) -> None:
    body = await refuses_writes(pair.mirror, "88/y")
    assert body["message"] == f"mirror is a mirror of primary and refuses writes; send them to {pair.primary.url}"
    code, body = await pair.mirror.call("DELETE", "/api/handles/0.NA/88", params={"index": "1"}, headers=auth(OP))
    assert (code, body["responseCode"]) == (503, 7) and "refuses writes" in body["message"]
    code, _ = await pair.primary.get("88/y")
    assert code == 404


async def test_the_mirror_serves_reads_while_the_primary_is_down_then_catches_up(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follower, "CONNECT_GRACE", 0.0)  # report the lost primary at once, not after 5 s
    await pair.primary.put("88/before", url_value("https://example.cn/before"))
    await eventually(lambda: pair.resolves_on_mirror("88/before"), 5, "88/before reaches the mirror")

    await pair.primary.stop()

    async def disconnected() -> bool:
        return (await pair.mirror.status())["connected"] is False

    await eventually(disconnected, 5, "the mirror notices the primary is gone")
    for _ in range(3):
        code, body = await pair.mirror.get("88/before")
        assert (code, body["values"][0]["data"]["value"]) == (200, "https://example.cn/before")
        await asyncio.sleep(0.3)
    status = await pair.mirror.status()
    assert status["lastError"] and status["lagSeconds"] is not None and status["lagSeconds"] > 0

    await pair.primary.start()  # same database, same port
    await pair.primary.put("88/after", url_value("https://example.cn/after"))
    await eventually(lambda: pair.resolves_on_mirror("88/after"), 8, "the mirror catches up after the restart")
    await eventually(pair.in_sync, 5, "the mirror reports it is in sync again")
    assert (await pair.mirror.status())["lastError"] is None


async def test_after_10000_writes_the_two_digests_are_equal(pair: Pair) -> None:
    primary = pair.primary
    gate = asyncio.Semaphore(32)

    async def put(n: int) -> None:
        async with gate:
            code, _ = await primary.put(f"88/w-{n:05}", url_value(f"https://example.cn/{n}"))
            assert code in (200, 201)

    # 1,000 through HTTP, concurrently; HTTP alone would take ~20 s here, so the other 9,000 go
    # straight into the primary's store by batches (seen by the long-poll's once-a-second recheck).
    http = asyncio.gather(*(put(n) for n in range(1_000)))
    store = primary.app[AUTHORITY].store
    for start in range(1_000, 10_000, 500):
        values = [(HandleValue(1, "URL", "string", f"https://example.cn/{n}"),) for n in range(start, start + 500)]
        await store.write([Write(f"88/w-{n:05}", v) for n, v in enumerate(values, start)])
    await http
    for n in range(0, 10_000, 500):  # some deletes and overwrites through HTTP too
        code, _ = await primary.call("DELETE", f"/api/handles/88/w-{n:05}", headers=auth(OP))
        assert code == 200
        await primary.put(f"88/w-{n + 1:05}", url_value("https://example.cn/overwritten"))
    assert (await primary.status())["lastSeq"] == 1 + 10_000 + 40

    await eventually(pair.same_digest, 10, "the mirror's digest equals the primary's")
    primary_status, mirror_status = await primary.status(operator=True), await pair.mirror.status(operator=True)
    assert primary_status["records"] == mirror_status["records"] == 1 + 10_000 - 20
    assert primary_status["digest"] == mirror_status["digest"]
    assert await primary.records() == await pair.mirror.records()
    # A digest tells a difference: one more record on the mirror's side only, and they differ.
    await pair.mirror.app[AUTHORITY].store.write([Write("88/extra", None), Write("88/extra", ())])
    assert (await pair.mirror.status(operator=True))["digest"] != primary_status["digest"]
