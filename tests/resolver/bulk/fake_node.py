"""``FakeNode``: the batch endpoint's contract (``POST /api/batch``, ``GET /api/handles/...``) in memory,
served in a thread of the test process, with failures on demand (commit and then drop the connection,
commit and then stall past the client's timeout, answer an error status, be a mirror)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
from aiohttp import web

from resolver.client import basic_auth
from resolver.errors import InvalidHandle, InvalidValue
from resolver.names import parse_handle
from resolver.values import value_from_wire, value_to_wire
from tests.conftest import free_port

__all__ = ["IDENTITY", "SECRET", "FakeNode", "node_message", "serve_fake_node"]

IDENTITY = "300:0.NA/88.118.8"
SECRET = "bulk-secret-for-tests"


class FakeNode:
    """The batch endpoint's contract in memory. ``creates`` counts how often each handle was created."""

    def __init__(self, prefix: str = "88.118.8") -> None:
        self.prefix = prefix
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.creates: Counter[str] = Counter()
        self.requests = 0
        self.delay = 0.0  # after committing, before answering
        self.drop_after_commit: set[int] = set()  # request numbers (from 1) whose connection is dropped
        self.stall_after_commit: dict[int, float] = {}  # request number -> seconds to wait before answering
        self.fail: dict[int, int] = {}  # request number -> HTTP status, without committing
        self.mirror = False
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/batch", self._batch)
        app.router.add_get("/api/handles/{handle:.+}", self._get)
        return app

    @staticmethod
    def _answer(status: int, body: dict[str, Any]) -> web.Response:
        return web.Response(status=status, body=msgpack.packb(body), content_type="application/msgpack")

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        number = self.requests
        if request.headers.get("Authorization") != basic_auth(IDENTITY, SECRET):
            return self._answer(401, {"responseCode": 403, "message": f"authentication failed for {IDENTITY}"})
        if self.mirror:
            return self._answer(503, {"responseCode": 7, "message": "this node is a mirror"})
        if number in self.fail:
            return self._answer(self.fail[number], {"responseCode": 2, "message": "injected failure"})
        operations = msgpack.unpackb(await request.read())["operations"]
        assert len(operations) <= 10_000
        results = [self._apply(op) for op in operations]
        failed = sum(r["responseCode"] != 1 for r in results)
        if self.delay:
            await asyncio.sleep(self.delay)
        if number in self.drop_after_commit:
            assert request.transport is not None
            request.transport.close()  # committed, and the client never hears of it
            return web.Response(status=500)
        if number in self.stall_after_commit:
            await asyncio.sleep(self.stall_after_commit[number])
        body = {"responseCode": 1, "applied": len(results) - failed, "failed": failed, "lastSeq": number}
        return self._answer(200, {**body, "results": results})

    def _apply(self, op: dict[str, Any]) -> dict[str, Any]:
        text = op.get("handle")
        try:
            handle = parse_handle(text) if isinstance(text, str) else parse_handle("")
        except InvalidHandle as exc:
            return {"responseCode": 102, "handle": text, "message": exc.message}
        if handle.prefix != self.prefix:
            return {"responseCode": 301, "handle": text, "message": f"{handle.prefix} is not served here"}
        try:
            values = [value_from_wire(v, position=i, now=int(time.time())) for i, v in enumerate(op["values"], 1)]
        except InvalidValue as exc:
            return {"responseCode": 202, "handle": text, "message": exc.message}
        if op["op"] == "create" and handle.key in self.records:
            return {"responseCode": 101, "handle": text, "message": f"{text} already exists"}
        self.records[handle.key] = [value_to_wire(v) for v in values]
        self.creates[handle.key] += 1
        return {"responseCode": 1, "handle": text}

    async def _get(self, request: web.Request) -> web.Response:
        text = request.match_info["handle"]
        values = self.records.get(parse_handle(text).key)
        if values is None:
            return self._answer(404, {"responseCode": 100, "handle": text, "message": "Handle Not Found"})
        return self._answer(200, {"responseCode": 1, "handle": text, "values": values})


@contextmanager
def serve_fake_node() -> Iterator[FakeNode]:
    """A FakeNode serving on a free port in a thread of its own, with its own event loop."""
    fake, port = FakeNode(), free_port()
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def serve() -> None:
        runner = web.AppRunner(fake.app(), handler_cancellation=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the fake node did not start"
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def node_message(handle: str) -> str:
    """What a node says about a malformed ``handle`` (the grammar's own message)."""
    try:
        parse_handle(handle)
    except InvalidHandle as exc:
        return exc.message
    raise AssertionError(f"{handle} is a well-formed handle")
