"""The snapshot stream (``GET /api/replication/snapshot``) read page by page by key cursor: every record in key
order, resumable after any key, and a mirror copying it while the primary takes writes ends equal."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest

from nodes.authoritative.authority import AUTHORITY
from nodes.replication import endpoints
from resolver.storage import Write
from resolver.values import HandleValue
from tests.conftest import auth, eventually
from tests.nodes.replication.pairs import MSGPACK, OP, Pair, pair_of, two_nodes, url_value


def values(text: str) -> tuple[HandleValue, ...]:
    return (HandleValue(1, "URL", "string", f"https://example.cn/{text}"),)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Pair]:
    async for pair in pair_of(two_nodes(), tmp_path):
        yield pair


async def test_the_snapshot_is_read_page_by_page_in_key_order(nodes: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoints, "SNAPSHOT_PAGE", 3)
    primary = nodes.primary
    await primary.start()
    keys = [f"88/k-{n:02}" for n in range(10)]
    await primary.app[AUTHORITY].store.write([Write(k, values(k)) for k in reversed(keys)])
    code, lines = await primary.call("GET", "/api/replication/snapshot", headers=auth(OP))
    assert code == 200
    header, *records, trailer = lines
    assert header["lastSeq"] == 11 and trailer == {"responseCode": 1, "done": True, "count": 11}
    assert [r["key"] for r in records] == ["0.NA/88", *keys], "every record once, in key order, across pages"
    assert records[3]["values"][0]["data"]["value"] == "https://example.cn/88/k-02"

    async with primary.session.get(
        primary.url + "/api/replication/snapshot", params={"after_key": "88/k-04"}, headers={**auth(OP), **MSGPACK}
    ) as resp:
        assert resp.status == 200
        items = list(msgpack.Unpacker(io.BytesIO(await resp.read()), raw=False))
    assert [i.get("key") for i in items[1:-1]] == keys[5:] and items[-1]["count"] == 5
    assert isinstance(items[1]["values"], bytes), "msgpack: the values as stored"


async def test_a_mirror_copying_while_the_primary_takes_writes_ends_equal(
    nodes: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints, "SNAPSHOT_PAGE", 20)  # ~150 pages: writes land between them
    primary = nodes.primary
    await primary.start()
    store = primary.app[AUTHORITY].store
    for start in range(0, 3_000, 500):
        await store.write([Write(f"88/c-{n:05}", values(str(n))) for n in range(start, start + 500)])
    stop = asyncio.Event()
    rng = random.Random(12)

    async def writer() -> int:
        done = 0
        while not stop.is_set():
            n = rng.randrange(3_500)
            # Deletes, overwrites and new keys, before and after the snapshot's cursor.
            await store.write([Write(f"88/c-{n:05}", None if n % 3 == 0 else values(f"{n}-{done}"))])
            done += 1
            if done % 25 == 0:
                code, _ = await primary.put(f"88/http-{done}", url_value(f"https://example.cn/{done}"))
                assert code in (200, 201)
            await asyncio.sleep(0)
        return done

    writing = asyncio.create_task(writer())
    await asyncio.sleep(0.05)
    await nodes.mirror.start()

    async def copied() -> bool:
        return (await nodes.mirror.status()).get("appliedSeq") is not None

    await eventually(copied, 20, "the mirror copies the snapshot")
    during = (await primary.status())["lastSeq"] - (await nodes.mirror.status())["snapshotSeq"]
    stop.set()
    assert await writing > 0
    assert during > 0, "writes went on while the mirror copied"
    await eventually(nodes.same_digest, 20, "the mirror ends with what the primary holds")
    assert await nodes.mirror.records() == await primary.records()
