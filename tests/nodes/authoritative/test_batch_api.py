"""POST /api/batch over real HTTP on 127.0.0.1 with a real SQLite file: per-operation results,
whole-batch refusals, bodies and metrics, each batch prepared in the event loop or by worker processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession

from nodes.authoritative.authority import AUTHORITY
from nodes.authoritative.batch import workers as batchpool
from resolver.config import Limits
from resolver.names import parse_handle
from resolver.storage import Change
from tests.conftest import OPERATOR_SECRET, LocalNode, auth, free_port, topology_of

MSGPACK = "application/msgpack"
OP = "300:0.NA/88.118"  # the operator of the node below
SITE = {"servers": [{"address": "127.0.0.1", "interfaces": [{"protocol": "HTTP", "port": 8300}]}]}


def car(n: int | str) -> list[dict[str, Any]]:
    return [
        {"index": 1, "type": "URL", "data": {"format": "string", "value": f"https://example.cn/car/{n}"}},
        {"index": 2, "type": "MODEL", "data": "CQ-EV7"},
    ]


def create(handle: str, values: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"op": "create", "handle": handle, "values": car(handle) if values is None else values}


class BatchNode:
    """A secondary node for 88.118 that hosts 88.118.9, and a client for it."""

    def __init__(self, node: LocalNode, mode: str) -> None:
        self.node, self.mode, self.session = node, mode, node.session

    def url(self, path: str) -> str:
        return self.node.url + path

    @property
    def store(self) -> Any:
        return self.node.app[AUTHORITY].store

    async def call(
        self,
        method: str,
        path: str,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        accept: str = "application/json",
    ) -> tuple[int, Any]:
        hdrs = {"Content-Type": content_type, "Accept": accept, **(headers or {})}
        return await self.node.call(method, path, raw=raw, headers=hdrs)

    async def batch(
        self,
        ops: Any,
        *,
        media: str = MSGPACK,
        identity: str = OP,
        secret: str = OPERATOR_SECRET,
        accept: str = MSGPACK,
    ) -> tuple[int, Any]:
        if media == MSGPACK:
            raw = msgpack.packb(ops)
        elif media == "application/x-ndjson":
            raw = b"".join(json.dumps(op).encode() + b"\n" for op in ops)
        else:
            raw = json.dumps(ops).encode()
        return await self.call(
            "POST", "/api/batch", raw=raw, content_type=media, accept=accept, headers=auth(identity, secret)
        )

    async def put(self, handle: str, values: list[dict[str, Any]]) -> int:
        status, _ = await self.call(
            "PUT", f"/api/handles/{handle}", raw=json.dumps({"values": values}).encode(), headers=auth(OP)
        )
        return status

    async def get(self, handle: str) -> tuple[int, Any]:
        return await self.call("GET", f"/api/handles/{handle}", headers=auth(OP))

    async def changes(self) -> list[Change]:
        result: list[Change] = await self.store.changes(0, limit=1_000_000)
        return result


@pytest.fixture(params=["loop", "workers"])
async def node(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BatchNode]:
    """Every batch prepared in the event loop, or every batch (whatever its size) by worker processes."""
    monkeypatch.setattr(batchpool, "MIN_WORKER_BYTES", 0 if request.param == "workers" else 1 << 60)
    topology = topology_of(
        {"sec": {"role": "secondary", "prefix": "88.118", "hosts": ["88.118.9"], "listen": f"127.0.0.1:{free_port()}"}}
    )
    limits = Limits(max_body_bytes=64_000, max_value_bytes=1_000, max_batch_bytes=2_000_000)
    async with ClientSession() as session:
        running = await LocalNode(topology, "sec", tmp_path, session, limits=limits).start()
        try:
            yield BatchNode(running, request.param)
        finally:
            await running.stop()


def codes(body: dict[str, Any]) -> list[int]:
    return [r["responseCode"] for r in body["results"]]


# -- per-item results ------------------------------------------------------------------------------


async def test_bad_rows_are_reported_one_by_one_and_every_good_row_lands(node: BatchNode) -> None:
    assert (
        await node.put("0.NA/88.118.8", [{"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": SITE}}])
        == 200
    )
    assert await node.put("88.118/EXISTS", car("old")) == 200
    before = len(await node.changes())
    ops = [
        create("88.118/GOOD-1"),
        create("88..118/BAD"),  # malformed identifier
        create("88.118/GOOD-2"),
        create("88.118.8/VIN-1"),  # delegated to another node
        create("88.119/X"),  # not served here at all
        create("88.118/BIG", [{"index": 1, "type": "NOTE", "data": "x" * 2_000}]),  # value over 1,000 bytes
        create("88.118/EXISTS"),  # duplicate of a stored record
        create("88.118/GOOD-1"),  # duplicate within the batch
        {"op": "delete", "handle": "88.118/ABSENT"},
        ["not", "a", "map"],
        {"op": "rename", "handle": "88.118/X"},
        {"op": "create", "handle": 42, "values": []},
        {"op": "create", "handle": "88.118/NO-VALUES"},
        create("88.118/DUP-INDEX", [{"index": 1, "type": "A", "data": "a"}, {"index": 1, "type": "B", "data": "b"}]),
        create("88.118.9/GOOD-3"),  # hosted here
    ]
    status, body = await node.batch({"operations": ops})
    assert status == 200
    assert codes(body) == [1, 102, 1, 301, 301, 202, 101, 101, 100, 4, 4, 4, 4, 202, 1]
    assert (body["responseCode"], body["applied"], body["failed"]) == (1, 3, 12)
    results = body["results"]
    assert [r["handle"] for r in results][:9] == [op["handle"] for op in ops[:9]]  # echoed as sent
    assert "message" not in results[0]
    assert "segment 2" in results[1]["message"]
    assert "delegated" in results[3]["message"] and "127.0.0.1:8300" in results[3]["message"]
    assert "88.118" in results[4]["message"]
    assert "value 1" in results[5]["message"] and "1000" in results[5]["message"].replace(",", "")
    assert "already exists" in results[6]["message"] and "already exists" in results[7]["message"]
    assert "does not exist" in results[8]["message"]
    assert "not a map" in results[9]["message"] and "rename" in results[10]["message"]
    assert "values" in results[12]["message"] and "more than once" in results[13]["message"]
    for handle in ("88.118/GOOD-1", "88.118/GOOD-2", "88.118.9/GOOD-3"):
        status, record = await node.get(handle)
        assert status == 200 and record["values"][0]["data"]["value"] == f"https://example.cn/car/{handle}"
        assert record["values"][1]["data"] == {"format": "string", "value": "CQ-EV7"}
    for handle in ("88.118/BIG", "88.118/NO-VALUES", "88.118/DUP-INDEX"):
        assert (await node.get(handle))[0] == 404
    assert (await node.get("88.118/EXISTS"))[1]["values"][0]["data"]["value"] == "https://example.cn/car/old"
    changes = (await node.changes())[before:]
    assert [(c.key, c.op) for c in changes] == [
        (h, "put") for h in ("88.118/GOOD-1", "88.118/GOOD-2", "88.118.9/GOOD-3")
    ]
    assert body["lastSeq"] == changes[-1].seq


async def test_a_user_may_write_only_the_prefixes_its_hs_admin_grants(node: BatchNode) -> None:
    user = [{"index": 300, "type": "HS_SECKEY", "data": "user-pw"}]
    assert await node.put("88.118/USER", user) == 200
    # The user may add handles under 88.118.9 (its prefix handle's HS_ADMIN says so), not under 88.118.
    grant = {"handle": "88.118/USER", "index": 300, "permissions": "000000000011"}
    assert (
        await node.put(
            "0.NA/88.118.9", [{"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": grant}}]
        )
        == 200
    )
    ops = [create(f"88.118.9/U-{n}") for n in range(3)] + [create("88.118/U-X"), create("88.118.9/U-3")]
    status, body = await node.batch(ops, identity="300:88.118/USER", secret="user-pw")
    assert status == 200 and codes(body) == [1, 1, 1, 401, 1]
    assert "add handle" in body["results"][3]["message"] and "300:88.118/USER" in body["results"][3]["message"]
    assert (await node.get("88.118/U-X"))[0] == 404 and (await node.get("88.118.9/U-3"))[0] == 200
    # Deleting needs DELETE_HANDLE (granted), replacing a record its value-level rights (not granted).
    status, body = await node.batch(
        [{"op": "delete", "handle": "88.118.9/U-0"}, {"op": "upsert", "handle": "88.118.9/U-1", "values": car("new")}],
        identity="300:88.118/USER",
        secret="user-pw",
    )
    assert codes(body) == [1, 401] and "modify value" in body["results"][1]["message"]


async def test_rights_changed_by_a_batch_hold_for_the_rest_of_it(node: BatchNode) -> None:
    # The user may add handles under 88.118.9 as a member of GROUP, which the user administers.
    admin = {
        "index": 100,
        "type": "HS_ADMIN",
        "data": {"format": "admin", "value": {"handle": "88.118/USER", "index": 300, "permissions": "*"}},
    }
    members = {
        "index": 200,
        "type": "HS_VLIST",
        "data": {"format": "vlist", "value": [{"handle": "88.118/USER", "index": 300}]},
    }
    assert await node.put("88.118/USER", [{"index": 300, "type": "HS_SECKEY", "data": "user-pw"}]) == 200
    assert await node.put("88.118.9/GROUP", [admin, members]) == 200
    grant = {"handle": "88.118.9/GROUP", "index": 200, "permissions": "000000000011"}
    assert (
        await node.put(
            "0.NA/88.118.9", [{"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": grant}}]
        )
        == 200
    )
    nobody = {**members, "data": {"format": "vlist", "value": []}}
    status, body = await node.batch(
        [
            create("88.118.9/A"),
            {"op": "upsert", "handle": "88.118.9/GROUP", "values": [admin, nobody]},  # leaves the group
            create("88.118.9/B"),
        ],
        identity="300:88.118/USER",
        secret="user-pw",
    )
    assert status == 200 and codes(body) == [1, 1, 401], body["results"]
    assert (await node.get("88.118.9/A"))[0] == 200 and (await node.get("88.118.9/B"))[0] == 404


async def test_operations_apply_in_order(node: BatchNode) -> None:
    ops = [
        create("88.118/A"),
        {"op": "upsert", "handle": "88.118/A", "values": car("A2")},
        {"op": "delete", "handle": "88.118/A"},
        {"op": "delete", "handle": "88.118/A"},  # gone already
        create("88.118/A", car("A3")),  # may be created again
        {"op": "upsert", "handle": "88.118/B", "values": car("B")},  # upsert of nothing creates
        {"op": "create", "handle": "0.NA/88.118.7", "values": []},  # a hosted prefix, new in this batch...
        create("88.118.7/C"),  # ...is served for the rest of it
    ]
    status, body = await node.batch(ops, media="application/json", accept="application/json")
    assert status == 200 and codes(body) == [1, 1, 1, 100, 1, 1, 1, 1]
    assert (await node.get("88.118/A"))[1]["values"][0]["data"]["value"] == "https://example.cn/car/A3"
    assert (await node.get("88.118/B"))[0] == 200
    assert (await node.get("88.118.7/C"))[0] == 200, "the node learnt the prefix handle written by the batch"
    changes = await node.changes()
    applied = [op for op, code in zip(ops, codes(body), strict=True) if code == 1]
    assert [(c.key, c.op) for c in changes[-len(applied) :]] == [
        (parse_handle(op["handle"]).key, "delete" if op["op"] == "delete" else "put") for op in applied
    ]
    assert len(changes) == body["lastSeq"]


async def test_upsert_replaces_the_record_and_keeps_timestamps_of_unchanged_values(node: BatchNode) -> None:
    assert await node.put("88.118/T", [*car("T"), {"index": 3, "type": "NOTE", "data": "old"}]) == 200
    stored = await node.store.get("88.118/T")
    await asyncio.sleep(1.1)  # timestamps are in seconds
    _, body = await node.batch(
        [{"op": "upsert", "handle": "88.118/T", "values": [car("T")[0], {"index": 2, "type": "MODEL", "data": "NEW"}]}]
    )
    assert codes(body) == [1]
    after = await node.store.get("88.118/T")
    assert [v.index for v in after.values] == [1, 2], "an upsert replaces the whole record"
    assert after.values[0].timestamp == stored.values[0].timestamp, "an unchanged value keeps its timestamp"
    assert after.values[1].timestamp > stored.values[1].timestamp and after.values[1].value == "NEW"


async def test_ndjson_msgpack_and_json_bodies_and_answers(node: BatchNode) -> None:
    status, body = await node.batch(
        [create("88.118/J-1"), create("88.118/J-2")], media="application/json", accept="application/json"
    )
    assert status == 200 and codes(body) == [1, 1]
    raw = (
        b"\n"
        + json.dumps(create("88.118/N-1")).encode()
        + b'\n{"op": broken\n\n'
        + json.dumps(create("88.118/N-2")).encode()
        + b"\n"
    )
    status, body = await node.call(
        "POST", "/api/batch", raw=raw, content_type="application/x-ndjson", headers=auth(OP), accept=MSGPACK
    )
    assert status == 200 and codes(body) == [1, 4, 1]
    assert "line 3" in body["results"][1]["message"] and "not valid JSON" in body["results"][1]["message"]
    status, body = await node.batch([create("88.118/M-1")])  # a bare msgpack array
    assert codes(body) == [1]
    status, body = await node.batch({"note": "first", "operations": [create("88.118/M-2")], "after": [1, 2]})
    assert codes(body) == [1]
    for handle in ("88.118/J-1", "88.118/J-2", "88.118/N-1", "88.118/N-2", "88.118/M-1", "88.118/M-2"):
        assert (await node.get(handle))[0] == 200
    status, body = await node.batch([], media="application/x-ndjson")
    assert status == 400 and body["responseCode"] == 4  # no body at all
    status, body = await node.batch({"operations": []})
    assert status == 200 and (body["applied"], body["failed"], body["results"]) == (0, 0, [])


async def test_secret_keys_are_hashed_and_work_at_once(node: BatchNode) -> None:
    user = [{"index": 300, "type": "HS_SECKEY", "data": "batch-pw"}, *car("user")]
    status, body = await node.batch([create("88.118/BATCH-USER", user), create("88.118/PLAIN")])
    assert codes(body) == [1, 1]
    _, record = await node.get("88.118/BATCH-USER")
    seckey = next(v for v in record["values"] if v["index"] == 300)
    assert seckey["data"]["value"].startswith("pbkdf2-sha256$") and seckey["permissions"] == "1100"
    status, _ = await node.call("GET", "/api/sessions/this", headers=auth("300:88.118/BATCH-USER", "batch-pw"))
    assert status == 200


# -- whole-batch refusals ------------------------------------------------------------------------------


async def test_more_operations_than_the_limit_are_refused_whole(node: BatchNode) -> None:
    ops = [create(f"88.118/L-{n}", []) for n in range(10_001)]
    for media in (MSGPACK, "application/x-ndjson", "application/json"):
        status, body = await node.batch(ops, media=media)
        assert status == 400 and body["responseCode"] == 4, media
        assert "at most 10,000 operations" in body["message"] and "10,001" in body["message"]
    assert (await node.get("88.118/L-0"))[0] == 404
    status, body = await node.batch(ops[:10_000])
    assert status == 200 and body["applied"] == 10_000


async def test_oversized_body_is_refused_before_it_is_read(node: BatchNode) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 100_000_000:
            sent += 65_536
            yield b"\n" * 65_536

    async with node.session.post(
        node.url("/api/batch"), data=endless(), headers={**auth(OP), "Content-Type": "application/x-ndjson"}
    ) as r:
        body = await r.json()
    assert r.status == 413 and body["responseCode"] == 4 and "2000000" in body["message"]
    assert sent < 20_000_000, f"the node kept reading: {sent} bytes sent"
    status, body = await node.call("POST", "/api/batch", raw=b"[" + b"0," * 1_100_000 + b"0]", headers=auth(OP))
    assert status == 413, "a declared Content-Length over the limit is refused at once"


async def test_credentials_are_checked_as_for_single_writes(node: BatchNode) -> None:
    raw = msgpack.packb([create("88.118/NOAUTH")])
    status, body = await node.call("POST", "/api/batch", raw=raw, content_type=MSGPACK)
    assert status == 401 and body["responseCode"] == 402
    status, body = await node.batch([create("88.118/NOAUTH")], secret="wrong")
    assert status == 401 and body["responseCode"] == 403
    status, body = await node.call("POST", "/api/batch", raw=b"x", content_type="text/csv", headers=auth(OP))
    assert status == 415
    status, body = await node.call("POST", "/api/batch", raw=b"\x92\xc1", content_type=MSGPACK, headers=auth(OP))
    assert status == 400 and "msgpack" in body["message"]
    status, body = await node.call(
        "POST", "/api/batch", raw=msgpack.packb({"ops": []}), content_type=MSGPACK, headers=auth(OP)
    )
    assert status == 400 and "operations" in body["message"]
    assert (await node.get("88.118/NOAUTH"))[0] == 404


async def test_stage_times_are_exported(node: BatchNode) -> None:
    await node.batch([create("88.118/S-1"), create("88..1/bad")])
    async with node.session.get(node.url("/metrics")) as r:
        text = await r.text()
    assert 'idres_batch_operations_total{outcome="applied"} 1.0' in text
    assert 'idres_batch_operations_total{outcome="failed"} 1.0' in text
    assert 'idres_batch_stage_seconds_total{stage="validate"}' in text
    waited = [line for line in text.splitlines() if line.startswith('idres_batch_stage_seconds_total{stage="worker"}')]
    assert len(waited) == 1 and (float(waited[0].split()[-1]) > 0) == (node.mode == "workers")
