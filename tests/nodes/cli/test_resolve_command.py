"""``idres resolve`` (nodes.cli.resolve_view): the walk from one server through a real tree of nodes on
127.0.0.1, the hops and values it prints, the local --type/--index filter, and a recursive node's trace."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession
from rich.console import Console

from nodes.cli.resolve_view import Walked, print_walk, walk_from
from nodes.running.seeding import register_topology
from resolver.bodies import not_found_body, values_not_found_body
from resolver.client import HandleClient
from resolver.config import Topology
from resolver.errors import FailureKind, InvalidHandle
from tests.conftest import LocalNode, free_port, topology_of

SECRETS = {"top": "top-operator-secret", "auto": "auto-operator-secret", "carmaker": "carmaker-operator-secret"}
CAR = "88.118.8/VIN-1"
VALUES = [
    {"index": 1, "type": "URL", "data": "https://automaker.example.cn/vehicles/VIN-1"},
    {"index": 2, "type": "MODEL", "data": "CQ-EV7 electric SUV"},
]


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


@dataclass
class Tree:
    topology: Topology
    nodes: dict[str, LocalNode]

    def url(self, name: str) -> str:
        return self.topology.node(name).url


@pytest.fixture
async def tree(tmp_path: Path) -> AsyncIterator[Tree]:
    topology = make_topology()
    async with ClientSession() as session:
        nodes = {
            name: LocalNode(topology, name, tmp_path, session, secret=SECRETS.get(name, "unused"))
            for name in ("top", "auto", "carmaker", "recursive")
        }
        try:
            for node in nodes.values():
                await node.start()
            await register_topology(HandleClient(session), topology, SECRETS, demo=False)
            status, body = await nodes["carmaker"].put(CAR, VALUES, "300:0.NA/88.118.8")
            assert status in (200, 201), body
            yield Tree(topology, nodes)
        finally:
            for node in nodes.values():
                await node.stop()


def printed(text: str, walked: Walked) -> str:
    out = io.StringIO()
    print_walk(Console(file=out, width=200), text, walked)
    return out.getvalue()


async def test_walks_top_secondary_enterprise_and_prints_each_hop_and_the_values(tree: Tree) -> None:
    walked = await walk_from(tree.url("top"), CAR, trace=True)
    assert walked.found and walked.error is None
    hops = walked.resolution.hops
    assert [(h.url, h.outcome) for h in hops] == [
        (tree.url("top"), "referral"),
        (tree.url("auto"), "referral"),
        (tree.url("carmaker"), "answer"),
    ]
    out = printed(CAR, walked)
    lines = [line for line in out.splitlines() if "http://127.0.0.1:" in line]
    assert all(tree.url(name) in line for name, line in zip(("top", "auto", "carmaker"), lines, strict=True))
    assert "referral to 88.118" in out and "referral to 88.118.8" in out and "Carmaker" in out
    assert "CQ-EV7 electric SUV" in out and "https://automaker.example.cn/vehicles/VIN-1" in out
    assert walked.body is not None and [v["index"] for v in walked.body["values"]] == [1, 2]


async def test_type_and_index_filter_the_values_locally(tree: Tree) -> None:
    walked = await walk_from(tree.url("top"), CAR, types=["MODEL"])
    assert walked.body is not None and [v["type"] for v in walked.body["values"]] == ["MODEL"]
    walked = await walk_from(tree.url("top"), CAR, indexes=[1])
    assert walked.body is not None and [v["index"] for v in walked.body["values"]] == [1]
    walked = await walk_from(tree.url("top"), CAR, types=["EMAIL"])
    assert not walked.found and walked.body == values_not_found_body(CAR)
    assert "no value matches the type or index given" in printed(CAR, walked)


async def test_an_unknown_handle_is_reported_not_found(tree: Tree) -> None:
    walked = await walk_from(tree.url("top"), "88.118.8/NO-SUCH-CAR")
    assert not walked.found and walked.error is None and walked.body == not_found_body("88.118.8/NO-SUCH-CAR")
    assert "Handle Not Found" in printed("88.118.8/NO-SUCH-CAR", walked)
    # A prefix no node serves is no such handle too, as the recursive node answers.
    walked = await walk_from(tree.url("top"), "88.999/X")
    assert not walked.found and walked.body == not_found_body("88.999/X")
    assert "failure: not responsible" in printed("88.999/X", walked)


async def test_a_node_down_on_the_way_is_an_error_naming_it(tree: Tree) -> None:
    await tree.nodes["carmaker"].stop()
    walked = await walk_from(tree.url("top"), CAR)
    assert walked.body is None and not walked.found and walked.error is not None
    assert [(a.server, a.kind) for a in walked.error.attempts] == [(tree.url("carmaker"), FailureKind.CANNOT_CONNECT)]
    assert f"could not resolve {CAR}" in walked.error.message and "cannot connect" in walked.error.message
    assert "failure: cannot connect" in printed(CAR, walked)


async def test_a_recursive_node_shows_the_walk_it_made_for_us(tree: Tree) -> None:
    walked = await walk_from(tree.url("recursive"), CAR, trace=True)
    assert walked.found and [h.url for h in walked.resolution.hops] == [tree.url("recursive")]
    out = printed(CAR, walked)
    assert f"via {tree.url('carmaker')}" in out and "cache miss" in out
    walked = await walk_from(tree.url("recursive"), CAR)  # --json: no trace asked
    assert "trace" not in walked.last_reply and walked.found


async def test_a_malformed_handle_is_refused_before_any_request() -> None:
    with pytest.raises(InvalidHandle, match="segment 2"):
        await walk_from(f"http://127.0.0.1:{free_port()}", "88..118/X")


def printed_at(width: int, text: str, walked: Walked) -> list[str]:
    out = io.StringIO()
    print_walk(Console(file=out, width=width), text, walked)
    return out.getvalue().splitlines()


async def test_at_80_columns_every_value_and_address_is_whole(tree: Tree) -> None:
    # 55 characters: cut to `https://automaker.e…` by the table that kept a timestamp column (issue 13)
    long_url = "https://automaker.example.cn/vehicles/LS53A23C4TC000417"
    values = [{"index": 1, "type": "URL", "data": long_url}, {"index": 2, "type": "PRODUCTION_DATE", "data": "2026"}]
    status, _ = await tree.nodes["carmaker"].put("88.118.8/VIN-LONG", values, "300:0.NA/88.118.8")
    assert status in (200, 201)
    walked = await walk_from(tree.url("top"), "88.118.8/VIN-LONG")
    lines = printed_at(80, "88.118.8/VIN-LONG", walked)
    assert max(len(line) for line in lines) <= 80 and "…" not in "".join(lines)
    assert any(long_url in line for line in lines), "the URL on one line, whole"
    assert all(any(tree.url(name) in line for line in lines) for name in ("top", "auto", "carmaker"))
    [stamp] = {v["timestamp"] for v in (walked.body or {})["values"]}
    assert f"every value: ttl 86400, timestamp {stamp}" in "\n".join(lines)
    # Wide enough, the ttl and timestamp are columns again.
    wide = printed_at(200, "88.118.8/VIN-LONG", walked)
    assert any(long_url in line and stamp in line for line in wide)


async def test_a_cell_too_long_for_any_column_is_folded_never_cut(tree: Tree) -> None:
    endless = "urn:x-idres:" + "0123456789" * 12  # no space to wrap at: 132 characters
    status, _ = await tree.nodes["carmaker"].put(
        "88.118.8/VIN-ENDLESS", [{"index": 1, "type": "NOTE", "data": endless}], "300:0.NA/88.118.8"
    )
    assert status in (200, 201)
    lines = printed_at(80, "88.118.8/VIN-ENDLESS", await walk_from(tree.url("top"), "88.118.8/VIN-ENDLESS"))
    assert max(len(line) for line in lines) <= 80
    folded = "".join(line.split()[-1] for line in lines if "0123456789" in line and "path" not in line)
    assert folded == endless
