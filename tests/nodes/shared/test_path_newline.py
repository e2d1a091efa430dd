"""A handle path with a line break is an invalid identifier (400/102), not an unknown endpoint, on every node."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.conftest import LocalNode, auth, free_port, topology_of


@pytest.mark.parametrize("role", ["top", "recursive"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_line_break_in_the_suffix_is_an_invalid_handle(tmp_path: Path, role: str, method: str) -> None:
    topology = topology_of(
        {
            "top": {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}", "description": "Top"},
            "recursive": {"role": "recursive", "listen": f"127.0.0.1:{free_port()}", "root_hints": ["top"]},
        }
    )
    async with ClientSession() as session:
        node = await LocalNode(topology, role, tmp_path, session).start()
        try:
            url = node.url + "/api/handles/88/A%0AB"
            body = {"values": [{"index": 1, "type": "URL", "data": "https://x"}]}
            async with session.request(
                method, url, json=body if method == "PUT" else None, headers=auth("300:0.NA/88")
            ) as response:
                assert response.content_type == "application/json"
                answer = await response.json()
                assert (response.status, answer["responseCode"]) == (400, 102), answer
                assert "U+000A" in answer["message"]
        finally:
            await node.stop()
