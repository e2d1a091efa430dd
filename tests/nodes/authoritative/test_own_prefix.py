"""A node started again with another operator secret says so (issue 13: a secret is never replaced
silently), and from then on the new secret logs in and the old one does not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from nodes.authoritative.app import AuthoritativeConfig, create_app
from tests.conftest import auth, free_port, topology_of

OPERATOR = "300:0.NA/88.118"


async def _start_and_log_in(db: Path, secret: str, tries: dict[str, str]) -> dict[str, int]:
    """Start the node on ``db`` with ``secret``; the status of a login with each of ``tries``."""
    port = free_port()
    topology = topology_of({"sec": {"role": "secondary", "prefix": "88.118", "listen": f"127.0.0.1:{port}"}})
    server = TestServer(create_app(AuthoritativeConfig(topology.node("sec"), topology, db, secret)), port=port)
    await server.start_server()
    statuses = {}
    try:
        async with ClientSession() as session:
            for name, tried in tries.items():
                url = f"http://127.0.0.1:{port}/api/sessions/this"
                async with session.get(url, headers=auth(OPERATOR, tried)) as resp:
                    body = await resp.json()
                    statuses[name] = 200 if resp.status == 200 and body.get("authenticated") else resp.status
    finally:
        await server.close()
    return statuses


async def test_a_changed_operator_secret_is_reported_and_replaces_the_old_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "sec.sqlite3"
    with caplog.at_level(logging.WARNING, logger="idres.authoritative"):
        assert await _start_and_log_in(db, "first-secret", {"first": "first-secret"}) == {"first": 200}
        assert "not the one this node was started with" not in caplog.text, "a first start changes nothing"
        again = await _start_and_log_in(db, "first-secret", {"first": "first-secret"})
        assert again == {"first": 200}
        assert "not the one this node was started with" not in caplog.text, "the same secret again: nothing"
        changed = await _start_and_log_in(db, "second-secret", {"first": "first-secret", "second": "second-secret"})
    assert changed["second"] == 200 and changed["first"] != 200
    assert "sec: the operator secret of 300:0.NA/88.118 is not the one this node was started with" in caplog.text
