"""The access log: one JSON line per request with every field, from a recursive node in front of a top-level
node, both served in this event loop with aiohttp's access-logger hook as ``idres serve`` sets it."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import make_mocked_request

from nodes.recursive.app import RecursiveConfig, create_recursive_app
from nodes.shared.access_log import STARTED, access_logger_class, iso_time
from resolver.config import Topology
from resolver.upstream import UpstreamConfig
from tests.conftest import OPERATOR_SECRET, auth, eventually, free_port, node_app, topology_of

FIELDS = {"time", "node", "client", "method", "path", "status", "responseCode", "durationMs", "cache", "upstreamHops"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RECORD = {"values": [{"index": 1, "type": "URL", "data": {"format": "string", "value": "https://example.cn/1"}}]}


class Lines(logging.Handler):
    """Every access line a node logged, decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


class Nodes:
    """A top-level node and a recursive node in front of it, each logging its access lines to its own list."""

    def __init__(self, tmp_path: Path, session: ClientSession) -> None:
        self.tmp_path, self.session = tmp_path, session
        self.topology: Topology = topology_of(
            {
                "recursive": {"role": "recursive", "listen": f"127.0.0.1:{free_port()}", "root_hints": ["top"]},
                "top": {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}"},
            }
        )
        self.logged = {name: Lines() for name in self.topology.nodes}
        self.runners: dict[str, web.AppRunner] = {}

    async def start(self, name: str, *, level: int = logging.INFO) -> None:
        spec = self.topology.node(name)
        if spec.role == "recursive":
            upstream = UpstreamConfig(try_timeout=0.3, deadline=1.0)
            app = create_recursive_app(RecursiveConfig(spec, self.topology, upstream=upstream))
        else:
            app = node_app(self.topology, name, self.tmp_path)
        logger = logging.getLogger(f"tests.access.{name}")
        logger.handlers[:] = [self.logged[name]]
        logger.setLevel(level)
        logger.propagate = False
        cls = access_logger_class(name, recursive=spec.role == "recursive")
        runner = self.runners[name] = web.AppRunner(app, access_log=logger, access_log_class=cls)
        await runner.setup()
        await web.TCPSite(runner, spec.host, spec.port).start()

    async def stop(self, name: str) -> None:
        await self.runners.pop(name).cleanup()

    async def request(self, name: str, method: str, path: str, **kw: Any) -> int:
        async with self.session.request(method, self.topology.node(name).url + path, **kw) as r:
            await r.read()
            return r.status

    async def line(self, name: str, path: str, method: str = "GET") -> dict[str, Any]:
        """The one line ``name`` logged for ``method path`` (written once the answer is sent)."""

        def mine() -> list[dict[str, Any]]:
            return [line for line in self.logged[name].lines if (line["method"], line["path"]) == (method, path)]

        await eventually(lambda: _true(bool(mine())), 5, f"{name} logs {method} {path}")
        [line] = mine()
        assert set(line) == FIELDS and TIME.match(line["time"]) and line["client"] == "127.0.0.1"
        assert line["node"] == name and line["durationMs"] >= 0
        return line


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with ClientSession() as session:
        running = Nodes(tmp_path, session)
        try:
            await running.start("top")  # it writes its own prefix handle; there is nothing to delegate
            await running.start("recursive")
            yield running
        finally:
            for name in list(running.runners):
                await running.stop(name)


def fields(line: dict[str, Any], *names: str) -> tuple[Any, ...]:
    return tuple(line[name] for name in names)


async def test_a_miss_then_a_hit_on_the_recursive_node(nodes: Nodes) -> None:
    operator = auth("300:0.NA/88", OPERATOR_SECRET)
    assert await nodes.request("top", "PUT", "/api/handles/88/LOG-1", json=RECORD, headers=operator) == 200
    path = "/api/handles/88/LOG-1"
    assert await nodes.request("recursive", "GET", path) == 200
    miss = await nodes.line("recursive", path)
    assert fields(miss, "method", "status", "responseCode", "cache", "upstreamHops") == ("GET", 200, 1, "miss", 1)
    nodes.logged["recursive"].lines.clear()
    assert await nodes.request("recursive", "GET", path) == 200  # the hot path: bytes from the cache
    hit = await nodes.line("recursive", path)
    assert fields(hit, "status", "responseCode", "cache", "upstreamHops") == (200, 1, "hit", 0)
    # The top-level node's line for the walk's request: no cache, no hops there.
    top = await nodes.line("top", path)
    assert fields(top, "method", "status", "responseCode", "cache", "upstreamHops") == ("GET", 200, 1, None, None)


async def test_not_found_with_a_query_and_its_cached_repeat(nodes: Nodes) -> None:
    path = "/api/handles/88/NO-SUCH?type=URL"
    assert await nodes.request("recursive", "GET", path) == 404
    line = await nodes.line("recursive", path)
    assert fields(line, "status", "responseCode", "cache", "upstreamHops") == (404, 100, "miss", 1)
    plain = "/api/handles/88/NO-SUCH"
    assert await nodes.request("recursive", "GET", plain) == 404
    assert fields(await nodes.line("recursive", plain), "responseCode", "cache", "upstreamHops") == (100, "hit", 0)


async def test_credentials_bypass_the_cache_and_count_the_primary_asked(nodes: Nodes) -> None:
    path = "/api/handles/88/WRITTEN-THROUGH"
    headers = auth("300:0.NA/88", OPERATOR_SECRET)
    assert await nodes.request("recursive", "PUT", path, json=RECORD, headers=headers) in (200, 201)
    line = await nodes.line("recursive", path, "PUT")
    # The walk to the owner (one hop: the top-level node answers for 88) and the PUT sent to it.
    assert fields(line, "method", "responseCode", "cache", "upstreamHops") == ("PUT", 1, "bypass", 2)


async def test_every_upstream_down_is_a_logged_502_with_its_tries(nodes: Nodes) -> None:
    await nodes.stop("top")
    path = "/api/handles/88/UNREACHABLE"
    assert await nodes.request("recursive", "GET", path) == 502
    line = await nodes.line("recursive", path)
    assert fields(line, "status", "responseCode", "cache") == (502, 2, "miss")
    assert line["upstreamHops"] >= 1


async def test_answers_without_a_handle_body_have_no_response_code(nodes: Nodes) -> None:
    assert await nodes.request("top", "GET", "/metrics") == 200
    assert fields(await nodes.line("top", "/metrics"), "status", "responseCode") == (200, None)
    assert await nodes.request("recursive", "GET", "/healthz") == 200
    assert fields(await nodes.line("recursive", "/healthz"), "responseCode", "cache", "upstreamHops") == (None, None, 0)
    assert await nodes.request("top", "DELETE", "/api/nowhere") == 404
    assert fields(await nodes.line("top", "/api/nowhere", "DELETE"), "status", "responseCode") == (404, 4)


async def test_a_logger_above_info_switches_the_lines_off(nodes: Nodes) -> None:
    await nodes.stop("top")
    await nodes.start("top", level=logging.WARNING)
    assert await nodes.request("top", "GET", "/healthz") == 200
    assert await nodes.request("recursive", "GET", "/healthz") == 200
    await nodes.line("recursive", "/healthz")  # logged by now, and the top's would have been before it
    assert nodes.logged["top"].lines == []


def test_the_time_is_iso_8601_utc_to_the_millisecond_and_formatted_once_a_second() -> None:
    text, second, stamp = iso_time(1_765_000_000.25, -1, "")
    assert (text, second, stamp) == ("2025-12-06T05:46:40.250Z", 1_765_000_000, "2025-12-06T05:46:40")
    # Within the same second the stamp given is reused as it is: strftime is not called again.
    assert iso_time(1_765_000_000.5, second, "cached")[0] == "cached.500Z"


def test_a_line_is_valid_json_whatever_the_path_holds() -> None:
    """Quotes, backslashes, control and non-ASCII characters are escaped: the line stays one JSON line."""
    captured = Lines()
    logger = logging.getLogger("tests.access.escaping")
    logger.handlers[:], logger.propagate = [captured], False
    logger.setLevel(logging.INFO)
    path = '/api/handles/88/a"b\\c\x01\u00e9?x=\u4e2d'
    request = make_mocked_request("GET", path)
    response = web.Response(status=204)
    access_logger_class("top", recursive=False)(logger, "").log(request, response, 0.0123456)
    [line] = captured.lines
    assert (line["path"], line["status"], line["durationMs"], line["responseCode"]) == (path, 204, 12.346, None)


def test_the_duration_is_timed_from_when_a_handler_took_the_request() -> None:
    """Not from aiohttp's figure, which uvloop keeps in whole milliseconds: the handlers mark the start."""
    captured = Lines()
    logger = logging.getLogger("tests.access.timing")
    logger.handlers[:], logger.propagate = [captured], False
    logger.setLevel(logging.INFO)
    request = make_mocked_request("GET", "/healthz")
    request[STARTED] = time.perf_counter() - 0.25
    access_logger_class("top", recursive=False)(logger, "").log(request, web.Response(), 3.0)
    [line] = captured.lines
    assert 250 <= line["durationMs"] < 2000
