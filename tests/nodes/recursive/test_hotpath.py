"""The recursive node's GET hot path (nodes.recursive.hotpath): bytes served from the cache answer as
the slow path does, and whatever the cache cannot answer leaves it (credentials, near expiry, errors)."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from benchmarks.tools import parse_prometheus
from nodes.recursive.config import RECURSIVE
from nodes.recursive.hotpath import freeze_startup_objects
from resolver.driver import RecursiveResolver
from resolver.names import parse_handle
from resolver.values import HandleValue
from tests.conftest import LocalNode, eventually, free_port, topology_of

CAR = "88.118.8/VIN-HOT-1"
CAR_VALUES = (HandleValue(1, "URL", "string", "https://e.cn/1"), HandleValue(2, "MODEL", "string", "CQ-EV7"))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[LocalNode]:
    """A recursive node whose only root is never started: every upstream try fails at once."""
    topology = topology_of(
        {
            "recursive": {"role": "recursive", "listen": f"127.0.0.1:{free_port()}", "root_hints": ["top"]},
            "top": {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}"},
        }
    )
    async with ClientSession() as session:
        running = await LocalNode(topology, "recursive", tmp_path, session).start()
        try:
            yield running
        finally:
            await running.stop()


def resolver_of(node: LocalNode) -> RecursiveResolver:
    return node.app[RECURSIVE]


async def fetch(node: LocalNode, method: str, path: str, **headers: str) -> tuple[int, bytes, str]:
    """(status, the bytes as sent, content type)."""
    async with node.session.request(method, node.url + path, headers=headers) as r:
        return r.status, await r.read(), r.content_type


async def metrics_of(node: LocalNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse_prometheus((await fetch(node, "GET", "/metrics"))[1].decode())


async def test_a_hit_answers_the_same_bytes_before_and_after_the_hot_path_knows_it(node: LocalNode) -> None:
    cache = resolver_of(node).cache
    cache.store_answer(parse_handle(CAR).key, CAR_VALUES)
    cache.store_not_found(parse_handle("88.118.8/GONE").key)
    first = await fetch(node, "GET", f"/api/handles/{CAR}")
    second = await fetch(node, "GET", f"/api/handles/{CAR}")
    assert first[0] == second[0] == 200
    assert first[1] == second[1] and json.loads(second[1])["handle"] == CAR
    for _ in range(2):
        status, body, _ = await fetch(node, "GET", "/api/handles/88.118.8/GONE")
        assert status == 404 and json.loads(body)["responseCode"] == 100
    status, pretty, _ = await fetch(node, "GET", f"/api/handles/{CAR}?pretty=true")
    assert status == 200 and "\n  " in pretty.decode()
    status, _, media = await fetch(node, "GET", f"/api/handles/{CAR}", Accept="application/msgpack")
    assert (status, media) == (200, "application/msgpack")
    metrics = await metrics_of(node)
    assert metrics[("idres_requests_total", (("method", "GET"), ("status", "200")))] == 4
    assert metrics[("idres_requests_total", (("method", "GET"), ("status", "404")))] == 2
    assert metrics[("idres_resolutions_total", (("outcome", "answer"),))] == 4
    assert metrics[("idres_cache_hits_total", ())] == 6, "the cache counted every hit, bytes served included"
    assert metrics[("idres_cache_negative_hits_total", ())] == 2


async def test_a_replaced_entry_is_never_served_from_the_bytes_kept_for_it(node: LocalNode) -> None:
    cache = resolver_of(node).cache
    key = parse_handle(CAR).key
    cache.store_answer(key, CAR_VALUES)
    for _ in range(2):  # the second is served from the kept bytes
        status, body, _ = await fetch(node, "GET", f"/api/handles/{CAR}")
        assert status == 200 and json.loads(body)["values"][1]["data"]["value"] == "CQ-EV7"
    cache.store_answer(key, (HandleValue(2, "MODEL", "string", "CQ-EV9"),))
    for _ in range(2):
        status, body, _ = await fetch(node, "GET", f"/api/handles/{CAR}")
        assert status == 200 and [v["data"]["value"] for v in json.loads(body)["values"]] == ["CQ-EV9"]
    cache.invalidate(key)  # what a write through this node does; the root cannot be reached
    status, body, _ = await fetch(node, "GET", f"/api/handles/{CAR}")
    assert status == 502 and json.loads(body)["responseCode"] == 2


async def test_credentials_and_near_expiry_still_leave_the_hot_path(
    node: LocalNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = resolver_of(node)
    entry = resolver.cache.store_answer(parse_handle(CAR).key, CAR_VALUES)
    assert (await fetch(node, "GET", f"/api/handles/{CAR}"))[0] == 200  # the first hit
    # The cache's clock moved on to the last part of the entry's TTL: a hot entry near expiry.
    later = entry.expires - 1 - time.monotonic()
    monkeypatch.setattr(resolver.cache, "_clock", lambda: time.monotonic() + later)
    assert (await fetch(node, "GET", f"/api/handles/{CAR}"))[0] == 200, "answered at once"
    assert resolver.cache.stats.prefetches == 1
    top = node.topology.node("top").url

    async def refresh_asked_the_root() -> bool:
        return top in resolver.upstreams.snapshot()

    await eventually(refresh_asked_the_root, 5.0, "the hot path starts the background refresh")
    status, body, _ = await fetch(node, "GET", f"/api/handles/{CAR}", Authorization="Basic eDp5")
    assert status == 502, "credentials go to the primary (unreachable here), never to the cache"
    error = json.loads(body)
    assert error["responseCode"] == 2 and f"{top}: cannot connect" in error["message"], "locating the primary failed"


async def test_escaped_paths_queries_and_other_spellings_answer_as_the_hot_path_does(node: LocalNode) -> None:
    cache = resolver_of(node).cache
    cache.store_answer(parse_handle(CAR).key, CAR_VALUES)
    cache.store_answer("0.NA/88.118", CAR_VALUES)
    hot = await fetch(node, "GET", f"/api/handles/{CAR}")
    escaped = await fetch(node, "GET", "/api/handles/" + CAR.replace("/", "%2F").replace("-", "%2D"))
    queried = await fetch(node, "GET", f"/api/handles/{CAR}?pretty=false")
    assert hot == escaped == queried and hot[0] == 200
    status, body, _ = await fetch(node, "GET", "/api/handles/0.na/88.118")
    assert status == 200 and json.loads(body)["handle"] == "0.na/88.118", "the identifier as the client sent it"
    status, body, _ = await fetch(node, "GET", "/api/handles/0.NA/88.118")
    assert status == 200 and json.loads(body)["handle"] == "0.NA/88.118"
    status, body, _ = await fetch(node, "GET", f"/api/handles/{CAR}?type=MODEL")
    assert status == 200 and [v["data"]["value"] for v in json.loads(body)["values"]] == ["CQ-EV7"]
    assert cache.stats.hits == 6 and cache.stats.misses == 0


async def test_unknown_routes_and_methods_answer_as_the_error_middleware_does(node: LocalNode) -> None:
    status, body, _ = await fetch(node, "GET", "/api/no/such/thing")
    error = json.loads(body)
    assert status == 404 and error["responseCode"] == 4 and "Unknown HTTP API endpoint" in error["message"]
    status, body, _ = await fetch(node, "POST", f"/api/handles/{CAR}")
    assert status == 405 and "allowed: DELETE, GET, HEAD, OPTIONS, PUT" in json.loads(body)["message"]
    status, body, _ = await fetch(node, "GET", "/api/handles/not-a-handle")
    error = json.loads(body)
    assert status == 400 and error["responseCode"] == 102 and "not-a-handle" in error["message"]
    metrics = await metrics_of(node)
    assert metrics[("idres_requests_total", (("method", "POST"), ("status", "405")))] == 1


async def test_objects_built_at_start_up_are_frozen_out_of_the_collectors_sight(node: LocalNode) -> None:
    try:
        await freeze_startup_objects(node.app)
        assert gc.get_freeze_count() > 1000, "the application, the cache's tables and the modules"
    finally:
        gc.unfreeze()  # this test process goes on to build and drop other nodes
