"""The recursive node over real HTTP on 127.0.0.1, in front of a real top / secondary / enterprise tree."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
from aiohttp import ClientSession
from yarl import URL

from nodes.recursive.app import RecursiveConfig, create_recursive_app
from nodes.running.seeding import DEMO_CAR, register_topology
from resolver.cache import CacheConfig
from resolver.client import HandleClient, basic_auth
from resolver.config import Topology
from resolver.upstream import UpstreamConfig
from tests.conftest import OPERATOR_SECRET, LocalNode, free_port, topology_of

SECRETS = {"top": "top-operator-secret", "auto": "auto-operator-secret", "carmaker": "carmaker-operator-secret"}
CARMAKER_OPERATOR = {"Authorization": basic_auth("300:0.NA/88.118.8", SECRETS["carmaker"])}
JSON_BODY = {"Content-Type": "application/json"}


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


class Tree:
    """Three authoritative nodes with the delegations registered, a recursive node in front, one client session."""

    def __init__(self, tmp_path: Path, session: ClientSession, cache: CacheConfig, upstream: UpstreamConfig) -> None:
        self.session = session
        self.topology = make_topology()
        self.cache_config, self.upstream_config = cache, upstream
        self.nodes = {
            name: LocalNode(self.topology, name, tmp_path, session, secret=SECRETS.get(name, OPERATOR_SECRET))
            for name in ("top", "auto", "carmaker", "recursive")
        }

    def url(self, name: str) -> str:
        return self.topology.node(name).url

    async def start(self) -> None:
        for name in ("top", "auto", "carmaker"):
            await self.nodes[name].start()
        await register_topology(HandleClient(self.session), self.topology, SECRETS, demo=True)
        spec = self.topology.node("recursive")
        config = RecursiveConfig(spec, self.topology, cache=self.cache_config, upstream=self.upstream_config)
        await self.nodes["recursive"].start(create_recursive_app(config))

    async def stop(self, name: str) -> None:
        await self.nodes[name].stop()

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.stop()

    async def call(
        self,
        method: str,
        handle: str,
        *,
        node: str = "recursive",
        params: Any = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> tuple[int, Any, str]:
        """One request to ``/api/handles/{handle}`` (percent-encoded): (status, decoded body, content type)."""
        url = URL(self.url(node) + "/api/handles/" + quote(handle, safe="/"), encoded=True)
        data = None if body is None else json.dumps(body).encode()
        hdrs = {**(JSON_BODY if data is not None else {}), **(headers or {})}
        async with self.session.request(method, url, params=params, headers=hdrs, data=data) as r:
            raw = await r.read()
            decoded = msgpack.unpackb(raw) if r.content_type == "application/msgpack" else json.loads(raw)
            return r.status, decoded, r.content_type

    async def get(self, handle: str, **kw: Any) -> tuple[int, Any]:
        status, body, _ = await self.call("GET", handle, **kw)
        return status, body

    async def metric(self, name: str, node: str = "recursive") -> float:
        async with self.session.get(self.url(node) + "/metrics") as r:
            text = await r.text()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert found is not None, f"{name} is not in {node}'s /metrics"
        return float(found.group(1))


TreeFactory = Callable[..., Awaitable[Tree]]


@pytest.fixture
async def start_tree(tmp_path: Path) -> AsyncIterator[TreeFactory]:
    trees: list[Tree] = []
    async with ClientSession() as session:

        async def start(cache: CacheConfig | None = None, upstream: UpstreamConfig | None = None) -> Tree:
            tree = Tree(tmp_path, session, cache or CacheConfig(), upstream or UpstreamConfig())
            trees.append(tree)
            await tree.start()
            return tree

        try:
            yield start
        finally:
            for tree in trees:
                await tree.close()


@pytest.fixture
async def tree(start_tree: TreeFactory) -> Tree:
    return await start_tree()


def by_index(body: dict[str, Any]) -> dict[int, Any]:
    return {v["index"]: v["data"]["value"] for v in body["values"]}


# -- resolving --------------------------------------------------------------------------------------------


async def test_a_get_walks_the_tree_and_answers_like_the_enterprise_node(tree: Tree) -> None:
    status, body = await tree.get(DEMO_CAR)
    assert status == 200 and body["responseCode"] == 1 and body["handle"] == DEMO_CAR
    assert by_index(body)[2] == "CQ-EV7 electric SUV"
    direct_status, direct = await tree.get(DEMO_CAR, node="carmaker")
    assert (status, body) == (direct_status, direct), "the recursive node answers what the enterprise node does"


async def test_the_handle_text_is_echoed_exactly(tree: Tree) -> None:
    handle = "88.118.8/零件 A+1%"
    status, _, _ = await tree.call(
        "PUT",
        handle,
        node="carmaker",
        headers=CARMAKER_OPERATOR,
        body={"values": [{"index": 1, "type": "URL", "data": "x"}]},
    )
    assert status in (200, 201)
    for _ in range(2):  # the miss, then the pre-encoded hit
        status, body = await tree.get(handle)
        assert status == 200 and body["handle"] == handle and by_index(body) == {1: "x"}


async def test_trace_shows_the_walk_then_a_cache_hit(tree: Tree) -> None:
    status, body = await tree.get(DEMO_CAR, params={"trace": "true"})
    assert status == 200 and body["handle"] == DEMO_CAR
    assert [(h["address"], h["outcome"], h["cache"]) for h in body["trace"]] == [
        (tree.url("top"), "referral", "miss"),
        (tree.url("auto"), "referral", "miss"),
        (tree.url("carmaker"), "answer", "miss"),
    ]
    assert [h.get("detail") for h in body["trace"]] == ["88.118", "88.118.8", None]
    assert [h["node"] for h in body["trace"]] == ["Top-level node", "Automotive node", "Carmaker"]
    status, body = await tree.get(DEMO_CAR, params={"trace": "true"})
    assert status == 200 and [h["cache"] for h in body["trace"]] == ["hit"]
    assert body["trace"][0]["address"] == tree.url("recursive")


async def test_a_second_get_is_a_cache_hit_the_enterprise_never_sees(tree: Tree) -> None:
    await tree.get(DEMO_CAR)
    hits = await tree.metric("idres_cache_hits_total")
    answered = await tree.metric('idres_resolutions_total{outcome="answer"}', node="carmaker")
    for _ in range(3):
        status, body = await tree.get(DEMO_CAR)
        assert status == 200 and body["handle"] == DEMO_CAR
    assert await tree.metric("idres_cache_hits_total") == hits + 3
    assert await tree.metric('idres_resolutions_total{outcome="answer"}', node="carmaker") == answered
    assert await tree.metric('idres_resolutions_total{outcome="answer"}') >= 4


async def test_type_and_index_filters_select_values_from_the_cached_record(tree: Tree) -> None:
    await tree.get(DEMO_CAR)
    for params in ([("type", "URL")], [("index", "2"), ("index", "4")], [("type", "MODEL"), ("index", "100")]):
        status, body = await tree.get(DEMO_CAR, params=params)
        _, direct = await tree.get(DEMO_CAR, node="carmaker", params=params)
        assert status == 200 and body == direct, params
    _, body = await tree.get(DEMO_CAR, params=[("index", "2"), ("index", "4")])
    assert sorted(by_index(body)) == [2, 4]
    status, body = await tree.get(DEMO_CAR, params={"type": "NO-SUCH-TYPE"})
    assert (status, body["responseCode"], body["values"]) == (200, 200, [])


async def test_an_absent_handle_is_404_100_and_cached(tree: Tree) -> None:
    absent = "88.118.8/NO-SUCH-CAR"
    for _ in range(2):
        status, body = await tree.get(absent)
        assert status == 404 and body == {"responseCode": 100, "handle": absent, "message": "Handle Not Found"}
    assert await tree.metric("idres_cache_negative_hits_total") == 1
    status, body = await tree.get(absent, params={"type": "URL"})
    assert (status, body["responseCode"]) == (404, 100)


async def test_a_malformed_handle_is_400_102(tree: Tree) -> None:
    status, body = await tree.get("88..118/X")
    assert status == 400 and body["responseCode"] == 102 and "segment 2" in body["message"]
    status, body = await tree.get("no-slash")
    assert status == 400 and body["responseCode"] == 102


async def test_msgpack_when_the_client_asks_for_it(tree: Tree) -> None:
    _, as_json = await tree.get(DEMO_CAR)  # the JSON bytes are cached now; msgpack must not reuse them
    for _ in range(2):
        status, body, media = await tree.call("GET", DEMO_CAR, headers={"Accept": "application/msgpack"})
        assert (status, media) == (200, "application/msgpack") and body == as_json
    status, body, media = await tree.call("GET", "88.118.8/ABSENT-MP", headers={"Accept": "application/msgpack"})
    assert (status, media, body["responseCode"]) == (404, "application/msgpack", 100)


# -- writes and authenticated reads -----------------------------------------------------------------------


async def test_a_put_is_forwarded_with_credentials_and_invalidates_the_cache(tree: Tree) -> None:
    for _ in range(3):  # a miss, a hit, then a hit from the hot path's held entry
        await tree.get(DEMO_CAR)
    model = {"values": [{"index": 2, "type": "MODEL", "data": "CQ-EV7 facelift"}]}
    status, body, _ = await tree.call("PUT", DEMO_CAR, params={"index": "2"}, headers=CARMAKER_OPERATOR, body=model)
    assert (status, body) == (200, {"responseCode": 1, "handle": DEMO_CAR})
    _, direct = await tree.get(DEMO_CAR, node="carmaker")
    assert by_index(direct)[2] == "CQ-EV7 facelift", "the write landed on the enterprise node"
    status, body = await tree.get(DEMO_CAR)
    assert status == 200 and by_index(body)[2] == "CQ-EV7 facelift"

    # A not-found answer is cached too, and a create through this node drops it.
    new = "88.118.8/VIN-NEW-0001"
    for _ in range(3):
        assert (await tree.get(new))[0] == 404
    status, body, _ = await tree.call(
        "PUT", new, params={"overwrite": "false"}, headers=CARMAKER_OPERATOR, body={"values": model["values"]}
    )
    assert (status, body["responseCode"]) == (201, 1)
    status, body = await tree.get(new)
    assert status == 200 and by_index(body) == {2: "CQ-EV7 facelift"}

    status, _, _ = await tree.call("DELETE", new, headers=CARMAKER_OPERATOR)
    assert status == 200
    assert (await tree.get(new))[0] == 404


async def test_a_put_without_credentials_gets_the_enterprise_nodes_401(tree: Tree) -> None:
    await tree.get(DEMO_CAR)
    model = {"values": [{"index": 2, "type": "MODEL", "data": "tampered"}]}
    status, body, _ = await tree.call("PUT", DEMO_CAR, params={"index": "2"}, body=model)
    assert status == 401 and body["responseCode"] == 402 and DEMO_CAR in body["message"]
    wrong = {"Authorization": basic_auth("300:0.NA/88.118.8", "not-the-secret")}
    status, body, _ = await tree.call("PUT", DEMO_CAR, params={"index": "2"}, body=model, headers=wrong)
    assert status == 401 and body["responseCode"] == 403
    for node in ("carmaker", "recursive"):
        _, body = await tree.get(DEMO_CAR, node=node)
        assert by_index(body)[2] == "CQ-EV7 electric SUV", node


async def test_a_forwarded_401_keeps_the_basic_challenge(tree: Tree) -> None:
    body = json.dumps({"values": [{"index": 2, "type": "MODEL", "data": "tampered"}]}).encode()
    for node in ("carmaker", "recursive"):
        url = tree.url(node) + "/api/handles/" + DEMO_CAR
        async with tree.session.put(url, data=body, headers=JSON_BODY) as r:
            assert r.status == 401 and r.headers.get("WWW-Authenticate") == 'Basic realm="handle"', node


async def test_auth_true_bypasses_the_cache_and_asks_the_primary(tree: Tree) -> None:
    await tree.get(DEMO_CAR)
    model = {"values": [{"index": 2, "type": "MODEL", "data": "CQ-EV9"}]}
    status, _, _ = await tree.call(
        "PUT", DEMO_CAR, node="carmaker", params={"index": "2"}, headers=CARMAKER_OPERATOR, body=model
    )
    assert status == 200
    _, cached = await tree.get(DEMO_CAR)
    assert by_index(cached)[2] == "CQ-EV7 electric SUV", "a plain GET is answered from the cache"
    status, fresh = await tree.get(DEMO_CAR, params={"auth": "true"})
    assert status == 200 and fresh["handle"] == DEMO_CAR and by_index(fresh)[2] == "CQ-EV9"
    status, fresh = await tree.get(DEMO_CAR, headers=CARMAKER_OPERATOR)
    assert status == 200 and by_index(fresh)[2] == "CQ-EV9"


async def list_prefix(tree: Tree, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    url = tree.url("recursive") + path
    async with tree.session.get(url, params={"prefix": "88.118.8"}, headers=headers) as r:
        return r.status, await r.json()


async def test_listing_is_forwarded_to_the_owning_node(tree: Tree) -> None:
    status, body = await list_prefix(tree, "/api/handles", CARMAKER_OPERATOR)
    assert status == 200 and body["handles"] == [DEMO_CAR] and body["totalCount"] == "1"
    status, body = await list_prefix(tree, "/api/handles")
    assert status == 401 and body["responseCode"] == 402


async def test_listing_with_a_trailing_slash_works_as_on_an_authoritative_node(tree: Tree) -> None:
    url = tree.url("carmaker") + "/api/handles/"
    async with tree.session.get(url, params={"prefix": "88.118.8"}, headers=CARMAKER_OPERATOR) as r:
        assert r.status == 200
    status, body = await list_prefix(tree, "/api/handles/", CARMAKER_OPERATOR)
    assert status == 200 and body["handles"] == [DEMO_CAR]


async def test_healthz_names_the_roots(tree: Tree) -> None:
    async with tree.session.get(tree.url("recursive") + "/healthz") as r:
        body = await r.json()
    assert r.status == 200 and body["role"] == "recursive" and body["roots"] == [tree.url("top")]


# -- the enterprise node goes away ------------------------------------------------------------------------


async def _blackhole(host: str, port: int) -> asyncio.Server:
    """Accept connections and never answer: a node that hangs."""

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read()  # until the client gives up
        writer.close()

    return await asyncio.start_server(hang, host, port)


async def test_an_unreachable_enterprise_node_stale_answers_and_a_bounded_error(start_tree: TreeFactory) -> None:
    ttl = 1.0
    tree = await start_tree(
        CacheConfig(min_ttl=0, max_ttl=ttl, negative_ttl=ttl, stale_window=60),
        UpstreamConfig(deadline=1.0, try_timeout=1.0, probe_interval=0.2),
    )
    carmaker = tree.url("carmaker")
    address = carmaker.removeprefix("http://")
    assert (await tree.get(DEMO_CAR))[0] == 200
    await tree.stop("carmaker")

    status, body = await tree.get(DEMO_CAR, params={"trace": "true"})
    assert status == 200 and body["trace"][0]["cache"] == "hit", "still fresh: answered without asking anyone"
    await asyncio.sleep(ttl + 0.1)
    status, body = await tree.get(DEMO_CAR, params={"trace": "true"})
    assert status == 200 and body["trace"][0]["cache"] == "stale"
    assert by_index(body)[2] == "CQ-EV7 electric SUV"
    assert await tree.metric("idres_cache_stale_served_total") == 1
    assert await tree.metric('idres_resolutions_total{outcome="stale"}') == 1

    status, body = await tree.get("88.118.8/VIN-NEVER-CACHED")
    assert (status, body["responseCode"]) == (502, 2), body
    assert f"{carmaker}: cannot connect" in body["message"], body
    assert body["handle"] == "88.118.8/VIN-NEVER-CACHED"

    # Now the node hangs instead: the error comes when the deadline passes, and names the node.
    host, port = address.split(":")
    hole = await _blackhole(host, int(port))
    try:
        status, body = await tree.get("88.118.8/VIN-ALSO-NEVER-CACHED")
        assert (status, body["responseCode"]) == (502, 2), body
        assert f"{carmaker}: timed out" in body["message"], body
        status, body = await tree.get(DEMO_CAR)
        assert status == 200 and by_index(body)[2] == "CQ-EV7 electric SUV", "the stale answer is still served"
        async with tree.session.get(tree.url("recursive") + "/healthz") as r:
            assert carmaker in (await r.json())["down"]
    finally:
        hole.close()
        await hole.wait_closed()


# -- prefix handles ---------------------------------------------------------------------------------------


async def test_the_delegation_record_comes_from_the_parent_whatever_is_cached(tree: Tree) -> None:
    delegation = "0.NA/88.118.8"
    _, on_parent = await tree.get(delegation, node="auto")
    status, before = await tree.get(delegation, params={"auth": "true"})
    assert status == 200 and before == on_parent
    await tree.get(DEMO_CAR)  # caches the referral to 88.118.8
    status, after = await tree.get(delegation, params={"auth": "true"})
    assert status == 200 and after == on_parent


async def test_an_unregistered_prefix_is_not_found_not_a_server_error(tree: Tree) -> None:
    status, body = await tree.get("88.120/NOBODY-OWNS-THIS")
    assert status == 404 and body["responseCode"] == 100 and body["handle"] == "88.120/NOBODY-OWNS-THIS"


async def test_pretty_is_honoured_on_the_cached_path_too(tree: Tree) -> None:
    await tree.get(DEMO_CAR)
    async with tree.session.get(tree.url("recursive") + f"/api/handles/{DEMO_CAR}?pretty=true") as r:
        text = await r.text()
    assert r.status == 200 and "\n  " in text and json.loads(text)["handle"] == DEMO_CAR


async def test_metrics_are_valid_prometheus_text(tree: Tree) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    await tree.get(DEMO_CAR)
    async with tree.session.get(tree.url("recursive") + "/metrics") as r:
        text = await r.text()
    names = [family.name for family in text_string_to_metric_families(text)]
    assert len(names) == len(set(names)), "each metric family appears once"
    srtt = next(f for f in text_string_to_metric_families(text) if f.name == "idres_upstream_srtt_seconds")
    assert len(srtt.samples) == 3, "one sample per server asked (top, secondary, enterprise)"
