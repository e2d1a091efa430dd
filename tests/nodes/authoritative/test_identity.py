"""Verifying identities held by other nodes (nodes.authoritative.identity): the walk to the home node
through a real tree of nodes on 127.0.0.1, and what a client sees when it cannot be made."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from nodes.authoritative.identity import remote_verifier
from nodes.running.seeding import register_topology
from resolver.auth import Identity
from resolver.client import HandleClient, basic_auth
from resolver.config import Topology
from resolver.errors import AuthenticationFailed, FailureKind, UpstreamError
from resolver.names import parse_identity
from resolver.sites import site_data
from tests.conftest import LocalNode, free_port, topology_of

SECRETS = {"top": "top-operator-secret", "auto": "auto-operator-secret", "carmaker": "carmaker-operator-secret"}
USER = "300:88.118.8/USER-1"
USER_SECRET = "user-1-secret"
ELSEWHERE = "http://127.0.0.1:1"  # the URL of the node asking, in tests where that is none of the tree's


def make_topology() -> Topology:
    def listen() -> str:
        return f"127.0.0.1:{free_port()}"

    return topology_of(
        {
            "top": {"role": "top", "prefix": "88", "listen": listen(), "description": "Top-level node"},
            "auto": {"role": "secondary", "prefix": "88.118", "listen": listen(), "description": "Automotive node"},
            "carmaker": {"role": "enterprise", "prefix": "88.118.8", "listen": listen(), "description": "Carmaker"},
        }
    )


def identity(text: str) -> Identity:
    index, handle = parse_identity(text)
    return Identity(index, handle.key, handle.text)


@dataclass
class Tree:
    topology: Topology
    nodes: dict[str, LocalNode]
    session: ClientSession

    def url(self, name: str) -> str:
        return self.topology.node(name).url

    async def whoami(self, name: str, who: str, secret: str) -> tuple[int, Any]:
        """``GET /api/sessions/this`` on node ``name`` with the credentials of ``who``."""
        return await self.nodes[name].call(
            "GET", "/api/sessions/this", headers={"Authorization": basic_auth(who, secret)}
        )


@pytest.fixture
async def tree(tmp_path: Path) -> AsyncIterator[Tree]:
    """Three authoritative nodes with the delegations registered, and a user registered on the carmaker's."""
    topology = make_topology()
    async with ClientSession() as session:
        nodes = {name: LocalNode(topology, name, tmp_path, session, secret=SECRETS[name]) for name in SECRETS}
        try:
            for node in nodes.values():
                await node.start()
            await register_topology(HandleClient(session), topology, SECRETS, demo=False)
            user = [
                {"index": 300, "type": "HS_SECKEY", "data": USER_SECRET},
                {
                    "index": 100,
                    "type": "HS_ADMIN",
                    "data": {"format": "admin", "value": {"handle": "88.118.8/USER-1", "index": 300}},
                },
            ]
            status, body = await nodes["carmaker"].put("88.118.8/USER-1", user, "300:0.NA/88.118.8")
            assert status in (200, 201), body
            yield Tree(topology, nodes, session)
        finally:
            for node in nodes.values():
                await node.stop()


async def test_a_foreign_identity_is_verified_at_its_home_node_through_the_tree(tree: Tree) -> None:
    # The top-level node knows nothing of the user: it walks 88 -> 88.118 -> 88.118.8 and asks there.
    status, body = await tree.whoami("top", USER, USER_SECRET)
    assert status == 200 and body == {"sessionId": None, "authenticated": True, "id": USER}
    status, body = await tree.whoami("auto", USER, "not-the-secret")
    assert status == 401 and body["responseCode"] == 403
    assert f"authentication failed for {USER}: wrong secret" in body["message"]


async def test_the_verifier_says_yes_only_for_the_right_secret(tree: Tree) -> None:
    verify = remote_verifier(HandleClient(tree.session), [tree.url("top")])
    assert await verify(identity(USER), basic_auth(USER, USER_SECRET), ELSEWHERE) is True
    assert await verify(identity(USER), basic_auth(USER, "wrong"), ELSEWHERE) is False


async def test_a_prefix_identity_is_verified_at_the_prefix_own_node(tree: Tree) -> None:
    # 0.NA/88.118.8 resolves at its parent (auto), which holds the delegation; the secret is the
    # carmaker's, held by the node its HS_SITE values name.
    operator = "300:0.NA/88.118.8"
    status, body = await tree.whoami("top", operator, SECRETS["carmaker"])
    assert status == 200 and body["id"] == operator
    status, body = await tree.whoami("top", operator, SECRETS["auto"])
    assert status == 401 and "wrong secret" in body["message"], "the parent's secret is not the prefix's"


async def test_an_unknown_identity_does_not_exist(tree: Tree) -> None:
    verify = remote_verifier(HandleClient(tree.session), [tree.url("top")])
    with pytest.raises(AuthenticationFailed, match=re.escape("300:88.118.8/NOBODY does not exist")):
        await verify(identity("300:88.118.8/NOBODY"), basic_auth("300:88.118.8/NOBODY", "x"), ELSEWHERE)
    # No node serves 88.999: for the client that is no such identity either, not an upstream failure.
    with pytest.raises(AuthenticationFailed, match=re.escape("300:88.999/X does not exist")):
        await verify(identity("300:88.999/X"), basic_auth("300:88.999/X", "x"), ELSEWHERE)
    status, body = await tree.whoami("top", "300:88.118.8/NOBODY", "x")
    assert status == 401 and body["responseCode"] == 403 and "does not exist" in body["message"]


async def test_home_node_down_is_an_upstream_error_naming_it(tree: Tree) -> None:
    await tree.nodes["carmaker"].stop()
    home = tree.url("carmaker")
    verify = remote_verifier(HandleClient(tree.session), [tree.url("top")])
    with pytest.raises(
        UpstreamError, match=re.escape(f"cannot verify {USER} now: its home node could not be reached")
    ) as caught:
        await verify(identity(USER), basic_auth(USER, USER_SECRET), ELSEWHERE)
    assert [(a.server, a.kind) for a in caught.value.attempts] == [(home, FailureKind.CANNOT_CONNECT)]
    assert f"{home}: cannot connect" in caught.value.message
    status, body = await tree.whoami("top", USER, USER_SECRET)
    assert status == 502 and body["responseCode"] == 2
    assert "could not be reached" in body["message"] and home in body["message"]


async def test_the_node_asking_never_calls_itself(tree: Tree) -> None:
    # Issue 11, finding 4: the carmaker asking the tree about its own handle was led back to itself.
    verify = remote_verifier(HandleClient(tree.session), [tree.url("top")])
    home = tree.url("carmaker")
    port = tree.topology.node("carmaker").port
    for own_url in (home, f"http://localhost:{port}", f"https://[::1]:{port}"):
        with pytest.raises(AuthenticationFailed) as caught:
            await verify(identity(USER), basic_auth(USER, USER_SECRET), own_url)
        assert caught.value.message == (
            f"{USER} cannot be authenticated: the tree names this node ({home}) as its home, "
            "but this node holds no HS_SECKEY value for it"
        )


async def test_a_not_found_from_one_root_is_confirmed_by_the_other(tree: Tree, tmp_path: Path) -> None:
    # Issue 11, finding 9: a top-level node whose database was emptied answers 404 for every prefix
    # handle; the other root still knows the identity, as it would be asked after a 5xx.
    empty_topology = topology_of(
        {"empty": {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}", "description": "Emptied"}}
    )
    empty = await LocalNode(empty_topology, "empty", tmp_path / "empty", tree.session, secret="x").start()
    try:
        verify = remote_verifier(HandleClient(tree.session), [empty.url, tree.url("top")])
        operator = "300:0.NA/88.118.8"
        assert await verify(identity(operator), basic_auth(operator, SECRETS["carmaker"]), ELSEWHERE) is True
        with pytest.raises(AuthenticationFailed, match=re.escape("300:0.NA/88.118.77 does not exist")):
            await verify(identity("300:0.NA/88.118.77"), basic_auth("300:0.NA/88.118.77", "x"), ELSEWHERE)
    finally:
        await empty.stop()


async def test_credentials_go_to_a_home_elsewhere_only_over_https(tree: Tree) -> None:
    # The automotive node delegates 88.118.9 to a server on another machine that speaks plain HTTP:
    # the verifier finds that home through the tree and refuses to send the header there.
    elsewhere_site = {"format": "site", "value": site_data("192.0.2.8", 8300, primary=True, description="far")}
    status, body = await tree.nodes["auto"].put(
        "0.NA/88.118.9", [{"index": 1, "type": "HS_SITE", "data": elsewhere_site}], "300:0.NA/88.118"
    )
    assert status in (200, 201), body
    far = "300:0.NA/88.118.9"
    verify = remote_verifier(HandleClient(tree.session), [tree.url("top")])
    with pytest.raises(AuthenticationFailed) as caught:
        await verify(identity(far), basic_auth(far, "x"), ELSEWHERE)
    assert caught.value.message == (
        f"{far} cannot be verified here: its home node http://192.0.2.8:8300 is reached over plain HTTP, "
        "and this node sends credentials only over HTTPS or to this machine"
    )
