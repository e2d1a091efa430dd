"""What the resolver's client tests share: an aiohttp server on 127.0.0.1 whose one handler each test
sets (``server``), a msgpack answer as a node sends it, and an answer that never ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgpack
import pytest
from aiohttp import web

from resolver.codec import MSGPACK
from tests.conftest import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    """An aiohttp server on a free port whose one catch-all handler the test sets, and what it was sent."""

    url: str
    handler: Handler | None = None
    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        self.bodies.append(await request.read())
        assert self.handler is not None, "the test set no handler"
        return await self.handler(request)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    port = free_port()
    served = Server(f"http://127.0.0.1:{port}")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", served.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield served
    finally:
        await runner.cleanup()


def msgpack_answer(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgpack.packb(body), content_type=MSGPACK)


@dataclass
class EndlessAnswer:
    """A handler that answers msgpack without saying its length and sends zeros until the client
    drops the connection (or 100 MB, a bound for the test); ``sent`` says how far it got."""

    sent: int = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": MSGPACK})  # chunked: no length said
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while self.sent < 100_000_000:
                await response.write(b"\x00" * 65_536)
                self.sent += 65_536
        return response
