"""A hostile delegated server behind the default topology (issue 11, findings 2, 5 and 6): requests
through the recursive node never leave ``/api/handles/`` upstream, oversized answers are abandoned,
and what reaches the client is always the recursive node's own Handle answer.

The automaker's operator delegates ``88.118.8.1`` to a small aiohttp server run by the test in a
thread. It answers a resolution's plain GET normally (404/100) and misbehaves as the suffix says:
``BIG``/``ENDLESS`` always, ``FWD*``/``HTML``/``REDIRECT`` only on the forwarded request
(``?auth=true``), so both the resolution's transport and the forward path meet it.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import msgpack
import pytest
from aiohttp import web

from nodes.running.seeding import DEMO_CAR
from resolver.client import MAX_ANSWER_BYTES, basic_auth
from resolver.sites import site_value
from resolver.values import value_to_wire
from tests.conftest import free_port
from tests.processes import Running, copy_topology, node_pids, start_up, stop, stored_values
from tests.threaded_server import ThreadedServer

pytestmark = pytest.mark.integration

SUB = "88.118.8.1"  # the prefix delegated to the hostile server
ALWAYS = ("BIG", "ENDLESS")  # modes that misbehave on the resolution's own GET too
ENDLESS_BOUND = 400_000_000  # bytes the endless answer stops at, so a broken node cannot eat the machine


def not_found() -> web.Response:
    return web.Response(status=404, body=msgpack.packb({"responseCode": 100}), content_type="application/msgpack")


@dataclass
class Hostile(ThreadedServer):
    """The hostile server: what it was asked, on its own loop in a thread."""

    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.raw_path)
        if request.path == "/healthz":
            return web.json_response({"status": "ok"})
        handle = unquote(request.raw_path.split("?", 1)[0].removeprefix("/api/handles/"))
        mode = handle.partition("/")[2].split("-", 1)[0]
        if mode not in ALWAYS and "auth" not in request.query:
            return web.Response(
                status=404, body=msgpack.packb({"responseCode": 100}), content_type="application/msgpack"
            )
        if mode in ("BIG", "FWDBIG"):
            return web.json_response({"responseCode": 1, "values": [], "pad": "x" * 1_500_000})
        if mode in ("ENDLESS", "FWDENDLESS"):
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            sent = 0
            try:
                await response.write(b'{"responseCode": 1, "pad": "')
                while sent < ENDLESS_BOUND:
                    await response.write(b"x" * 65_536)
                    sent += 65_536
            except (ConnectionError, RuntimeError):
                pass  # the node hung up: what a capped reader does
            return response
        if mode == "HTML":
            return web.Response(text="<html><script>alert(document.cookie)</script></html>", content_type="text/html")
        if mode == "REDIRECT":
            return web.Response(status=302, headers={"Location": "https://phishing.example/login"})
        return not_found()


@dataclass
class Tree:
    running: Running
    hostile: Hostile

    def url(self, node: str) -> str:
        return self.running.urls[node]

    def operator(self, node: str, prefix: str) -> dict[str, str]:
        return {"Authorization": basic_auth(f"300:0.NA/{prefix}", self.running.secret(node))}


def send(
    base: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with ``path`` sent exactly as written (``curl --path-as-is``)."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def recursive_pid(data: Path) -> int:
    for pid in node_pids(data):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--node" in args and args[args.index(b"--node") + 1] == b"recursive":
            return pid
    raise AssertionError("no recursive node process")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    base = tmp_path_factory.mktemp("hostile")
    running = start_up(base / "data", copy_topology(base / "topology.toml"))
    hostile = Hostile(free_port())
    hostile.start()
    try:
        made = Tree(running, hostile)
        site = value_to_wire(site_value(1, "127.0.0.1", hostile.port, primary=True, description="hostile"))
        status, _, said = send(
            made.url("automaker"),
            "PUT",
            f"/api/handles/0.NA/{SUB}",
            json.dumps({"values": [site]}).encode(),
            {**made.operator("automaker", "88.118.8"), "Content-Type": "application/json"},
        )
        assert status in (200, 201), said
        yield made
    finally:
        hostile.stop()
        stop(running)


def decoded(body: bytes) -> dict[str, object]:
    parsed = json.loads(body)
    assert isinstance(parsed, dict)
    return parsed


# -- finding 2: dot segments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "auth"),
    [("healthz?auth=true", False), ("api/replication/snapshot?auth=true", True), ("../../../metrics", False)],
)
def test_dot_segments_do_not_leave_the_handles_path(tree: Tree, target: str, auth: bool) -> None:
    headers = tree.operator("automaker", "88.118.8") if auth else {}
    path = f"/api/handles/88.118.8/p%2Fq%2Fr%2Fs/../../../../{target}"
    status, _, body = send(tree.url("recursive"), "GET", path, headers=headers)
    answer = decoded(body)
    # The identifier is taken as written: it does not exist (or is refused), never another endpoint.
    assert (status, answer["responseCode"]) in ((404, 100), (400, 102)), answer
    assert "status" not in answer and "records" not in answer and b"idres_" not in body and b"# HELP" not in body


def test_a_hostile_server_is_asked_only_under_the_handles_path(tree: Tree) -> None:
    before = len(tree.hostile.paths)
    for path in (
        f"/api/handles/{SUB}/p%2Fq/../../../../metrics?auth=true",
        f"/api/handles/{SUB}/p%2Fq/../../../../metrics",
        f"/api/handles/{SUB}/./../x?auth=true",
        f"/api/handles/{SUB}/..?auth=true",
    ):
        send(tree.url("recursive"), "GET", path)
    asked = tree.hostile.paths[before:]
    assert asked
    for raw in asked:  # the node's own health probes aside
        assert raw == "/healthz" or raw.startswith(f"/api/handles/{SUB}/"), asked
        assert not {".", ".."} & set(raw.split("?", 1)[0].split("/")), asked
    assert not any("metrics" in raw and "%2F" not in raw for raw in asked), asked


def test_a_dotted_suffix_is_stored_as_written_and_the_vin_untouched(tree: Tree) -> None:
    automaker = tree.url("automaker")
    car_before = stored_values(automaker, DEMO_CAR)
    suffix = "lot-7/../" + DEMO_CAR.split("/", 1)[1]
    value = {"index": 1, "type": "URL", "data": {"format": "string", "value": "https://lot-7.example"}}
    status, _, body = send(
        tree.url("recursive"),
        "PUT",
        f"/api/handles/88.118.8/{suffix}",
        json.dumps({"values": [value]}).encode(),
        {**tree.operator("automaker", "88.118.8"), "Content-Type": "application/json"},
    )
    assert status in (200, 201), body
    assert decoded(body) == {"responseCode": 1, "handle": f"88.118.8/{suffix}"}
    stored = stored_values(automaker, "88.118.8/lot-7%2F..%2F" + DEMO_CAR.split("/", 1)[1])
    assert [v["data"]["value"] for v in stored] == ["https://lot-7.example"]
    assert stored_values(automaker, DEMO_CAR) == car_before


# -- finding 5: oversized answers -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["BIG-1", "ENDLESS-1", "FWDBIG-1?auth=true", "FWDENDLESS-1?auth=true"])
def test_an_oversized_answer_is_a_502_and_the_node_stays_small(tree: Tree, suffix: str) -> None:
    pid = recursive_pid(tree.running.data)
    before = rss_kib(pid)
    status, headers, body = send(tree.url("recursive"), "GET", f"/api/handles/{SUB}/{suffix}")
    answer = decoded(body)
    assert (status, answer["responseCode"]) == (502, 2), answer
    assert f"exceeded the limit of {MAX_ANSWER_BYTES} bytes" in str(answer["message"])
    assert tree.hostile.url in str(answer["message"])
    assert len(body) < 10_000 and headers["Content-Type"].startswith("application/json")
    assert rss_kib(pid) - before < 64 * 1024  # KiB: a capped read costs a few MiB at most


# -- finding 6: the recursive node answers itself ---------------------------------------------------


@pytest.mark.parametrize(("suffix", "words"), [("HTML-1", "text/html"), ("REDIRECT-1", "redirect")])
def test_a_foreign_answer_on_auth_true_becomes_a_502_handle_body(tree: Tree, suffix: str, words: str) -> None:
    status, headers, body = send(tree.url("recursive"), "GET", f"/api/handles/{SUB}/{suffix}?auth=true")
    answer = decoded(body)
    assert (status, answer["responseCode"]) == (502, 2), answer
    assert words in str(answer["message"]) and tree.hostile.url in str(answer["message"])
    assert headers["Content-Type"].startswith("application/json")
    assert "Location" not in headers
    assert b"<script>" not in body and b"phishing" not in body


def test_a_handle_answer_on_auth_true_is_reencoded_with_the_apis_status(tree: Tree) -> None:
    status, headers, body = send(tree.url("recursive"), "GET", f"/api/handles/{SUB}/PLAIN-1?auth=true")
    assert (status, decoded(body)) == (404, {"responseCode": 100})
    assert headers["Content-Type"].startswith("application/json")
