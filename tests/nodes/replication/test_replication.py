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

from nodes.authoritative.app import AuthoritativeConfig, create_app
from nodes.authoritative.authority import AUTHORITY
from nodes.replication import roles as promotion
from resolver.codec import pack_values, unpack_values
from resolver.config import Topology
from resolver.records import Record
from resolver.storage import SQLiteStorage, Write
from resolver.values import HandleValue, value_from_wire
from tests.conftest import OPERATOR_SECRET, auth, free_port, topology_of

OP = "300:0.NA/88"
MSGPACK = {"Accept": "application/msgpack"}


def url_value(url: str) -> list[dict[str, Any]]:
    return [{"index": 1, "type": "URL", "data": {"format": "string", "value": url}}]


def two_nodes(*, sync: bool = False) -> Topology:
    """A primary owning 88 and a mirror of it, on free ports."""
    primary: dict[str, Any] = {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}"}
    if sync:
        primary["sync_mirrors"] = True
    return topology_of({"primary": primary, "mirror": {"mirror_of": "primary", "listen": f"127.0.0.1:{free_port()}"}})


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

    @property
    def app(self) -> web.Application:
        assert self.runner is not None, f"{self.name} is not running"
        return self.runner.app

    async def records(self) -> dict[str, Record]:
        """Every record the node stores (under 0.NA and 88, all this topology has)."""
        store = self.app[AUTHORITY].store
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

    async def promote(self, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return await self.call("POST", "/api/replication/promote", headers=auth(OP) if headers is None else headers)

    async def writable(self) -> bool:
        return bool((await self.status())["writable"])


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

    async def same_digest(self) -> bool:
        primary, mirror = await self.primary.status(), await self.mirror.status()
        return bool(primary["digest"] == mirror["digest"]) and mirror["appliedSeq"] == primary["lastSeq"]


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Pair]:
    """A primary owning 88 and a mirror of it, on free ports, neither started yet."""
    async for pair in _pair_of(two_nodes(), tmp_path):
        yield pair


@pytest.fixture
async def sync_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Like ``pair``, with sync_mirrors = true on the primary."""
    async for pair in _pair_of(two_nodes(sync=True), tmp_path):
        await pair.primary.start()
        await pair.mirror.start()
        await eventually(pair.in_sync, 5, "the mirror catches up with an empty primary")
        yield pair


async def _pair_of(topology: Topology, tmp_path: Path) -> AsyncIterator[Pair]:
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
    await nodes.replication.follower.start()
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
    primary = await pair.primary.status()
    assert primary["role"] == "primary"


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
    await nodes.replication.follower.start()
    await asyncio.gather(*(write(n) for n in range(500, 560)))
    await primary.call("DELETE", "/api/handles/88/item-1", headers=auth(OP))
    await eventually(nodes.in_sync, 10, "the late mirror catches up")

    status = await nodes.replication.follower.status()
    assert status["snapshotSeq"] >= before, "the mirror was seeded from a snapshot"
    primary_records, mirror_records = await primary.records(), await nodes.replication.follower.records()
    assert len(primary_records) == 1 + 500 - 10 + 60 - 1  # 0.NA/88 and the items
    assert mirror_records == primary_records
    code, _ = await nodes.replication.follower.call("GET", "/api/handles/88/item-559")
    assert code == 200
    code, _ = await nodes.replication.follower.call("GET", "/api/handles/88/item-1")
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


# -- status, digests and epochs ----------------------------------------------------------------------


async def test_status_reports_roles_epochs_sequence_numbers_lag_and_a_digest(pair: Pair) -> None:
    await pair.primary.put("88/x", url_value("https://example.cn/x"))
    await eventually(pair.same_digest, 2, "the mirror holds what the primary holds")
    primary, mirror = await pair.primary.status(), await pair.mirror.status()
    assert primary["role"] == "primary" and primary["epoch"] == 0 and primary["writable"] is True
    assert primary["roleSource"] == "topology" and "note" not in primary and primary["syncMirrors"] is False
    assert primary["records"] == mirror["records"] == 2 and len(primary["digest"]) == 64
    assert primary["mirrors"]["mirror"]["appliedSeq"] == primary["lastSeq"] == 2  # what it polled after
    assert primary["mirrors"]["mirror"]["lagSeq"] == 0
    assert mirror["role"] == "mirror" and mirror["epoch"] == 0 and mirror["writable"] is False
    assert mirror["primaryNode"] == "primary" and mirror["primaryEpoch"] == 0 and mirror["lagSeq"] == 0
    assert "primary" in mirror["message"] and mirror["message"].endswith(pair.primary.url)
    # The mirror's own log holds what it applied: a node can be followed by a mirror of its own.
    assert mirror["lastSeq"] >= 2
    _, light = await pair.primary.call("GET", "/api/replication/status", params={"digest": "false"})
    assert "digest" not in light and light["epoch"] == 0


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
    primary_status, mirror_status = await primary.status(), await pair.mirror.status()
    assert primary_status["records"] == mirror_status["records"] == 1 + 10_000 - 20
    assert primary_status["digest"] == mirror_status["digest"]
    assert await primary.records() == await pair.mirror.records()
    # A digest tells a difference: one more record on the mirror's side only, and they differ.
    await pair.mirror.app[AUTHORITY].store.write([Write("88/extra", None), Write("88/extra", ())])
    assert (await pair.mirror.status())["digest"] != primary_status["digest"]


async def test_a_mirror_refuses_data_from_a_node_at_a_lower_epoch(nodes: Pair) -> None:
    store = await SQLiteStorage.open(nodes.replication.follower.db)
    await store.set_meta("epoch", "3")  # as if it had followed a primary promoted three times since
    await store.close()
    await nodes.primary.start()
    await nodes.replication.follower.start()

    async def refused() -> bool:
        error = (await nodes.replication.follower.status())["lastError"]
        return bool(error) and "epoch 0, below this node's 3" in error

    await eventually(refused, 5, "the mirror refuses the lower epoch")
    status = await nodes.replication.follower.status()
    assert status["epoch"] == 3 and status["appliedSeq"] is None and status["connected"] is False
    assert status["records"] == 0
    code, _ = await nodes.replication.follower.call("GET", "/api/handles/0.NA/88")
    assert code == 404, "nothing of the superseded node was applied"
    # And the primary, seeing a peer at a newer epoch than its own, stops taking writes.
    await eventually(lambda: _not(nodes.primary.writable()), promotion.PEER_CHECK_SECONDS + 2, "the primary yields")
    code, body = await nodes.primary.put("88/x", url_value("https://example.cn/x"))
    assert (code, body["responseCode"]) == (503, 7) and "mirror (epoch 3)" in body["message"]


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


# -- sync_mirrors -----------------------------------------------------------------------------------


async def test_with_sync_mirrors_an_acknowledged_write_is_already_on_the_mirror(sync_pair: Pair) -> None:
    primary, mirror = sync_pair.primary, sync_pair.mirror
    for n in range(20):
        code, _ = await primary.put(f"88/s-{n}", url_value(f"https://example.cn/s-{n}"))
        assert code in (200, 201)
        code, body = await mirror.call("GET", f"/api/handles/88/s-{n}")  # no waiting: it is there
        assert (code, body["values"][0]["data"]["value"]) == (200, f"https://example.cn/s-{n}")
    code, _ = await primary.call("DELETE", "/api/handles/88/s-0", headers=auth(OP))
    assert code == 200
    code, _ = await mirror.call("GET", "/api/handles/88/s-0")
    assert code == 404

    gate = asyncio.Semaphore(16)  # concurrent sync writes share the mirror's round trips

    async def put(n: int) -> None:
        async with gate:
            code, _ = await primary.put(f"88/c-{n}", url_value(f"https://example.cn/c-{n}"))
            assert code in (200, 201)
            code, _ = await mirror.call("GET", f"/api/handles/88/c-{n}")
            assert code == 200

    await asyncio.gather(*(put(n) for n in range(100)))
    status = await primary.status()
    assert status["syncMirrors"] is True and status["mirrors"]["mirror"]["appliedSeq"] == status["lastSeq"]


async def test_with_sync_mirrors_and_the_mirror_down_a_write_fails_within_the_timeout(
    sync_pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(promotion, "SYNC_ACK_TIMEOUT", 1.0)
    primary = sync_pair.primary
    await sync_pair.mirror.stop()
    started = time.monotonic()
    code, body = await primary.put("88/unconfirmed", url_value("https://example.cn/unconfirmed"))
    took = time.monotonic() - started
    assert (code, body["responseCode"]) == (503, 2) and 0.9 <= took < 2.0
    assert "committed on primary" in body["message"] and "no mirror confirmed it within 1 s" in body["message"]
    # Committed all the same: the primary serves it, and the mirror gets it when it returns.
    code, _ = await primary.call("GET", "/api/handles/88/unconfirmed")
    assert code == 200
    await sync_pair.mirror.start()
    await eventually(lambda: sync_pair.resolves_on_mirror("88/unconfirmed"), 5, "the mirror gets it on its return")
    code, _ = await primary.put("88/confirmed", url_value("https://example.cn/confirmed"))
    assert code in (200, 201)
    assert await sync_pair.resolves_on_mirror("88/confirmed")
