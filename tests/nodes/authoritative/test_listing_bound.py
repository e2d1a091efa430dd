"""A listing the node cut to its bound says so in the answer (issue 13, finding 8): how many of how
many handles it holds, and how to ask for the rest. Real HTTP on 127.0.0.1, a real SQLite file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from nodes.authoritative import authority as authority_module
from nodes.authoritative.app import AuthoritativeConfig, create_app
from tests.conftest import OPERATOR_SECRET, auth, free_port, topology_of

OP = "300:0.NA/88.118"
URL_VALUE = [{"index": 1, "type": "URL", "data": "https://example.cn/part"}]
NAMES = [f"88.118/P{i}" for i in range(10)]


@pytest.fixture
async def listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """``await listing(**params)``: the status and body of a listing of 88.118 by its operator, on a
    node holding ten handles whose answers hold at most four."""
    monkeypatch.setattr(authority_module, "MAX_LIST_PAGE", 4)
    port = free_port()
    topology = topology_of({"sec": {"role": "secondary", "prefix": "88.118", "listen": f"127.0.0.1:{port}"}})
    app = create_app(AuthoritativeConfig(topology.node("sec"), topology, tmp_path / "sec.sqlite3", OPERATOR_SECRET))
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    base = f"http://127.0.0.1:{port}"
    async with ClientSession(headers=auth(OP)) as session:
        for name in NAMES:
            async with session.put(f"{base}/api/handles/{name}", json={"values": URL_VALUE}) as r:
                assert r.status in (200, 201)

        async def call(**params: str) -> tuple[int, dict[str, Any]]:
            async with session.get(f"{base}/api/handles", params={"prefix": "88.118", **params}) as r:
                return r.status, json.loads(await r.read())

        yield call
    await server.close()


async def test_no_page_size_says_how_many_and_how_to_get_the_rest(listing: Any) -> None:
    status, body = await listing()
    assert status == 200 and body["responseCode"] == 1
    assert body["handles"] == NAMES[:4] and body["next"] == "88.118/P3" and body["totalCount"] == "10"
    assert body["message"].startswith("4 of 10 handles (no pageSize: at most the 4 an answer holds)")
    assert "after=<next>" in body["message"]
    # Following the cursor without pageSize: still cut, still said; the last answer holds the rest.
    status, body = await listing(after=body["next"])
    assert body["handles"] == NAMES[4:8] and body["message"].startswith("4 of 10 handles")
    status, body = await listing(after=body["next"])
    assert body["handles"] == NAMES[8:] and "next" not in body and "message" not in body


async def test_a_page_size_above_the_bound_is_named(listing: Any) -> None:
    _, body = await listing(page="0", pageSize="100")
    assert body["handles"] == NAMES[:4] and body["pageSize"] == 100
    assert body["message"].startswith("4 of 10 handles (pageSize 100 is more than the 4 an answer holds)")


async def test_a_page_of_the_size_asked_carries_no_message(listing: Any) -> None:
    _, body = await listing(page="0", pageSize="3")
    assert body["handles"] == NAMES[:3] and body["next"] == "88.118/P2" and "message" not in body
    _, body = await listing(page="0", pageSize="4")
    assert body["handles"] == NAMES[:4] and "message" not in body  # exactly the bound: nothing was cut
