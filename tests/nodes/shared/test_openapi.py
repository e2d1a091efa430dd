"""The OpenAPI description (nodes/shared/openapi.yaml): kept in docs/, valid, and served by every node."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import ClientSession

from nodes.shared.openapi import openapi_document
from tests.conftest import LocalNode, free_port, topology_of

ROOT = Path(__file__).resolve().parents[3]


def test_docs_copy_is_the_packaged_file() -> None:
    docs = (ROOT / "docs" / "openapi.yaml").read_bytes()
    assert docs == (ROOT / "nodes" / "shared" / "openapi.yaml").read_bytes(), (
        "docs/openapi.yaml differs from nodes/shared/openapi.yaml: copy one over the other"
    )


def test_document_describes_the_api() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert set(paths["/api/handles/{handle}"]) >= {"get", "put", "delete"}
    for path in (
        "/api/handles",
        "/api/sessions/this",
        "/api/batch",
        "/healthz",
        "/api/openapi.json",
        "/api/replication/changes",
        "/api/replication/snapshot",
        "/api/replication/status",
        "/api/replication/promote",
        "/api/replication/fence",
    ):
        assert path in paths
    value = document["components"]["schemas"]["Value"]["properties"]
    assert set(value) >= {"index", "type", "data", "ttl", "timestamp"}


def test_every_reference_resolves() -> None:
    document = openapi_document()

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(document):
        target: object = document
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, f"unresolved {ref}"
            target = target[part]


@pytest.mark.parametrize("role", ["top", "recursive"])
async def test_every_node_serves_it(tmp_path: Path, role: str) -> None:
    topology = topology_of(
        {
            "top": {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}", "description": "Top"},
            "recursive": {"role": "recursive", "listen": f"127.0.0.1:{free_port()}", "root_hints": ["top"]},
        }
    )
    async with ClientSession() as session:
        node = await LocalNode(topology, role, tmp_path, session).start()
        try:
            async with session.get(node.url + "/api/openapi.json") as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                assert await response.json() == openapi_document()
        finally:
            await node.stop()
