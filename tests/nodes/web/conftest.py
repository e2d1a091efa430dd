"""Fixtures of the front door's tests: the fake-backed application, and real nodes with the demo data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from nodes.recursive.app import RecursiveConfig, create_recursive_app
from nodes.running.seeding import register_topology
from resolver.client import HandleClient
from tests.conftest import OPERATOR_SECRET, LocalNode, free_port, topology_of
from tests.nodes.web.fakes import FakeLookup, front_app

SECRETS = {name: f"{name}-operator-secret" for name in ("top", "auto", "carmaker", "elec", "batterymaker")}
AUTHORITATIVE = ("top", "auto", "carmaker", "elec", "batterymaker")


@pytest.fixture
def lookup() -> FakeLookup:
    return FakeLookup()


@pytest.fixture
async def client(lookup: FakeLookup) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(front_app(lookup))) as test_client:
        yield test_client


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[dict[str, LocalNode]]:
    """``idres up``'s tree in small (top -> automotive -> carmaker, top -> electronics -> battery maker)
    with the delegations and the demo data, and a recursive node in front."""

    def listen() -> str:
        return f"127.0.0.1:{free_port()}"

    topology = topology_of(
        {
            "recursive": {"role": "recursive", "listen": listen(), "root_hints": ["top"], "description": "Recursive"},
            "top": {"role": "top", "prefix": "88", "listen": listen(), "description": "Top-level node"},
            "auto": {"role": "secondary", "prefix": "88.118", "listen": listen(), "description": "Automotive node"},
            "carmaker": {"role": "enterprise", "prefix": "88.118.8", "listen": listen(), "description": "Carmaker"},
            "elec": {"role": "secondary", "prefix": "88.119", "listen": listen(), "description": "Electronics node"},
            "batterymaker": {
                "role": "enterprise",
                "prefix": "88.119.6",
                "listen": listen(),
                "description": "Battery maker",
            },
        }
    )
    async with ClientSession() as session:
        nodes = {
            name: LocalNode(topology, name, tmp_path, session, secret=SECRETS.get(name, OPERATOR_SECRET))
            for name in (*AUTHORITATIVE, "recursive")
        }
        try:
            for name in AUTHORITATIVE:
                await nodes[name].start()
            await register_topology(HandleClient(session), topology, SECRETS, demo=True)
            await nodes["recursive"].start(create_recursive_app(RecursiveConfig(topology.node("recursive"), topology)))
            yield nodes
        finally:
            for node in nodes.values():
                await node.stop()
