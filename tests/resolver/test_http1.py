"""The recursive node's lean HTTP/1.1 pool (resolver.http1) against real servers on 127.0.0.1: an aiohttp
server for what nodes answer, a raw socket server for what a hostile one could send. Each failed
exchange is an UpstreamError of the kind the resolution counts, and nothing is held past the limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import msgpack
import pytest
import uvloop
from aiohttp import web

from resolver.codec import MSGPACK
from resolver.errors import FailureKind, UpstreamError
from resolver.http1 import MAX_HEAD_BYTES, ConnectionPool, PooledTransport
from tests.conftest import free_port
from tests.resolver.conftest import EndlessAnswer, Server, msgpack_answer

ANSWER = {"responseCode": 1, "handle": "88.118/X", "values": []}


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the node runs uvloop, whose transports differ from asyncio's."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(limit=8, limit_per_host=4)
    try:
        yield pool
    finally:
        await pool.close()


async def _failure(transport: PooledTransport, url: str, timeout: float = 2.0) -> tuple[FailureKind, str]:
    with pytest.raises(UpstreamError) as caught:
        await transport.query(url, "88.118/X", timeout)
    (attempt,) = caught.value.attempts
    return attempt.kind, attempt.reason


@contextlib.asynccontextmanager
async def raw_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A socket server that reads one request head and lets ``answer`` write what it likes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await answer(reader, writer)
        writer.close()

    port = free_port()
    listening = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listening.close()


# -- what nodes answer ---------------------------------------------------------------------------


async def test_a_query_asks_for_msgpack_on_the_encoded_path_with_the_params(
    server: Server, pool: ConnectionPool
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return msgpack_answer(ANSWER)

    server.handler = handler
    transport = PooledTransport(pool, params=[("trace", "true")])
    assert await transport.query(server.url, "88.118/X y?z", 2.0) == (200, ANSWER)
    request = server.seen[0]
    assert request.headers["Accept"] == MSGPACK and request.headers["Host"] == server.url.removeprefix("http://")
    assert request.raw_path == "/api/handles/88.118/X%20y%3Fz?trace=true"


async def test_answers_reuse_one_connection_and_not_found_is_an_answer(server: Server, pool: ConnectionPool) -> None:
    peers = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        if request.path.endswith("/gone"):
            return web.json_response({"responseCode": 100, "message": "Handle Not Found"}, status=404)
        return msgpack_answer(ANSWER)

    server.handler = handler
    transport = PooledTransport(pool)
    for _ in range(5):
        assert await transport.query(server.url, "88.118/X", 2.0) == (200, ANSWER)
    assert await transport.query(server.url, "88.118/gone", 2.0) == (
        404,
        {"responseCode": 100, "message": "Handle Not Found"},
    )
    assert len(server.seen) == 6 and len(peers) == 1  # one client port: one connection
    assert len(pool) == 1


async def test_a_kept_connection_the_server_drops_unanswered_is_asked_again_on_a_new_one(pool: ConnectionPool) -> None:
    body = msgpack.packb(ANSWER)
    connections = 0

    async def answer_one_then_drop_the_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (MSGPACK.encode(), len(body))
        writer.write(head + body)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on the kept connection: closed unanswered

    async with raw_server(answer_one_then_drop_the_next) as url:
        transport = PooledTransport(pool)
        assert await transport.query(url, "88.118/X", 2.0) == (200, ANSWER)
        assert await transport.query(url, "88.118/X", 2.0) == (200, ANSWER)
    assert connections == 2


async def test_a_new_connection_dropped_unanswered_is_a_failure_not_asked_again(pool: ConnectionPool) -> None:
    connections = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1

    async with raw_server(drop) as url:
        kind, reason = await _failure(PooledTransport(pool), url)
    assert (kind, reason) == (FailureKind.CONNECTION_LOST, "the server closed the connection")
    assert connections == 1


async def test_at_most_limit_per_host_connections_and_the_rest_wait(server: Server, pool: ConnectionPool) -> None:
    in_flight = most = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return msgpack_answer(ANSWER)

    server.handler = handler
    transport = PooledTransport(pool)
    answers = await asyncio.gather(*(transport.query(server.url, f"88.118/X{i}", 5.0) for i in range(12)))
    assert answers == [(200, ANSWER)] * 12
    assert most == 4


# -- failures ------------------------------------------------------------------------------------


async def test_a_refused_connection_is_cannot_connect(pool: ConnectionPool) -> None:
    kind, reason = await _failure(PooledTransport(pool), f"http://127.0.0.1:{free_port()}")
    assert kind is FailureKind.CANNOT_CONNECT and "cannot connect" in reason and "refused" in reason.lower()


async def test_no_answer_within_the_timeout_is_timed_out_and_the_connection_dropped(
    server: Server, pool: ConnectionPool
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return msgpack_answer(ANSWER)

    server.handler = handler
    assert await _failure(PooledTransport(pool), server.url, timeout=0.2) == (FailureKind.TIMEOUT, "timed out")
    assert len(pool) == 0


async def test_a_redirect_is_refused_and_not_followed(server: Server, pool: ConnectionPool) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": server.url + "/healthz"})

    server.handler = handler
    kind, reason = await _failure(PooledTransport(pool), server.url)
    assert kind is FailureKind.BAD_ANSWER and reason == "answered HTTP 302, a redirect, not a Handle answer"
    assert len(server.seen) == 1


@pytest.mark.parametrize(("status", "kind"), [(200, FailureKind.BAD_ANSWER), (503, FailureKind.SERVER_ERROR)])
async def test_an_answer_that_is_not_json_or_msgpack_is_refused(
    server: Server, pool: ConnectionPool, status: int, kind: FailureKind
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="<script>alert(1)</script>", content_type="text/html")

    server.handler = handler
    assert await _failure(PooledTransport(pool), server.url) == (
        kind,
        f"answered text/html (HTTP {status}), not JSON or msgpack",
    )


async def test_an_answer_over_the_limit_is_abandoned_whether_declared_or_endless(server: Server) -> None:
    endless = EndlessAnswer()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/declared"):
            return web.Response(body=b"\x00" * 300_000, content_type=MSGPACK)
        return await endless(request)

    server.handler = handler
    pool = ConnectionPool(max_answer_bytes=200_000)
    transport = PooledTransport(pool)
    try:
        with pytest.raises(UpstreamError, match="the answer of 300000 bytes exceeded the limit of 200000 bytes"):
            await transport.query(server.url, "88.118/declared", 5.0)
        with pytest.raises(UpstreamError, match="the answer exceeded the limit of 200000 bytes"):
            await transport.query(server.url, "88.118/endless", 10.0)
    finally:
        await pool.close()
    await asyncio.sleep(0.1)
    assert endless.sent < 20_000_000  # the connection was dropped, not drained


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not a valid HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * (MAX_HEAD_BYTES + 10), f"head exceeded {MAX_HEAD_BYTES} bytes"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "answered HTTP 101, not a Handle answer",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "the server closed the connection"),
    ],
    ids=["not-http", "endless-head", "upgrade", "cut-short"],
)
async def test_what_a_hostile_server_sends_is_a_failure_of_that_server(
    pool: ConnectionPool, sent: bytes, words: str
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sent)
        await writer.drain()

    async with raw_server(answer) as url:
        kind, reason = await _failure(PooledTransport(pool), url)
    assert kind in (FailureKind.BAD_ANSWER, FailureKind.CONNECTION_LOST)
    assert words in reason
    assert len(pool) == 0


async def test_a_body_delimited_by_the_end_of_the_connection_is_read(pool: ConnectionPool) -> None:
    body = msgpack.packb(ANSWER)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: %s\r\n\r\n%s" % (MSGPACK.encode(), body))
        await writer.drain()

    async with raw_server(answer) as url:
        assert await PooledTransport(pool).query(url, "88.118/X", 2.0) == (200, ANSWER)


async def test_a_server_address_with_more_than_a_host_and_port_is_not_asked(pool: ConnectionPool) -> None:
    kind, reason = await _failure(PooledTransport(pool), "http://127.0.0.1:1/api?x=1")
    assert kind is FailureKind.CANNOT_CONNECT and "is not a server address" in reason


async def test_probe_is_true_only_for_a_healthy_answer(server: Server, pool: ConnectionPool) -> None:
    healthy = True

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.path == "/healthz"
        return web.json_response({"status": "ok"}, status=200 if healthy else 503)

    server.handler = handler
    transport = PooledTransport(pool)
    assert await transport.probe(server.url, 1.0) is True
    healthy = False
    assert await transport.probe(server.url, 1.0) is False
    assert await transport.probe(f"http://127.0.0.1:{free_port()}", 1.0) is False


async def test_a_second_answer_to_one_request_closes_the_connection(pool: ConnectionPool) -> None:
    body = msgpack.packb(ANSWER)
    answer_bytes = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        MSGPACK.encode(),
        len(body),
        body,
    )
    connections = 0

    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(answer_bytes * 2)  # the second answers nothing: the next request would get it
        await writer.drain()
        await asyncio.sleep(0.5)

    async with raw_server(twice) as url:
        transport = PooledTransport(pool)
        assert await transport.query(url, "88.118/X", 2.0) == (200, ANSWER)
        assert await transport.query(url, "88.118/X", 2.0) == (200, ANSWER)
    assert connections == 2, "the connection out of step was not reused"


async def test_idle_connections_kept_are_bounded_by_the_limit_in_all() -> None:
    servers = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):

            async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                body = msgpack.packb(ANSWER)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                    % (MSGPACK.encode(), len(body), body)
                )
                await writer.drain()
                await asyncio.sleep(5)

            servers.append(await stack.enter_async_context(raw_server(answer)))
        pool = ConnectionPool(limit=2, limit_per_host=2)
        try:
            for url in servers:
                assert await PooledTransport(pool).query(url, "88.118/X", 2.0) == (200, ANSWER)
            assert len(pool) == 2, "two servers keep an idle connection, the third none"
        finally:
            await pool.close()
