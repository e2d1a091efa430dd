"""Credentials that arrive over plain HTTP from another machine are refused, as HANDLE.NET refuses
them: HTTP 403 with responseCode 402 and a message saying to use HTTPS (issue 11, finding 12). The
peer address is made another machine's by a middleware of the test: every node here listens on
127.0.0.1, and tests send traffic to 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from resolver.config import Topology
from tests.conftest import OPERATOR_SECRET, LocalNode, auth, free_port, node_app, topology_of

AUTOMAKER_OPERATOR = "300:0.NA/88.118.8"


def peer(address: str) -> web.Middleware:
    """A middleware that makes every request come from ``address``."""

    @web.middleware
    async def from_address(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        return await handler(request.clone(remote=address))

    return from_address


def topology(*, allow_plain: bool = False) -> Topology:
    base = topology_of(
        {
            "automaker": {"role": "enterprise", "prefix": "88.118.8", "listen": f"127.0.0.1:{free_port()}"},
            "recursive": {"role": "recursive", "listen": f"127.0.0.1:{free_port()}", "root_hints": []},
        }
    )
    nodes = {n: dataclasses.replace(s, allow_plain_credentials=allow_plain) for n, s in base.nodes.items()}
    return Topology(nodes)


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession() as s:
        yield s


async def served(
    tmp_path: Path, session: ClientSession, name: str, address: str, *, allow_plain: bool = False
) -> LocalNode:
    top = topology(allow_plain=allow_plain)
    app = node_app(top, name, tmp_path)
    app.middlewares.insert(0, peer(address))
    return await LocalNode(top, name, tmp_path, session).start(app)


@pytest.mark.parametrize("path", ["/api/sessions/this", "/api/handles/88.118.8/X", "/api/handles?prefix=88.118.8"])
async def test_an_authoritative_node_refuses_credentials_over_plain_http_from_another_machine(
    tmp_path: Path, session: ClientSession, path: str
) -> None:
    node = await served(tmp_path, session, "automaker", "203.0.113.7")
    try:
        status, body = await node.call("GET", path, headers=auth(AUTOMAKER_OPERATOR, OPERATOR_SECRET))
        assert (status, body["responseCode"]) == (403, 402), body
        assert body["message"].startswith("credentials are accepted only over HTTPS (or from this machine)")
        assert "plain HTTP from 203.0.113.7" in body["message"]
        # Without credentials, the same peer reads what anyone may read.
        status, body = await node.call("GET", "/api/handles/0.NA/88.118.8")
        assert status == 200, body
    finally:
        await node.stop()


@pytest.mark.parametrize(("address", "allow_plain"), [("::ffff:127.0.0.1", False), ("203.0.113.7", True)])
async def test_credentials_over_plain_http_are_taken_from_this_machine_or_when_the_operator_allows(
    tmp_path: Path, session: ClientSession, address: str, allow_plain: bool
) -> None:
    node = await served(tmp_path, session, "automaker", address, allow_plain=allow_plain)
    try:
        status, body = await node.call("GET", "/api/sessions/this", headers=auth(AUTOMAKER_OPERATOR))
        assert (status, body.get("id")) == (200, AUTOMAKER_OPERATOR), body
    finally:
        await node.stop()


async def test_the_recursive_node_refuses_credentials_over_plain_http_from_another_machine(
    tmp_path: Path, session: ClientSession
) -> None:
    node = await served(tmp_path, session, "recursive", "198.51.100.20")
    try:
        status, body = await node.call("GET", "/api/handles/88.118.8/X", headers=auth(AUTOMAKER_OPERATOR))
        assert (status, body["responseCode"]) == (403, 402), body
        assert "plain HTTP from 198.51.100.20" in body["message"]
    finally:
        await node.stop()
