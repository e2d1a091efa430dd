"""``trace=true`` on the recursive node names every server asked, whatever became of the request: an
unregistered prefix (404) and a node that is down (502) as well as an answer (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from nodes.recursive.app import RecursiveConfig, create_recursive_app
from nodes.running.seeding import DEMO_CAR, register_topology
from resolver.cache import CacheConfig
from resolver.client import HandleClient
from resolver.config import Topology
from tests.conftest import OPERATOR_SECRET, LocalNode, free_port, topology_of

SECRETS = {"top": "top-operator-secret", "auto": "auto-operator-secret", "carmaker": "carmaker-operator-secret"}


def make_topology() -> Topology:
    def listen() -> str:
        return f"127.0.0.1:{free_port()}"

    return topology_of(
        {
            "recursive": {"role": "recursive", "listen": listen(), "root_hints": ["top"], "description": "Recursive"},
            "top": {"role": "top", "prefix": "88", "listen": listen(), "description": "Top-level node"},
            "auto": {"role": "secondary", "prefix": "88.118", "listen": listen(), "description": "Automotive node"},
            "carmaker": {"role": "enterprise", "prefix": "88.118.8", "listen": listen(), "description": "Carmaker"},
        }
    )


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[dict[str, LocalNode]]:
    """top -> auto -> carmaker with the delegations and demo data, and a recursive node in front."""
    topology = make_topology()
    async with ClientSession() as session:
        nodes = {
            name: LocalNode(topology, name, tmp_path, session, secret=SECRETS.get(name, OPERATOR_SECRET))
            for name in ("top", "auto", "carmaker", "recursive")
        }
        try:
            for name in ("top", "auto", "carmaker"):
                await nodes[name].start()
            await register_topology(HandleClient(session), topology, SECRETS, demo=True)
            await nodes["recursive"].start(create_recursive_app(RecursiveConfig(topology.node("recursive"), topology)))
            yield nodes
        finally:
            for node in nodes.values():
                await node.stop()


async def test_an_unregistered_prefix_is_404_and_its_trace_names_the_top_node_asked(
    nodes: dict[str, LocalNode],
) -> None:
    recursive = nodes["recursive"]
    status, body = await recursive.get("88.122/Z", params={"trace": "true"})
    assert status == 404 and body["responseCode"] == 100 and body["message"] == "Handle Not Found"
    assert [(h["address"], h["node"], h["outcome"]) for h in body["trace"]] == [
        (nodes["top"].url, "Top-level node", "failure")
    ]
    assert "not responsible" in body["trace"][0]["detail"]
    # The same request again is answered from the negative cache: one entry, the recursive node's own.
    status, body = await recursive.get("88.122/Z", params={"trace": "true"})
    assert status == 404 and [(h["address"], h["cache"]) for h in body["trace"]] == [(recursive.url, "hit")]


async def test_a_node_down_is_502_and_the_error_body_carries_the_trace(nodes: dict[str, LocalNode]) -> None:
    recursive = nodes["recursive"]
    await recursive.get(DEMO_CAR)  # the referrals are cached: the next walk goes straight to the carmaker
    await nodes["carmaker"].stop()
    status, body = await recursive.get("88.118.8/NOT-CACHED", params={"trace": "true"})
    assert status == 502 and body["responseCode"] == 2 and body["handle"] == "88.118.8/NOT-CACHED"
    assert "could not resolve 88.118.8/NOT-CACHED" in body["message"]
    [hop] = body["trace"]
    assert (hop["address"], hop["node"], hop["outcome"], hop["cache"]) == (
        nodes["carmaker"].url,
        "Carmaker",
        "failure",
        "miss",
    )
    assert "cannot connect" in hop["detail"]
    # Without trace=true the error is HANDLE.NET's body, nothing added.
    status, body = await recursive.get("88.118.8/NOT-CACHED-EITHER")
    assert status == 502 and set(body) == {"responseCode", "handle", "message"}


async def test_a_stale_answer_says_so_first_then_lists_the_tries_that_failed(nodes: dict[str, LocalNode]) -> None:
    recursive = nodes["recursive"]
    await recursive.stop()  # again, with answers cached for a second and served stale for a minute
    cache = CacheConfig(min_ttl=0, max_ttl=1.0, negative_ttl=1.0, stale_window=60)
    await recursive.start(create_recursive_app(RecursiveConfig(recursive.spec, recursive.topology, cache=cache)))
    assert (await recursive.get(DEMO_CAR))[0] == 200
    await nodes["carmaker"].stop()
    await asyncio.sleep(1.1)
    status, body = await recursive.get(DEMO_CAR, params={"trace": "true"})
    assert status == 200 and body["handle"] == DEMO_CAR
    trace = [(h["address"], h["cache"], h.get("outcome")) for h in body["trace"]]
    # The referrals expired too: the walk went down from the top again before the carmaker failed.
    assert trace == [
        (recursive.url, "stale", None),
        (nodes["top"].url, "miss", "referral"),
        (nodes["auto"].url, "miss", "referral"),
        (nodes["carmaker"].url, "miss", "failure"),
    ]
