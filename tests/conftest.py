"""Shared test helpers: free ports, topologies built in code, Basic credentials, the fake clock, and the
one way to run a node of a topology in the test's own event loop (``LocalNode``).

Real node *processes* (``idres up``, ``idres serve``) are started by ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession, web

from nodes.authoritative.app import create_app
from nodes.authoritative.config import AuthoritativeConfig
from nodes.recursive.app import RecursiveConfig, create_recursive_app
from resolver.client import basic_auth
from resolver.config import Limits, Topology, parse_topology
from tests.fakes import FakeClock

__all__ = [
    "OPERATOR_SECRET",
    "FakeClock",
    "LocalNode",
    "auth",
    "eventually",
    "free_port",
    "node_app",
    "topology_of",
]

OPERATOR_SECRET = "operator-secret-for-tests"


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 and never handed out before in this test run: the kernel may give a
    just-closed port again, and two nodes of one topology must not be given the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def topology_of(nodes: dict[str, dict[str, Any]]) -> Topology:
    return parse_topology({"nodes": nodes})


def auth(identity: str, secret: str = OPERATOR_SECRET) -> dict[str, str]:
    return {"Authorization": basic_auth(identity, secret)}


def node_app(
    topology: Topology,
    name: str,
    data: Path,
    *,
    secret: str = OPERATOR_SECRET,
    limits: Limits | None = None,
) -> web.Application:
    """The application ``idres serve --node NAME`` would run: an authoritative node with its SQLite
    file in ``data``, or a recursive node with the cache and upstream settings of its spec."""
    spec = topology.node(name)
    if spec.role == "recursive":
        config = RecursiveConfig(spec, topology, cache=spec.cache, upstream=spec.upstream)
        return create_recursive_app(
            config if limits is None else RecursiveConfig(**{**_fields(config), "limits": limits})
        )
    authoritative = AuthoritativeConfig(spec, topology, data / f"{name}.sqlite3", secret)
    if limits is not None:
        authoritative = AuthoritativeConfig(spec, topology, authoritative.db_path, secret, limits)
    return create_app(authoritative)


def _fields(config: RecursiveConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in ("spec", "topology", "cache", "upstream", "limits")}


class LocalNode:
    """One node of ``topology`` served in this event loop on the port its spec names, started and
    stopped as a process would be (cleanup contexts run, the database is closed), with a client.

    ``app`` may be given to serve a differently configured application on the node's port."""

    def __init__(
        self,
        topology: Topology,
        name: str,
        data: Path,
        session: ClientSession,
        *,
        secret: str = OPERATOR_SECRET,
        limits: Limits | None = None,
    ) -> None:
        self.topology, self.name, self.data, self.session = topology, name, data, session
        self.secret, self.limits = secret, limits
        self.spec = topology.node(name)
        self.url = self.spec.url
        self.db = data / f"{name}.sqlite3"
        self.runner: web.AppRunner | None = None

    async def start(self, app: web.Application | None = None) -> LocalNode:
        app = app or node_app(self.topology, self.name, self.data, secret=self.secret, limits=self.limits)
        self.runner = web.AppRunner(app, shutdown_timeout=5.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.spec.host, self.spec.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def app(self) -> web.Application:
        assert self.runner is not None, f"{self.name} is not running"
        return self.runner.app

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> tuple[int, Any]:
        """One request: (status, decoded body). JSON bodies are sent as JSON; answers are decoded from
        JSON, msgpack or NDJSON by their content type."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        async with self.session.request(method, self.url + path, data=data, headers=hdrs, params=params) as r:
            payload = await r.read()
            if r.content_type == "application/msgpack":
                return r.status, msgpack.unpackb(payload)
            if r.content_type == "application/x-ndjson":
                return r.status, [json.loads(line) for line in payload.splitlines()]
            assert r.content_type == "application/json", f"non-JSON answer: {payload[:200]!r}"
            return r.status, json.loads(payload)

    async def get(self, handle: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", f"/api/handles/{handle}", **kw)

    async def put(
        self, handle: str, values: list[dict[str, Any]], identity: str, secret: str | None = None, **params: str
    ) -> tuple[int, Any]:
        headers = auth(identity, self.secret if secret is None else secret)
        return await self.call("PUT", f"/api/handles/{handle}", body={"values": values}, headers=headers, params=params)


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``check`` until it holds; fail, saying ``what``, after ``within`` seconds. Returns how long
    it took (for a message; a duration is never asserted in tests, benchmarks measure them)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started
