"""The front door over a real recursive node (nodes.web.recursive): top -> automotive -> carmaker on
127.0.0.1 with ``idres up``'s demo data; the pages resolve through the node's cache and driver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nodes.recursive.config import RECURSIVE
from nodes.running.seeding import DEMO_CAR
from nodes.web import add_front_door
from nodes.web.authoritative import authority_lookup, no_topology
from nodes.web.recursive import recursive_lookup, recursive_topology
from resolver.names import parse_handle
from tests.conftest import LocalNode

CAR_URL = "https://automaker.example.cn/vehicles/LFV3A23C5K3000417"


@pytest.fixture
async def client(nodes: dict[str, LocalNode]) -> AsyncIterator[TestClient[Any, Any]]:
    """The front door bound to the running recursive node's driver (as its own app would be wired)."""
    recursive = nodes["recursive"].app
    front = web.Application()
    add_front_door(front, recursive_lookup(recursive), recursive_topology(recursive))
    async with TestClient(TestServer(front)) as test_client:
        yield test_client


async def test_the_car_redirects_and_its_page_shows_the_walk_then_the_cache(
    client: TestClient[Any, Any], nodes: dict[str, LocalNode]
) -> None:
    async with client.get(f"/{DEMO_CAR}", allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == CAR_URL
        assert response.headers["Cache-Control"] == "max-age=86400"
    assert nodes["recursive"].app[RECURSIVE].cache.lookup(parse_handle(DEMO_CAR).key) is not None  # cached
    async with client.get(f"/{DEMO_CAR}?noredirect") as response:
        page = await response.text()
    assert response.status == 200 and "CQ-EV7 electric SUV" in page
    trace = page.split("<h2>Resolution</h2>")[1].split("</table>")[0]
    assert "Recursive" in trace and "hit" in trace and "Carmaker" not in trace  # the second time: the cache
    panel = page.split("Servers this node knows")[1]
    assert "Top-level node" in panel and "Carmaker" in panel and " ms" in panel  # an SRTT once asked


async def test_auth_asks_the_owning_primary_and_unknown_identifiers_are_404(client: TestClient[Any, Any]) -> None:
    async with client.get(f"/{DEMO_CAR}?auth&noredirect") as response:
        page = await response.text()
    assert response.status == 200 and "bypass" in page and "Carmaker" in page
    for path in ("/88.118.8/NO-SUCH", "/88.122/UNREGISTERED", "/88.122/UNREGISTERED?auth"):
        async with client.get(path) as response:
            assert response.status == 404, path
            assert "exists" in await response.text()


async def test_an_authoritative_node_serves_pages_of_its_own_identifiers_only(nodes: dict[str, LocalNode]) -> None:
    carmaker = nodes["carmaker"].app
    front = web.Application()
    add_front_door(front, authority_lookup(carmaker), no_topology)
    async with TestClient(TestServer(front)) as client:
        async with client.get(f"/{DEMO_CAR}", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == CAR_URL
        async with client.get(f"/{DEMO_CAR}?noredirect") as response:
            page = await response.text()
            assert "Carmaker" in page and "store" in page and "Servers this node knows" not in page
        async with client.get("/88.118.8/NO-SUCH") as response:
            assert response.status == 404
        async with client.get("/88.119.6/PACK-1") as response:
            assert response.status == 400 and "Not served here" in await response.text()
