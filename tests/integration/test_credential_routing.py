"""Credentials only where they belong (issue 11, finding 1), against real node processes: the
automaker's operator delegates ``88.118.8.1`` to a server it controls, and the batterymaker
operator's credentialed requests for it through the recursive node are refused, naming that
server, without the server ever seeing the batterymaker's ``Authorization`` header.

The server is a small aiohttp app in a thread on a free port that records every header it gets and
answers everything "not found". Locating the owner of ``88.118.8.1/X`` asks it for the handle
without credentials, as every resolution does; that is not what is checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack
import pytest
from aiohttp import web

from resolver.client import basic_auth
from resolver.sites import site_value
from resolver.values import value_to_wire
from tests.conftest import free_port
from tests.processes import Running, copy_topology, request, start_up, stop
from tests.threaded_server import ThreadedServer

pytestmark = pytest.mark.integration

SUB = "88.118.8.1"  # delegated by the automaker to the server it controls


@dataclass
class Recorder(ThreadedServer):
    """The automaker-controlled server: every Authorization header it was sent (None: none)."""

    authorizations: list[str | None] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/healthz":
            return web.json_response({"status": "ok"})
        self.authorizations.append(request.headers.get("Authorization"))
        return web.Response(status=404, body=msgpack.packb({"responseCode": 100}), content_type="application/msgpack")


@dataclass
class Tree:
    running: Running
    recorder: Recorder

    def operator(self, node: str, prefix: str) -> dict[str, str]:
        return {"Authorization": basic_auth(f"300:0.NA/{prefix}", self.running.secret(node))}

    def through_recursive(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
        body = json.dumps({"values": []}).encode() if method == "PUT" else None
        sent = {**headers, "Content-Type": "application/json"} if body is not None else headers
        return request(method, self.running.urls["recursive"] + path, body, sent)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    base = tmp_path_factory.mktemp("credential-routing")
    running = start_up(base / "data", copy_topology(base / "topology.toml"))
    recorder = Recorder(free_port())
    recorder.start()
    try:
        made = Tree(running, recorder)
        site = value_to_wire(site_value(1, "127.0.0.1", recorder.port, primary=True, description="automaker's own"))
        status, said = request(
            "PUT",
            f"{running.urls['automaker']}/api/handles/0.NA/{SUB}",
            json.dumps({"values": [site]}).encode(),
            {**made.operator("automaker", "88.118.8"), "Content-Type": "application/json"},
        )
        assert status in (200, 201), said
        yield made
    finally:
        recorder.stop()
        stop(running)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/handles/{SUB}/X?auth=true"),
        ("PUT", f"/api/handles/{SUB}/X"),
        ("DELETE", f"/api/handles/{SUB}/X"),
        ("GET", f"/api/handles?prefix={SUB}"),
    ],
)
def test_another_organisations_credentials_are_not_sent_to_the_delegated_server(
    tree: Tree, method: str, path: str
) -> None:
    before = len(tree.recorder.authorizations)
    status, body = tree.through_recursive(method, path, tree.operator("batterymaker", "88.119.6"))
    assert (status, body["responseCode"]) == (403, 401), body
    message = str(body["message"])
    assert f"{SUB} is served by {tree.recorder.url}, which is not a node of this topology" in message
    assert "not under 300:0.NA/88.119.6's prefix" in message
    assert "send credentialed requests for it there yourself" in message
    assert tree.running.secret("batterymaker") not in message
    # Locating the owner asks the server for the handle as any resolution would, without credentials;
    # the request itself is not sent on.
    assert tree.recorder.authorizations[before:] in ([], [None])


def test_the_delegating_operator_still_reaches_its_own_server(tree: Tree) -> None:
    header = tree.operator("automaker", "88.118.8")
    before = len(tree.recorder.authorizations)
    status, body = tree.through_recursive("GET", f"/api/handles/{SUB}/X?auth=true", header)
    assert (status, body["responseCode"]) == (404, 100), body
    assert header["Authorization"] in tree.recorder.authorizations[before:]
    assert set(tree.recorder.authorizations[before:]) <= {None, header["Authorization"]}  # its own header only


def test_a_read_without_credentials_still_goes_through(tree: Tree) -> None:
    before = len(tree.recorder.authorizations)
    status, body = tree.through_recursive("GET", f"/api/handles/{SUB}/X?auth=true", {})
    assert (status, body["responseCode"]) == (404, 100), body
    assert set(tree.recorder.authorizations[before:]) == {None}  # located and forwarded, without credentials


def test_no_server_ever_saw_the_batterymakers_header(tree: Tree) -> None:
    secret_header = tree.operator("batterymaker", "88.119.6")["Authorization"]
    assert secret_header not in tree.recorder.authorizations
