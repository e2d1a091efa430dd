"""Pull replication between a primary and its mirror, over real HTTP on 127.0.0.1 with real SQLite files."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession, web

from nodes.authoritative import AuthoritativeConfig, create_app
from nodes.keys import AUTHORITY
from resolver.codec import pack_values, unpack_values
from resolver.config import Topology
from resolver.records import Record
from resolver.values import value_from_wire
from tests.conftest import OPERATOR_SECRET, auth, free_port, topology_of

OP = "300:0.NA/88"
MSGPACK = {"Accept": "application/msgpack"}


def url_value(url: str) -> list[dict[str, Any]]:
    return [{"index": 1, "type": "URL", "data": {"format": "string", "value": url}}]


def two_nodes() -> Topology:
    """A primary owning 88 and a mirror of it, on free ports."""
    return topology_of(
        {
            "primary": {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}"},
            "mirror": {"mirror_of": "primary", "listen": f"127.0.0.1:{free_port()}"},
        }
    )


class Node:
    """One authoritative node of the topology, started and stopped like a process would be."""

    def __init__(self, name: str, topology: Topology, db: Path, session: ClientSession) -> None:
        self.name, self.topology, self.db, self.session = name, topology, db, session
        self.spec = topology.node(name)
        self.url = self.spec.url
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = create_app(AuthoritativeConfig(self.spec, self.topology, self.db, OPERATOR_SECRET))
        self.runner = web.AppRunner(app, shutdown_timeout=5.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.spec.host, self.spec.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def records(self) -> dict[str, Record]:
        """Every record the node stores (under 0.NA and 88, all this topology has)."""
        assert self.runner is not None
        store = self.runner.app[AUTHORITY].store
        keys = [k for prefix in ("0.NA", "88") for k in (await store.list_keys(prefix))[1]]
        return await store.get_many(keys)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with self.session.request(method, self.url + path, data=data, headers=hdrs, params=params) as r:
            raw = await r.read()
            if r.content_type == "application/msgpack":
                return r.status, msgpack.unpackb(raw)
            if r.content_type == "application/x-ndjson":
                return r.status, [json.loads(line) for line in raw.splitlines()]
            return r.status, json.loads(raw)

    async def put(self, handle: str, values: list[dict[str, Any]], identity: str = OP) -> tuple[int, Any]:
        return await self.call("PUT", f"/api/handles/{handle}", body={"values": values}, headers=auth(identity))

    async def status(self) -> dict[str, Any]:
        code, body = await self.call("GET", "/api/replication/status")
        assert code == 200
        result: dict[str, Any] = body
        return result


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``check`` until it holds; fail after ``within`` seconds. Returns how long it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


class Pair:
    def __init__(self, primary: Node, mirror: Node) -> None:
        self.primary, self.mirror = primary, mirror

    async def in_sync(self) -> bool:
        primary, mirror = await self.primary.status(), await self.mirror.status()
        return bool(mirror["connected"]) and mirror["appliedSeq"] == primary["lastSeq"]

    async def resolves_on_mirror(self, handle: str, status: int = 200) -> bool:
        code, _ = await self.mirror.call("GET", f"/api/handles/{handle}")
        return code == status


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Pair]:
    """A primary owning 88 and a mirror of it, on free ports, neither started yet."""
    topology = two_nodes()
    async with ClientSession() as session:
        pair = Pair(
            Node("primary", topology, tmp_path / "primary.sqlite3", session),
            Node("mirror", topology, tmp_path / "mirror.sqlite3", session),
        )
        try:
            yield pair
        finally:
            await pair.mirror.stop()
            await pair.primary.stop()


@pytest.fixture
async def pair(nodes: Pair) -> Pair:
    """Both nodes running, the mirror caught up."""
    await nodes.primary.start()
    await nodes.mirror.start()
    await eventually(nodes.in_sync, 5, "the mirror catches up with an empty primary")
    return nodes


async def test_a_write_on_the_primary_resolves_on_the_mirror_within_a_second(pair: Pair) -> None:
    code, _ = await pair.primary.put("88/x", url_value("https://example.cn/x"))
    assert code in (200, 201)
    await eventually(lambda: pair.resolves_on_mirror("88/x"), 1.0, "88/x resolves on the mirror")
    code, body = await pair.mirror.call("GET", "/api/handles/88/x")
    assert body["values"][0]["data"]["value"] == "https://example.cn/x"
    # An overwrite follows too.
    await pair.primary.put("88/x", url_value("https://example.cn/x2"))

    async def updated() -> bool:
        _, body = await pair.mirror.call("GET", "/api/handles/88/x")
        return bool(body["values"][0]["data"]["value"] == "https://example.cn/x2")

    await eventually(updated, 1.0, "the new value of 88/x reaches the mirror")
    status = await pair.mirror.status()
    assert status["role"] == "mirror" and status["primary"] == pair.primary.url
    assert status["connected"] is True and status["lagSeconds"] == 0.0
    assert (await pair.primary.status())["role"] == "primary"


async def test_a_delete_replicates(pair: Pair) -> None:
    await pair.primary.put("88/gone", url_value("https://example.cn/gone"))
    await eventually(lambda: pair.resolves_on_mirror("88/gone"), 1.0, "88/gone reaches the mirror")
    code, _ = await pair.primary.call("DELETE", "/api/handles/88/gone", headers=auth(OP))
    assert code == 200
    await eventually(lambda: pair.resolves_on_mirror("88/gone", 404), 1.0, "the delete reaches the mirror")
    code, body = await pair.mirror.call("GET", "/api/handles/88/gone")
    assert (code, body["responseCode"]) == (404, 100)


async def test_a_delegation_makes_the_mirror_refer(pair: Pair) -> None:
    site = {"servers": [{"address": "127.0.0.1", "interfaces": [{"protocol": "HTTP", "port": 8200}]}]}
    code, _ = await pair.primary.put(
        "0.NA/88.118", [{"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": site}}]
    )
    assert code in (200, 201)
    await eventually(lambda: pair.resolves_on_mirror("88.118/anything", 300), 1.0, "the mirror refers 88.118")
    code, body = await pair.mirror.call("GET", "/api/handles/88.118/anything")
    assert (code, body["responseCode"], body["prefix"]) == (300, 303, "88.118")
    assert body["values"][0]["data"]["value"]["servers"][0]["interfaces"][0]["port"] == 8200


async def test_a_late_mirror_catches_up_by_snapshot_and_holds_identical_records(nodes: Pair) -> None:
    primary = nodes.primary
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
    await nodes.mirror.start()
    await asyncio.gather(*(write(n) for n in range(500, 560)))
    await primary.call("DELETE", "/api/handles/88/item-1", headers=auth(OP))
    await eventually(nodes.in_sync, 10, "the late mirror catches up")

    status = await nodes.mirror.status()
    assert status["snapshotSeq"] >= before, "the mirror was seeded from a snapshot"
    primary_records, mirror_records = await primary.records(), await nodes.mirror.records()
    assert len(primary_records) == 1 + 500 - 10 + 60 - 1  # 0.NA/88 and the items
    assert mirror_records == primary_records
    code, _ = await nodes.mirror.call("GET", "/api/handles/88/item-559")
    assert code == 200
    code, _ = await nodes.mirror.call("GET", "/api/handles/88/item-1")
    assert code == 404


async def test_the_mirror_refuses_writes(pair: Pair) -> None:
    code, body = await pair.mirror.put("88/y", url_value("https://example.cn/y"))
    assert (code, body["responseCode"]) == (503, 7)
    code, body = await pair.mirror.call("DELETE", "/api/handles/0.NA/88", params={"index": "1"}, headers=auth(OP))
    assert (code, body["responseCode"]) == (503, 7)
    code, _ = await pair.primary.call("GET", "/api/handles/88/y")
    assert code == 404


async def test_changes_and_snapshot_are_for_the_operator_only(pair: Pair) -> None:
    # Another identity that authenticates fine on the primary.
    alice = [*url_value("https://example.cn/alice"), {"index": 300, "type": "HS_SECKEY", "data": "alice-secret"}]
    code, _ = await pair.primary.put("88/alice", alice)
    assert code in (200, 201)
    for path in ("/api/replication/changes", "/api/replication/snapshot"):
        code, body = await pair.primary.call("GET", path)
        assert (code, body["responseCode"]) == (401, 402), path
        code, body = await pair.primary.call("GET", path, headers=auth(OP, "wrong"))
        assert (code, body["responseCode"]) == (401, 403), path
        code, body = await pair.primary.call("GET", path, headers=auth("300:88/alice", "alice-secret"))
        assert (code, body["responseCode"]) == (403, 401), path
        code, _ = await pair.primary.call("GET", path, headers=auth(OP))
        assert code == 200, path
    # The hashed operator secret was replicated, so the same credentials work on the mirror.
    await eventually(lambda: pair.resolves_on_mirror("88/alice"), 1.0, "88/alice reaches the mirror")
    code, _ = await pair.mirror.call("GET", "/api/replication/changes", headers=auth(OP))
    assert code == 200
    code, body = await pair.mirror.call("GET", "/api/replication/changes")
    assert (code, body["responseCode"]) == (401, 402)


async def test_changes_long_poll_wakes_on_a_write_and_speaks_both_codecs(pair: Pair) -> None:
    primary = pair.primary
    last = (await primary.status())["lastSeq"]

    write_started: list[float] = []

    async def write_soon() -> None:
        await asyncio.sleep(0.3)
        write_started.append(time.monotonic())
        await primary.put("88/poll", url_value("https://example.cn/poll"))

    writer = asyncio.create_task(write_soon())
    code, body = await primary.call(
        "GET", "/api/replication/changes", params={"after": str(last), "wait": "20"}, headers=auth(OP)
    )
    answered = time.monotonic()
    await writer
    # Woken by the write itself, not by the once-a-second recheck or the end of the wait.
    assert code == 200 and answered - write_started[0] < 0.5, "the long-poll answers when the write commits"
    [change] = body["changes"]
    assert change["key"] == "88/poll" and change["op"] == "put" and body["lastSeq"] == change["seq"] == last + 1
    assert change["values"][0]["data"]["value"] == "https://example.cn/poll"  # JSON: HANDLE.NET values

    code, body = await primary.call(
        "GET", "/api/replication/changes", params={"after": "0", "limit": "2"}, headers={**auth(OP), **MSGPACK}
    )
    assert code == 200 and [c["seq"] for c in body["changes"]] == [1, 2]
    assert unpack_values(body["changes"][0]["values"])[0].type == "HS_SITE"  # msgpack: packed blobs

    started = time.monotonic()
    code, body = await primary.call(
        "GET", "/api/replication/changes", params={"after": str(last + 1), "wait": "0.3"}, headers=auth(OP)
    )
    assert code == 200 and body["changes"] == [] and time.monotonic() - started >= 0.25
    code, body = await primary.call("GET", "/api/replication/changes", params={"wait": "soon"}, headers=auth(OP))
    assert (code, body["responseCode"]) == (400, 4)


async def test_snapshot_streams_every_record_with_its_secret_hashed(pair: Pair) -> None:
    await pair.primary.put("88/s", url_value("https://example.cn/s"))
    code, lines = await pair.primary.call("GET", "/api/replication/snapshot", headers=auth(OP))
    assert code == 200
    header, *records, trailer = lines
    assert header["responseCode"] == 1 and header["lastSeq"] == 2
    assert [r["key"] for r in records] == ["0.NA/88", "88/s"]
    seckey = next(v for v in records[0]["values"] if v["type"] == "HS_SECKEY")
    assert seckey["data"]["value"].startswith("pbkdf2-sha256$") and OPERATOR_SECRET not in json.dumps(lines)
    assert trailer == {"responseCode": 1, "done": True, "count": 2}
    code, lines = await pair.primary.call(
        "GET", "/api/replication/snapshot", params={"after_key": "0.NA/88"}, headers=auth(OP)
    )
    assert [line.get("key") for line in lines[1:-1]] == ["88/s"] and lines[-1]["count"] == 1


async def test_the_mirror_serves_reads_while_the_primary_is_down_then_catches_up(pair: Pair) -> None:
    await pair.primary.put("88/before", url_value("https://example.cn/before"))
    await eventually(lambda: pair.resolves_on_mirror("88/before"), 1.0, "88/before reaches the mirror")

    await pair.primary.stop()

    async def disconnected() -> bool:
        return (await pair.mirror.status())["connected"] is False

    await eventually(disconnected, 5, "the mirror notices the primary is gone")
    for _ in range(3):
        code, body = await pair.mirror.call("GET", "/api/handles/88/before")
        assert (code, body["values"][0]["data"]["value"]) == (200, "https://example.cn/before")
        await asyncio.sleep(0.3)
    status = await pair.mirror.status()
    assert status["lastError"] and status["lagSeconds"] is not None and status["lagSeconds"] > 0

    await pair.primary.start()  # same database, same port
    await pair.primary.put("88/after", url_value("https://example.cn/after"))
    await eventually(lambda: pair.resolves_on_mirror("88/after"), 8, "the mirror catches up after the restart")
    await eventually(pair.in_sync, 2, "the mirror reports it is in sync again")
    assert (await pair.mirror.status())["lastError"] is None


async def test_a_cut_snapshot_resumes_where_it_stopped_and_replays_from_the_first_attempt(tmp_path: Path) -> None:
    """Against a scripted primary: the first snapshot stream breaks off after two records."""
    blob = pack_values(tuple(value_from_wire(v, position=1, now=1) for v in url_value("https://example.cn/")))
    asked: list[dict[str, str]] = []

    async def snapshot(request: web.Request) -> web.StreamResponse:
        asked.append(dict(request.query))
        response = web.StreamResponse(headers={"Content-Type": "application/msgpack"})
        await response.prepare(request)
        if len(asked) == 1:  # lastSeq 5, then 88/a and 88/b, and the stream ends without its trailer
            for item in (
                {"responseCode": 1, "lastSeq": 5},
                {"key": "88/a", "values": blob},
                {"key": "88/b", "values": blob},
            ):
                await response.write(msgpack.packb(item))
        else:  # meanwhile 88/a was deleted (seq 6) and 88/d written (seq 7)
            for item in (
                {"responseCode": 1, "lastSeq": 7},
                {"key": "88/c", "values": blob},
                {"responseCode": 1, "done": True, "count": 1},
            ):
                await response.write(msgpack.packb(item))
        return response

    async def changes(request: web.Request) -> web.Response:
        after = int(request.query["after"])
        log = [
            {"seq": 6, "key": "88/a", "op": "delete", "values": None},
            {"seq": 7, "key": "88/d", "op": "put", "values": blob},
        ]
        if after >= 7:
            await asyncio.sleep(0.2)  # a short long-poll
        body = {"responseCode": 1, "lastSeq": 7, "changes": [c for c in log if c["seq"] > after]}
        return web.Response(body=msgpack.packb(body), content_type="application/msgpack")

    fake = web.Application()
    fake.router.add_get("/api/replication/snapshot", snapshot)
    fake.router.add_get("/api/replication/changes", changes)
    topology = two_nodes()
    runner = web.AppRunner(fake)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", topology.node("primary").port).start()
    async with ClientSession() as session:
        mirror = Node("mirror", topology, tmp_path / "mirror.sqlite3", session)
        await mirror.start()
        try:

            async def applied() -> bool:
                return (await mirror.status())["appliedSeq"] == 7

            await eventually(applied, 5, "the mirror applies the primary's log up to seq 7")
            assert asked == [{}, {"after_key": "88/b"}]
            status = await mirror.status()
            assert status["snapshotSeq"] == 5 and status["connected"] is True
            assert sorted(await mirror.records()) == ["88/b", "88/c", "88/d"]
        finally:
            await mirror.stop()
            await runner.cleanup()
