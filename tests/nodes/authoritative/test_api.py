"""The authoritative node's REST API over real HTTP on 127.0.0.1 with a real SQLite file."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from nodes.authoritative import authority as authority_module
from nodes.authoritative.app import AuthoritativeConfig, create_app
from resolver.bodies import not_found_body, values_not_found_body
from resolver.config import Limits
from tests.conftest import OPERATOR_SECRET, auth, free_port, topology_of

OP = "300:0.NA/88.118"
CAR = [
    {"index": 1, "type": "URL", "data": {"format": "string", "value": "https://example.cn/car/1"}},
    {"index": 2, "type": "MODEL", "data": "CQ-EV7"},
    {"index": 3, "type": "URL.mobile", "data": "https://m.example.cn/car/1"},
    {
        "index": 100,
        "type": "HS_ADMIN",
        "data": {"format": "admin", "value": {"handle": "0.NA/88.118", "index": "200", "permissions": "011111110011"}},
    },
]


class Node:
    """A running secondary node for 88.118 that hosts 88.118.9, and a client session to it."""

    def __init__(self, server: TestServer, session: ClientSession, db: Path) -> None:
        self.server, self.session, self.db = server, session, db

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        async with self.session.request(method, self.url(path), data=data, headers=hdrs, params=params) as r:
            payload = await r.read()
            if r.content_type == "application/msgpack":
                return r.status, msgpack.unpackb(payload)
            assert r.content_type == "application/json", f"non-JSON answer: {payload[:200]!r}"
            return r.status, json.loads(payload)

    async def put(
        self,
        handle: str,
        values: list[dict[str, Any]],
        identity: str = OP,
        secret: str = OPERATOR_SECRET,
        **params: str,
    ) -> tuple[int, dict[str, Any]]:
        return await self.call(
            "PUT", f"/api/handles/{handle}", body={"values": values}, headers=auth(identity, secret), params=params
        )


def make_app(db: Path, port: int, limits: Limits | None = None) -> web.Application:
    topology = topology_of(
        {
            "sec": {"role": "secondary", "prefix": "88.118", "hosts": ["88.118.9"], "listen": f"127.0.0.1:{port}"},
        }
    )
    config = AuthoritativeConfig(topology.node("sec"), topology, db, OPERATOR_SECRET)
    if limits is not None:
        config = AuthoritativeConfig(config.spec, topology, db, OPERATOR_SECRET, limits)
    return create_app(config)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    port = free_port()
    server = TestServer(
        make_app(tmp_path / "sec.sqlite3", port, Limits(max_body_bytes=64_000)), host="127.0.0.1", port=port
    )
    await server.start_server()
    async with ClientSession() as session:
        yield Node(server, session, tmp_path / "sec.sqlite3")
    await server.close()


async def test_own_prefix_handle_is_public_but_its_secret_is_not(node: Node) -> None:
    status, body = await node.call("GET", "/api/handles/0.NA/88.118")
    assert status == 200 and body["responseCode"] == 1 and body["handle"] == "0.NA/88.118"
    types = {v["index"]: v["type"] for v in body["values"]}
    assert types[1] == "HS_SITE" and types[100] == "HS_ADMIN" and types[200] == "HS_VLIST"
    assert 300 not in types, "HS_SECKEY must never be shown to an unauthenticated client"
    site = body["values"][0]["data"]["value"]
    assert site["servers"][0]["interfaces"][0]["port"] == node.server.port
    status, body = await node.call("GET", "/api/handles/0.NA/88.118", headers=auth(OP))
    seckey = next(v for v in body["values"] if v["index"] == 300)
    assert seckey["permissions"] == "1100"
    assert OPERATOR_SECRET not in json.dumps(body), "secrets are stored hashed"
    assert seckey["data"]["value"].startswith("pbkdf2-sha256$")


async def test_create_conflict_and_overwrite_follow_handle_net(node: Node) -> None:
    status, body = await node.put("88.118/CAR-1", CAR, overwrite="false")
    assert (status, body) == (201, {"responseCode": 1, "handle": "88.118/CAR-1"})
    status, body = await node.put("88.118/CAR-1", CAR, overwrite="false")
    assert status == 409 and body["responseCode"] == 101 and "already exists" in body["message"]
    status, body = await node.put("88.118/CAR-1", CAR[:2] + CAR[3:])
    assert (status, body["responseCode"]) == (200, 1)
    status, body = await node.call("GET", "/api/handles/88.118/CAR-1")
    assert [v["index"] for v in body["values"]] == [1, 2, 100]
    assert body["values"][1]["data"] == {"format": "string", "value": "CQ-EV7"}
    assert body["values"][0]["timestamp"].endswith("Z") and body["values"][0]["ttl"] == 86400
    assert "permissions" not in body["values"][0]


async def test_resolution_filters_echo_and_not_found(node: Node) -> None:
    await node.put("88.118/Car-A", CAR)
    status, body = await node.call("GET", "/api/handles/88.118/Car-A", params=[("type", "URL.")])
    assert status == 200 and [v["index"] for v in body["values"]] == [1, 3]
    status, body = await node.call("GET", "/api/handles/88.118/Car-A", params=[("type", "MODEL"), ("index", "100")])
    assert [v["index"] for v in body["values"]] == [2, 100]
    status, body = await node.call("GET", "/api/handles/88.118/Car-A", params={"type": "NOPE"})
    assert (status, body) == (200, values_not_found_body("88.118/Car-A"))
    assert body["message"] == "no value matches the type or index given"
    # Suffixes are case-sensitive, and the answer echoes exactly what was asked.
    status, body = await node.call("GET", "/api/handles/88.118/car-a")
    assert status == 404 and body == not_found_body("88.118/car-a")
    assert body == {"responseCode": 100, "handle": "88.118/car-a", "message": "Handle Not Found"}


async def test_prefixes_it_has_nothing_to_do_with_get_301(node: Node) -> None:
    for handle in ("88.119/X", "88/X", "88.118.77/X"):
        status, body = await node.call("GET", f"/api/handles/{handle}")
        assert status == 400 and body["responseCode"] == 301, handle
        assert "88.118" in body["message"]


async def test_malformed_identifier_is_400_102_naming_the_problem(node: Node) -> None:
    status, body = await node.call("GET", "/api/handles/88..118/X")
    assert status == 400 and body["responseCode"] == 102 and "segment 2" in body["message"]
    status, body = await node.call("GET", "/api/handles/88.118%2FX%07")
    assert status == 400 and body["responseCode"] == 102 and "control character" in body["message"]
    status, body = await node.put("88.118", CAR)
    assert status == 400 and body["responseCode"] == 102 and "/" in body["message"]


async def test_delegation_gives_referrals_and_refuses_writes_below_it(node: Node) -> None:
    site = {"servers": [{"address": "127.0.0.1", "interfaces": [{"protocol": "HTTP", "port": 8300}]}]}
    status, _ = await node.put(
        "0.NA/88.118.8", [{"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": site}}]
    )
    assert status == 200
    status, body = await node.call("GET", "/api/handles/88.118.8/VIN-1")
    assert status == 300 and body["responseCode"] == 303 and body["prefix"] == "88.118.8"
    assert body["message"] == "prefix 88.118.8 is delegated: ask one of its sites"
    assert body["values"][0]["type"] == "HS_SITE"
    assert body["values"][0]["data"]["value"]["servers"][0]["interfaces"][0]["port"] == 8300
    status, body = await node.call("GET", "/api/handles/0.NA/88.118.8")
    assert status == 200 and body["values"][0]["type"] == "HS_SITE"
    status, body = await node.put("88.118.8/VIN-1", CAR)
    assert status == 400 and body["responseCode"] == 301 and "127.0.0.1:8300" in body["message"]


async def test_hosted_prefix_is_served_here(node: Node) -> None:
    status, _ = await node.put("88.118.9/SEAT-1", CAR[:2], overwrite="false")
    assert status == 201
    status, body = await node.call("GET", "/api/handles/88.118.9/SEAT-1")
    assert status == 200 and body["values"][1]["data"]["value"] == "CQ-EV7"


async def test_value_level_put_and_delete(node: Node) -> None:
    await node.put("88.118/V", CAR[:2])
    new = {"index": 5, "type": "BATCH", "data": "B-1"}
    status, body = await node.put("88.118/V", [new], index="5", overwrite="false")
    assert status == 201
    status, body = await node.put("88.118/V", [new], index="5", overwrite="false")
    assert status == 409 and body["responseCode"] == 201
    status, body = await node.put("88.118/V", [new], index="6")
    assert status == 400 and body["responseCode"] == 4 and "Mismatched indexes" in body["message"]
    status, body = await node.put("88.118/V", [{**new, "data": "B-2"}], index="5")
    assert status == 200
    status, body = await node.call("DELETE", "/api/handles/88.118/V", params={"index": "2"}, headers=auth(OP))
    assert (status, body["responseCode"]) == (200, 1)
    status, body = await node.call("GET", "/api/handles/88.118/V")
    assert [(v["index"], v["data"]["value"]) for v in body["values"]] == [(1, "https://example.cn/car/1"), (5, "B-2")]
    status, body = await node.call("DELETE", "/api/handles/88.118/V", params={"index": "9"}, headers=auth(OP))
    assert status == 400 and body["responseCode"] == 200
    status, body = await node.call("DELETE", "/api/handles/88.118/V", headers=auth(OP))
    assert status == 200
    status, body = await node.call("DELETE", "/api/handles/88.118/V", headers=auth(OP))
    assert status == 404 and body["responseCode"] == 100
    status, body = await node.put("88.118/ABSENT", [new], index="5")
    assert status == 404 and body["responseCode"] == 100


async def test_mint_new_suffix(node: Node) -> None:
    status, body = await node.put("88.118/", CAR[:1], mintNewSuffix="true")
    assert status == 201 and body["handle"].startswith("88.118/") and len(body["handle"]) > 20
    status, again = await node.call("GET", f"/api/handles/{body['handle']}")
    assert status == 200 and again["handle"] == body["handle"]


async def test_credentials_are_checked(node: Node) -> None:
    status, body = await node.call("PUT", "/api/handles/88.118/X", body={"values": CAR})
    assert status == 401 and body["responseCode"] == 402
    status, body = await node.put("88.118/X", CAR, secret="wrong")
    assert status == 401 and body["responseCode"] == 403 and "wrong secret" in body["message"]
    status, body = await node.call(
        "PUT",
        "/api/handles/88.118/X",
        body={"values": CAR},
        headers={"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()},
    )
    assert status == 401
    status, body = await node.put("88.118/X", CAR, identity="300:0.NA/88.119")
    assert status == 401, "an identity this node cannot verify must not be accepted"
    status, _ = await node.call("GET", "/api/handles/88.118/X")
    assert status == 404, "no refused write may leave anything behind"


async def test_identities_registered_on_the_node_are_authorised_by_hs_admin(node: Node) -> None:
    # An enterprise user with its own secret, administering only the handles whose HS_ADMIN names it.
    user = [
        {"index": 300, "type": "HS_SECKEY", "data": "user-pw"},
        {
            "index": 100,
            "type": "HS_ADMIN",
            "data": {
                "format": "admin",
                "value": {"handle": "88.118/USER", "index": 300, "permissions": "011111110011"},
            },
        },
    ]
    assert (await node.put("88.118/USER", user))[0] == 200
    status, body = await node.call("GET", "/api/handles/88.118/USER")
    assert [v["index"] for v in body["values"]] == [100], "the secret is not public"
    mine = [{"index": 1, "type": "URL", "data": "https://a"}, user[1]]
    assert (await node.put("88.118/MINE", mine))[0] == 200
    assert (await node.put("88.118/THEIRS", CAR))[0] == 200
    status, _ = await node.put(
        "88.118/MINE",
        [{"index": 2, "type": "NOTE", "data": "x"}],
        identity="300:88.118/USER",
        secret="user-pw",
        index="2",
    )
    assert status == 200
    status, body = await node.put(
        "88.118/THEIRS",
        [{"index": 9, "type": "NOTE", "data": "x"}],
        identity="300:88.118/USER",
        secret="user-pw",
        index="9",
    )
    assert status == 403 and body["responseCode"] == 401 and "add value" in body["message"]
    # Creating under the prefix needs ADD_HANDLE on 0.NA/88.118, which names the operator group only.
    status, body = await node.put("88.118/NEW", CAR, identity="300:88.118/USER", secret="user-pw")
    assert status == 403


async def test_non_public_values_are_shown_only_to_admins(node: Node) -> None:
    values = [*CAR[:2], {"index": 7, "type": "COST", "data": "1234.50", "permissions": "1100"}]
    await node.put("88.118/PRIVATE", values)
    _, body = await node.call("GET", "/api/handles/88.118/PRIVATE")
    assert [v["index"] for v in body["values"]] == [1, 2]
    _, body = await node.call("GET", "/api/handles/88.118/PRIVATE", params={"index": "7"})
    assert body["values"] == []
    _, body = await node.call("GET", "/api/handles/88.118/PRIVATE", headers=auth(OP))
    assert body["values"][-1]["permissions"] == "1100" and body["values"][-1]["data"]["value"] == "1234.50"


async def test_listing_needs_credentials_and_pages(node: Node) -> None:
    for i in range(5):
        await node.put(f"88.118/L{i}", CAR[:1])
    await node.put("88.118.9/OTHER", CAR[:1])
    status, body = await node.call("GET", "/api/handles", params={"prefix": "88.118"})
    assert status == 401 and body["responseCode"] == 402
    status, body = await node.call(
        "GET", "/api/handles", params={"prefix": "88.118", "page": "1", "pageSize": "2"}, headers=auth(OP)
    )
    assert status == 200 and body["totalCount"] == "5" and body["handles"] == ["88.118/L2", "88.118/L3"]
    assert body["next"] == "88.118/L3"  # more follow
    status, body = await node.call("GET", "/api/handles", params={"prefix": "0.NA/88.118"}, headers=auth(OP))
    assert body["totalCount"] == "5" and "88.118.9/OTHER" not in body["handles"] and "next" not in body


async def test_listing_pages_by_cursor_and_bounds_every_page(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authority_module, "MAX_LIST_PAGE", 4)
    names = [f"88.118/C{i}" for i in range(10)]
    for name in names:
        await node.put(name, CAR[:1])

    async def listing(**params: str) -> dict[str, Any]:
        status, body = await node.call("GET", "/api/handles", params={"prefix": "88.118", **params}, headers=auth(OP))
        assert status == 200 and body["responseCode"] == 1 and body["totalCount"] == "10"
        return dict(body)

    # Following "next" with after= walks every handle once, pageSize at a time.
    seen: list[str] = []
    body = await listing(page="0", pageSize="3")
    while True:
        seen += body["handles"]
        if "next" not in body:
            break
        assert body["next"] == body["handles"][-1]
        body = await listing(after=body["next"], pageSize="3")
    assert seen == names
    # page counts from the cursor; no page at all, or a pageSize above the bound, gives at most the bound.
    assert (await listing(after="88.118/C2", page="1", pageSize="3"))["handles"] == names[6:9]
    everything = await listing()
    assert everything["handles"] == names[:4] and everything["next"] == "88.118/C3"
    assert (await listing(after=everything["next"]))["handles"] == names[4:8]
    big = await listing(page="0", pageSize="100")
    assert big["handles"] == names[:4] and big["next"] == "88.118/C3" and big["pageSize"] == 100
    # The last page, and pages past the end, say no more follow.
    assert "next" not in await listing(after="88.118/C5", pageSize="4")
    assert await listing(page="7", pageSize="3") == {
        "responseCode": 1,
        "prefix": "88.118",
        "totalCount": "10",
        "handles": [],
        "page": 7,
        "pageSize": 3,
    }


async def test_msgpack_both_ways(node: Node) -> None:
    body = msgpack.packb({"values": CAR[:2]})
    status, answer = await node.call(
        "PUT", "/api/handles/88.118/MP", raw=body, headers={**auth(OP), "Content-Type": "application/msgpack"}
    )
    assert status == 200
    status, answer = await node.call("GET", "/api/handles/88.118/MP", headers={"Accept": "application/msgpack"})
    assert status == 200 and answer["handle"] == "88.118/MP" and answer["values"][1]["data"]["value"] == "CQ-EV7"


async def test_bad_bodies_get_clear_errors_and_store_nothing(node: Node) -> None:
    status, body = await node.call("PUT", "/api/handles/88.118/B", raw=b"{not json", headers=auth(OP))
    assert status == 400 and body["responseCode"] == 4 and "not valid JSON" in body["message"]
    status, body = await node.call(
        "PUT", "/api/handles/88.118/B", raw=b"x", headers={**auth(OP), "Content-Type": "text/plain"}
    )
    assert status == 415 and body["responseCode"] == 4
    status, body = await node.put("88.118/B", [{"index": 0, "type": "URL", "data": "x"}])
    assert status == 400 and body["responseCode"] == 202 and "positive" in body["message"]
    status, body = await node.put("88.118/B", [{"index": 1, "type": "X", "data": {"format": "hex", "value": "zz"}}])
    assert status == 400 and body["responseCode"] == 202 and "hex" in body["message"]
    status, body = await node.put("88.118/B", [{"index": 1, "type": "X", "data": "a" * 70_000}])
    assert status == 413, "the body limit of this node is 64,000 bytes"
    status, _ = await node.call("GET", "/api/handles/88.118/B")
    assert status == 404


async def test_oversized_body_is_refused_before_it_is_read(node: Node) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 50_000_000:
            sent += 65_536
            yield b" " * 65_536

    async with node.session.put(
        node.url("/api/handles/88.118/BIG"), data=endless(), headers={**auth(OP), "Content-Type": "application/json"}
    ) as r:
        body = await r.json()
    assert r.status == 413 and body["responseCode"] == 4 and "limit" in body["message"]
    assert sent < 10_000_000, f"the node kept reading: {sent} bytes sent"


async def test_unknown_endpoints_answer_in_json(node: Node) -> None:
    status, body = await node.call("GET", "/api/nothing")
    assert (status, body) == (404, {"responseCode": 4, "message": "Unknown HTTP API endpoint /api/nothing"})
    status, body = await node.call("POST", "/api/handles/88.118/X", body={})
    assert status == 405 and body["responseCode"] == 4
    assert (
        body["message"]
        == "method POST is not allowed on /api/handles/88.118/X (allowed: DELETE, GET, HEAD, OPTIONS, PUT)"
    )
    assert "handle" not in body


async def test_restart_keeps_data_and_rewrites_nothing(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "sec.sqlite3"
    seqs = []
    for round_ in range(2):
        server = TestServer(make_app(db, port), host="127.0.0.1", port=port)
        await server.start_server()
        async with ClientSession() as session:
            n = Node(server, session, db)
            if round_ == 0:
                await n.put("88.118/KEEP", CAR)
            status, body = await n.call("GET", "/api/handles/88.118/KEEP")
            assert status == 200 and len(body["values"]) == 4
            _, health = await n.call("GET", "/healthz")
            seqs.append(health["lastSeq"])
        await server.close()
    assert seqs[0] == seqs[1], "a restart with the same topology and secret must not write anything"


async def test_metrics_count_requests_and_outcomes(node: Node) -> None:
    await node.put("88.118/M", CAR)
    await node.call("GET", "/api/handles/88.118/M")
    await node.call("GET", "/api/handles/88.118/M")
    await node.call("GET", "/api/handles/88.118/ABSENT")
    await node.call("GET", "/api/handles/88..1/BAD")
    async with node.session.get(node.url("/metrics")) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    assert 'idres_resolutions_total{outcome="answer"} 2.0' in text
    assert 'idres_resolutions_total{outcome="not_found"} 1.0' in text
    assert 'idres_requests_total{method="GET",status="400"} 1.0' in text
    assert 'idres_requests_total{method="PUT",status="200"} 1.0' in text


async def test_an_odd_pretty_value_never_breaks_an_answer_and_value_errors_name_the_handle(node: Node) -> None:
    # pretty only formats the answer: an unknown value means "not pretty", never a 500 page.
    status, body = await node.call("GET", "/api/handles/88.118/X", params={"pretty": "maybe"})
    assert status == 404 and body["responseCode"] == 100
    status, body = await node.put(
        "88.118/BADVALUE", [{"index": 1, "type": "URL", "data": {"format": "nope", "value": "x"}}]
    )
    assert status == 400 and body["responseCode"] == 202 and body["handle"] == "88.118/BADVALUE"


async def test_an_operators_edit_of_the_admin_group_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "sec.sqlite3"
    group = [
        {
            "index": 200,
            "type": "HS_VLIST",
            "data": {
                "format": "vlist",
                "value": [{"handle": "0.NA/88.118", "index": 300}, {"handle": "88.118/ALICE", "index": 300}],
            },
        }
    ]
    for round_ in range(2):
        server = TestServer(make_app(db, port), host="127.0.0.1", port=port)
        await server.start_server()
        async with ClientSession() as session:
            n = Node(server, session, db)
            if round_ == 0:
                assert (await n.put("0.NA/88.118", group, index="200"))[0] == 200
            _, body = await n.call("GET", "/api/handles/0.NA/88.118", params={"index": "200"})
            members = body["values"][0]["data"]["value"]
            assert {"handle": "88.118/ALICE", "index": 300} in members
        await server.close()
