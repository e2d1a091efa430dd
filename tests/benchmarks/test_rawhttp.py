"""The scale benchmark's lean GET client against real servers on 127.0.0.1: what it reads, and what it
refuses to read rather than report a wrong figure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from benchmarks.rawhttp import HttpError, connect


async def _serve(handler: Callable[[web.Request], object]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def answering() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/missing":
            return web.json_response({"responseCode": 100}, status=404)
        return web.Response(body=request.path.encode() * 5000)  # 5000 × the path: several reads

    async for url in _serve(handler):
        yield url


async def test_answers_are_read_whole_one_after_another_on_one_connection(answering: str) -> None:
    connection = await connect(answering)
    try:
        for path in ("/a", "/bb", "/missing", "/ccc"):
            status, body = await connection.get(path, timeout=5)
            if path == "/missing":
                assert (status, body) == (404, b'{"responseCode": 100}')
            else:
                assert (status, body) == (200, path.encode() * 5000)
        assert connection.open
    finally:
        connection.close()


async def test_a_chunked_answer_is_an_error_not_a_figure() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"part")
        await response.write_eof()
        return response

    async for url in _serve(chunked):
        connection = await connect(url)
        with pytest.raises(HttpError, match="chunked"):
            await connection.get("/x", timeout=5)
        assert not connection.open


async def test_a_server_that_never_answers_is_an_error_after_the_timeout() -> None:
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response()

    async for url in _serve(silent):
        connection = await connect(url)
        with pytest.raises(HttpError, match=r"no answer in 0\.2 s"):
            await connection.get("/x", timeout=0.2)
        assert not connection.open


async def test_a_closed_connection_is_an_error() -> None:
    async def closing(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.1)
        return web.Response()

    async for url in _serve(closing):
        connection = await connect(url)
        with pytest.raises(HttpError, match="connection lost"):
            await connection.get("/x", timeout=5)
        with pytest.raises(HttpError, match="closed"):
            await connection.get("/x", timeout=5)


async def test_only_plain_http_to_a_port_is_spoken() -> None:
    with pytest.raises(ValueError, match="plain http"):
        await connect("https://127.0.0.1:8443/")
