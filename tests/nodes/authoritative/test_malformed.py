"""Every malformed input of issue 11 finding 3, over real HTTP: 400 with a Handle responseCode and a
message naming the problem, never a 500 (and so never a traceback in the node's log)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import pytest_asyncio
from aiohttp import ClientSession
from yarl import URL

from nodes.authoritative.batch import workers as batchpool
from tests.conftest import LocalNode, auth, free_port, topology_of

pytestmark = pytest.mark.asyncio(loop_scope="module")

OP = "300:0.NA/88.118"  # the operator of the node below
JSON = "application/json"
MSGPACK = "application/msgpack"
NDJSON = "application/x-ndjson"
DIGITS = "7" * 5_000  # past Python's 4,300-digit int-string conversion limit
TWO_63 = str(2**63)
SITE_SERVER = {"address": "127.0.0.1", "interfaces": [{"protocol": "HTTP", "port": 8300}]}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    body: bytes | None = None
    content_type: str = JSON
    credentials: bool = True
    status: int = 400
    code: int = 4
    words: tuple[str, ...] = ()
    per_operation: bool = False  # a batch: HTTP 200, the words in the first operation's result


def value(**fields: Any) -> dict[str, Any]:
    return {"index": 1, "type": "URL", "data": "https://example.cn", **fields}


def put_json(values: Any, **kw: Any) -> Case:
    return Case("PUT", "/api/handles/88.118/X", json.dumps({"values": values}).encode(), **kw)


def put_msgpack(values: Any, **kw: Any) -> Case:
    return Case("PUT", "/api/handles/88.118/X", msgpack.packb({"values": values}), MSGPACK, **kw)


def put_text(text: str, **kw: Any) -> Case:
    return Case("PUT", "/api/handles/88.118/X", text.encode(), **kw)


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


def batch_json(operations_text: str, **kw: Any) -> Case:
    return Case("POST", "/api/batch", ('{"operations": ' + operations_text + "}").encode(), **kw)


def batch_msgpack(operations: list[Any], **kw: Any) -> Case:
    return Case("POST", "/api/batch", msgpack.packb({"operations": operations}), MSGPACK, **kw)


def create(values: Any) -> dict[str, Any]:
    return {"op": "create", "handle": "88.118/B", "values": values}


BIN, EXT, STAMP = b"\x00\xff", msgpack.ExtType(5, b"x"), msgpack.Timestamp(1, 0)
OUT_OF_RANGE = ("out of range", "at most 9223372036854775807")
NESTED = ("nested deeper than 32 levels",)
DIGITS_WORDS = ("integer of more than 4,300 digits",)

CASES: dict[str, Case] = {
    # -- query parameters
    "get index 5000 digits, anonymous": Case(
        "GET", f"/api/handles/88.118/X?index={DIGITS}", credentials=False, words=("parameter index=", *OUT_OF_RANGE)
    ),
    "get index 2^63, anonymous": Case(
        "GET", f"/api/handles/88.118/X?index={TWO_63}", credentials=False, words=("index", *OUT_OF_RANGE)
    ),
    "get index 1,5000 digits": Case("GET", f"/api/handles/88.118/X?index=1,{DIGITS}", words=("parameter index=",)),
    "delete index 5000 digits": Case("DELETE", f"/api/handles/88.118/X?index={DIGITS}", words=("index", "range")),
    "put index 5000 digits": Case(
        "PUT", f"/api/handles/88.118/X?index={DIGITS}", json.dumps([value()]).encode(), words=("index", "range")
    ),
    "list page 2^63": Case("GET", f"/api/handles?prefix=88.118&page={TWO_63}&pageSize=1", words=("page", "range")),
    "list pageSize 2^63": Case(
        "GET", f"/api/handles?prefix=88.118&page=0&pageSize={TWO_63}", words=("pageSize", "range")
    ),
    "list page 5000 digits": Case("GET", f"/api/handles?prefix=88.118&page={DIGITS}&pageSize=5", words=("page",)),
    "list page 1_0": Case("GET", "/api/handles?prefix=88.118&page=1_0&pageSize=5", words=("page", "not an integer")),
    "list page -2^63": Case("GET", f"/api/handles?prefix=88.118&page=-{TWO_63}&pageSize=5", words=("page", "range")),
    "changes after 2^63": Case("GET", f"/api/replication/changes?after={TWO_63}", words=("after", *OUT_OF_RANGE)),
    "changes after 5000 digits": Case("GET", f"/api/replication/changes?after={DIGITS}", words=("after", "range")),
    "changes limit 2^63": Case("GET", f"/api/replication/changes?limit={TWO_63}", words=("limit", "range")),
    "changes epoch 5000 digits": Case("GET", f"/api/replication/changes?epoch={DIGITS}", words=("epoch", "range")),
    # -- JSON bodies
    "put nested 1,000 deep": put_text(deep_json(1_000), words=NESTED),
    "put nested 100,000 deep, anonymous": put_text(deep_json(100_000), credentials=False, words=NESTED),
    "put nested 100 deep in a value": put_json(
        [value(data={"format": "key", "value": json.loads(deep_json(100))})], words=NESTED
    ),
    "put index of 5000 digits": put_text(f'[{{"index": {DIGITS}, "type": "URL", "data": "x"}}]', words=DIGITS_WORDS),
    "put ttl of 5000 digits": put_text(
        f'[{{"index": 1, "type": "URL", "data": "x", "ttl": {DIGITS}}}]', words=DIGITS_WORDS
    ),
    "put ttl digit string of 5000 digits": put_json([value(ttl=DIGITS)], code=202, words=("ttl", "out of range")),
    "put index of 4000 digits": put_text(
        f'[{{"index": {"9" * 4000}, "type": "URL", "data": "x"}}]',
        code=202,
        words=("an integer of 13288 bits", "indexes must be positive"),
    ),
    "put admin index digit string of 5000 digits": put_json(
        [
            value(
                index=100,
                type="HS_ADMIN",
                data={"format": "admin", "value": {"handle": "0.NA/88.118", "index": DIGITS}},
            )
        ],
        code=202,
        words=("admin index", "out of range"),
    ),
    "put key data 100 deep, msgpack": put_msgpack(
        [value(data={"format": "key", "value": {"k": json.loads(deep_json(100))}})], words=NESTED
    ),
    # -- msgpack types that JSON has not: bin, ext, timestamp
    "msgpack index bin": put_msgpack(
        [value(index=BIN)], code=202, words=("index must be an integer, not binary data",)
    ),
    "msgpack index ext": put_msgpack(
        [value(index=EXT)], code=202, words=("index must be an integer, not a msgpack ExtType",)
    ),
    "msgpack index timestamp": put_msgpack([value(index=STAMP)], code=202, words=("not a msgpack Timestamp",)),
    "msgpack format bin": put_msgpack(
        [value(data={"format": BIN, "value": "x"})], code=202, words=("unknown data format binary",)
    ),
    "msgpack ttl bin": put_msgpack([value(ttl=BIN)], code=202, words=("ttl must be an integer, not binary data",)),
    "msgpack ttl timestamp": put_msgpack([value(ttl=STAMP)], code=202, words=("ttl must be an integer",)),
    "msgpack permissions bin": put_msgpack(
        [value(permissions=BIN)], code=202, words=("permissions must be", "binary data")
    ),
    "msgpack admin handle bin": put_msgpack(
        [value(index=100, type="HS_ADMIN", data={"format": "admin", "value": {"handle": BIN, "index": 300}})],
        code=202,
        words=("handle must be a string, not binary data",),
    ),
    "msgpack admin permissions ext": put_msgpack(
        [
            value(
                index=100,
                type="HS_ADMIN",
                data={"format": "admin", "value": {"handle": "0.NA/88.118", "index": 300, "permissions": EXT}},
            )
        ],
        code=202,
        words=("admin permissions", "ExtType"),
    ),
    "msgpack vlist handle timestamp": put_msgpack(
        [value(type="HS_VLIST", data={"format": "vlist", "value": [{"handle": STAMP, "index": 1}]})],
        code=202,
        words=("handle must be a string, not a msgpack Timestamp",),
    ),
    "msgpack site port bin": put_msgpack(
        [
            value(
                type="HS_SITE",
                data={
                    "format": "site",
                    "value": {"servers": [{**SITE_SERVER, "interfaces": [{"protocol": "HTTP", "port": BIN}]}]},
                },
            )
        ],
        code=202,
        words=("port must be an integer, not binary data",),
    ),
    "msgpack site serverId timestamp": put_msgpack(
        [value(type="HS_SITE", data={"format": "site", "value": {"servers": [{**SITE_SERVER, "serverId": STAMP}]}})],
        code=202,
        words=("serverId must be an integer",),
    ),
    "msgpack site publicKey bin": put_msgpack(
        [value(type="HS_SITE", data={"format": "site", "value": {"servers": [{**SITE_SERVER, "publicKey": BIN}]}})],
        code=202,
        words=("publicKey must be plain JSON, not binary data",),
    ),
    "msgpack site version ext": put_msgpack(
        [value(type="HS_SITE", data={"format": "site", "value": {"version": EXT, "servers": [SITE_SERVER]}})],
        code=202,
        words=("site version must be an integer",),
    ),
    "msgpack key data with bin": put_msgpack(
        [value(data={"format": "key", "value": {"kty": BIN}})], code=202, words=("key data must be plain JSON",)
    ),
    "msgpack body handle ext": Case(
        "PUT",
        "/api/handles/88.118/X",
        msgpack.packb({"handle": EXT, "values": [value()]}),
        MSGPACK,
        words=("body names handle a msgpack ExtType",),
    ),
    "msgpack nested 2,000 deep": Case(
        "PUT", "/api/handles/88.118/X", b"\x91" * 2_000 + b"\xc0", MSGPACK, credentials=False, words=NESTED
    ),
    "msgpack nested 100 deep": Case("PUT", "/api/handles/88.118/X", b"\x91" * 100 + b"\xc0", MSGPACK, words=NESTED),
    # -- batches: the whole body when it cannot be read, else the one operation
    "batch JSON nested 1,000 deep": batch_json(deep_json(1_000), words=NESTED),
    "batch JSON nested 300,000 deep (a worker's size)": batch_json(deep_json(300_000), words=NESTED),
    "batch JSON integer of 5000 digits": batch_json(
        f'[{{"op": "create", "handle": "88.118/B", "values": {DIGITS}}}]', words=DIGITS_WORDS
    ),
    "batch msgpack nested 2,000 deep": Case("POST", "/api/batch", b"\x91" * 2_000 + b"\xc0", MSGPACK, words=NESTED),
    "batch NDJSON line nested 1,000 deep": Case(
        "POST",
        "/api/batch",
        deep_json(1_000).encode() + b"\n",
        NDJSON,
        status=200,
        per_operation=True,
        words=("line 1", *NESTED),
    ),
    "batch NDJSON line integer of 5000 digits": Case(
        "POST",
        "/api/batch",
        f'{{"op": "create", "handle": "88.118/B", "values": [{{"index": {DIGITS}}}]}}\n'.encode(),
        NDJSON,
        status=200,
        per_operation=True,
        words=("line 1", *DIGITS_WORDS),
    ),
    "batch JSON operation nested 900 deep": batch_json(
        "[" + deep_json(900) + "]",
        status=200,
        per_operation=True,
        words=("operation 1 is not a map", "a list of 1 items"),
    ),
    "batch JSON ttl digit string of 5000 digits": batch_json(
        json.dumps([create([value(ttl=DIGITS)])]),
        status=200,
        code=202,
        per_operation=True,
        words=("ttl", "out of range"),
    ),
    "batch msgpack index bin": batch_msgpack(
        [create([value(index=BIN)])],
        status=200,
        code=202,
        per_operation=True,
        words=("index must be an integer, not binary data",),
    ),
    "batch msgpack op timestamp": batch_msgpack(
        [{"op": STAMP, "handle": "88.118/B", "values": []}],
        status=200,
        per_operation=True,
        words=("unknown op a msgpack Timestamp",),
    ),
    "batch msgpack site publicKey ext": batch_msgpack(
        [
            create(
                [
                    value(
                        type="HS_SITE",
                        data={"format": "site", "value": {"servers": [{**SITE_SERVER, "publicKey": EXT}]}},
                    )
                ]
            )
        ],
        status=200,
        code=202,
        per_operation=True,
        words=("publicKey must be plain JSON",),
    ),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nodes(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, LocalNode]]:
    """The same node twice: batches prepared in the event loop, and by a worker process."""
    started: dict[str, LocalNode] = {}
    async with ClientSession() as session:
        try:
            for mode, min_bytes in (("loop", 1 << 60), ("workers", 0)):
                port = free_port()
                topology = topology_of(
                    {
                        "sec": {
                            "role": "secondary",
                            "prefix": "88.118",
                            "batch_workers": 1,
                            "listen": f"127.0.0.1:{port}",
                        }
                    }
                )
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(batchpool, "MIN_WORKER_BYTES", min_bytes)
                    started[mode] = await LocalNode(topology, "sec", tmp_path_factory.mktemp(mode), session).start()
            yield started
        finally:
            for node in started.values():
                await node.stop()


async def send(node: LocalNode, case: Case) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": case.content_type} if case.body is not None else {}
    if case.credentials:
        headers.update(auth(OP))
    url = URL(node.url + case.path, encoded=True)
    async with node.session.request(case.method, url, data=case.body, headers=headers) as response:
        assert response.content_type == JSON, await response.text()
        return response.status, json.loads(await response.read())


def check(case: Case, status: int, body: dict[str, Any]) -> None:
    assert status == case.status, body
    result = body["results"][0] if case.per_operation else body
    assert result["responseCode"] == case.code, body
    for words in case.words:
        assert words in result["message"], result["message"]
    assert len(result["message"]) < 400, "a message quotes what was sent, briefly"


@pytest.mark.parametrize("name", list(CASES))
async def test_malformed_input_is_a_400_naming_the_problem(nodes: dict[str, LocalNode], name: str) -> None:
    case = CASES[name]
    status, body = await send(nodes["loop"], case)
    check(case, status, body)


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.path == "/api/batch"])
async def test_malformed_batch_prepared_by_a_worker_process(nodes: dict[str, LocalNode], name: str) -> None:
    status, body = await send(nodes["workers"], CASES[name])
    check(CASES[name], status, body)


async def test_a_page_past_two_to_the_63_is_past_the_end(nodes: dict[str, LocalNode]) -> None:
    """page × pageSize beyond SQLite's largest OFFSET: an empty page, as any page past the end."""
    case = Case("GET", f"/api/handles?prefix=88.118&page={2**62}&pageSize=4", status=200, code=1)
    status, body = await send(nodes["loop"], case)
    assert (status, body["responseCode"], body["handles"]) == (200, 1, [])
    assert int(body["totalCount"]) >= 0


async def test_nothing_malformed_was_stored(nodes: dict[str, LocalNode]) -> None:
    for node in nodes.values():
        for handle in ("88.118/X", "88.118/B"):
            status, _ = await node.get(handle)
            assert status == 404, f"{handle} on {node.url}"
