"""The REST client and the resolver's HTTP transport (resolver.client) against a small aiohttp server in
the test's loop: msgpack negotiation, forwarding, and every failed exchange turned into an UpstreamError
with its kind."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from urllib.parse import unquote

import aiohttp
import msgpack
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from resolver.client import (
    MAX_ANSWER_BYTES,
    HandleClient,
    HttpTransport,
    Reply,
    basic_auth,
    describe_failure,
    handle_path,
    upstream_url,
)
from resolver.codec import MSGPACK
from resolver.errors import Attempt, FailureKind, UpstreamError
from resolver.names import parse_handle
from resolver.resolution import Failure, classify
from tests.conftest import free_port
from tests.resolver.conftest import EndlessAnswer, Server, msgpack_answer


@pytest.fixture
async def client() -> AsyncIterator[HandleClient]:
    async with aiohttp.ClientSession() as session:
        yield HandleClient(session, timeout=2.0)


# -- requests ------------------------------------------------------------------------------------


async def test_get_asks_for_msgpack_and_decodes_it(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return msgpack_answer({"responseCode": 1, "handle": "88.118/X", "values": []})

    server.handler = handler
    reply = await client.get(server.url, "88.118/X y?z", params=[("type", "URL")])
    assert reply == Reply(200, {"responseCode": 1, "handle": "88.118/X", "values": []})
    assert reply.response_code == 1
    request = server.seen[0]
    assert request.headers["Accept"] == MSGPACK
    assert request.raw_path == "/api/handles/88.118/X%20y%3Fz?type=URL"  # "/" kept, the rest encoded


async def test_a_json_answer_is_read_as_json(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"responseCode": 100, "message": "Handle Not Found"}, status=404)

    server.handler = handler
    reply = await client.get(server.url, "88.118/NONE")
    assert (reply.status, reply.response_code, reply.body["message"]) == (404, 100, "Handle Not Found")


async def test_put_sends_the_values_as_msgpack_with_the_credentials(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return msgpack_answer({"responseCode": 1, "handle": "88.118/X"}, status=201)

    server.handler = handler
    values = [{"index": 1, "type": "URL", "data": "https://example.cn"}]
    credentials = basic_auth("300:0.NA/88.118", "pw")
    reply = await client.put(server.url, "88.118/X", values, authorization=credentials, params=[("overwrite", "false")])
    assert reply.status == 201
    request = server.seen[0]
    assert request.method == "PUT" and request.query["overwrite"] == "false"
    assert request.headers["Content-Type"] == MSGPACK and request.headers["Authorization"] == credentials
    assert msgpack.unpackb(server.bodies[0]) == {"values": values}


def test_basic_auth_percent_encodes_the_colon_of_the_identity() -> None:
    header = basic_auth("300:0.NA/88.118", "s3cret")
    assert header.startswith("Basic ")
    assert base64.b64decode(header.removeprefix("Basic ")) == b"300%3A0.NA/88.118:s3cret"


async def test_an_unreadable_server_error_says_so_without_repeating_its_bytes(
    server: Server, client: HandleClient
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="application/json")

    server.handler = handler
    reply = await client.get(server.url, "88.118/X")
    assert reply == Reply(502, {"responseCode": 2, "message": "the answer is not valid application/json"})
    # What the resolution makes of it: that server failed, with what it said.
    assert classify(reply.status, reply.body) == Failure(
        FailureKind.SERVER_ERROR, "HTTP 502, responseCode 2: the answer is not valid application/json"
    )


async def test_a_body_that_is_not_an_object_becomes_an_error_reply(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response([1, 2, 3])

    server.handler = handler
    assert await client.get(server.url, "88.118/X") == Reply(
        200, {"responseCode": 2, "message": "the answer is not an object"}
    )


# -- failures: one UpstreamError, with the kind --------------------------------------------------


async def test_a_refused_connection_is_cannot_connect(client: HandleClient) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(UpstreamError, match="cannot connect") as caught:
        await client.get(url, "88.118/X")
    error = caught.value
    assert [(a.server, a.kind) for a in error.attempts] == [(url, FailureKind.CANNOT_CONNECT)]
    assert error.message.startswith(f"GET {url}/api/handles/88.118/X failed: {url}: cannot connect (")
    assert (error.http_status, error.response_code) == (502, 2)


async def test_no_answer_within_the_timeout_is_timed_out(server: Server, client: HandleClient) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await release.wait()  # never set: the answer never comes
        return web.json_response({})

    server.handler = handler
    with pytest.raises(UpstreamError, match="timed out") as caught:
        await client.get(server.url, "88.118/X", timeout=0.05)
    assert caught.value.attempts == (Attempt(server.url, FailureKind.TIMEOUT, "timed out"),)


async def test_forward_sends_the_request_on_and_decodes_the_answer(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"WWW-Authenticate": 'Basic realm="handle"', "X-Other": "dropped"}
        return web.Response(
            status=401, body=msgpack.packb({"responseCode": 402}), headers=headers, content_type=MSGPACK
        )

    server.handler = handler
    reply = await client.forward(
        "DELETE", server.url, "88.118/X", [("index", "1")], {"Authorization": "Basic eDp5", "Accept": "text/html"}, None
    )
    assert reply == Reply(401, {"responseCode": 402}, 'Basic realm="handle"')
    request = server.seen[0]
    assert request.method == "DELETE" and request.raw_path == "/api/handles/88.118/X?index=1"
    assert request.headers["Authorization"] == "Basic eDp5" and request.headers["Accept"] == MSGPACK


async def test_forward_of_a_listing_asks_the_listing_path(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return msgpack_answer({"responseCode": 1, "handles": []})

    server.handler = handler
    await client.forward("GET", server.url, None, [("prefix", "88.118")], {}, None)
    assert server.seen[0].raw_path == "/api/handles?prefix=88.118"


async def test_forward_to_a_refused_port_names_the_server(client: HandleClient) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UpstreamError, match="cannot connect") as caught:
        await client.forward("PUT", url, "88.118/X", (), {}, b"{}")
    assert caught.value.attempts[0].server == url and caught.value.attempts[0].kind is FailureKind.CANNOT_CONNECT


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (TimeoutError(), FailureKind.TIMEOUT, "timed out"),
        (aiohttp.ServerTimeoutError("read"), FailureKind.TIMEOUT, "timed out"),
        (aiohttp.ServerDisconnectedError(), FailureKind.CONNECTION_LOST, "Server disconnected"),
        (ConnectionResetError(104, "Connection reset by peer"), FailureKind.CONNECTION_LOST, "reset by peer"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), FailureKind.BAD_ANSWER, "not completed"),
        (aiohttp.InvalidURL("nota url"), FailureKind.CANNOT_CONNECT, "cannot connect (invalid URL nota url)"),
    ],
)
def test_describe_failure_names_the_kind(exc: BaseException, kind: FailureKind, words: str) -> None:
    described_kind, reason = describe_failure(exc)
    assert described_kind is kind and words in reason


# -- the transport -------------------------------------------------------------------------------


async def test_transport_query_returns_status_and_body_and_adds_its_params(
    server: Server, client: HandleClient
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return msgpack_answer({"responseCode": 303, "prefix": "88.118", "values": []}, status=300)

    server.handler = handler
    transport = HttpTransport(client, params=[("trace", "true")])
    assert await transport.query(server.url, "88.118.8/VIN", timeout=1.0) == (
        300,
        {"responseCode": 303, "prefix": "88.118", "values": []},
    )
    assert server.seen[0].raw_path == "/api/handles/88.118.8/VIN?trace=true"


async def test_transport_query_raises_the_kind_for_the_resolution(client: HandleClient) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UpstreamError) as caught:
        await HttpTransport(client).query(url, "88.118.8/VIN", timeout=1.0)
    failure = Failure.of(caught.value)
    assert failure.kind is FailureKind.CANNOT_CONNECT and failure.reason.startswith("cannot connect (")


async def test_transport_probe_is_true_only_for_a_healthy_answer(server: Server, client: HandleClient) -> None:
    healthy = True

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.path == "/healthz"
        return web.json_response({"status": "ok"}, status=200 if healthy else 503)

    server.handler = handler
    transport = HttpTransport(client)
    assert await transport.probe(server.url, timeout=1.0) is True
    healthy = False
    assert await transport.probe(server.url, timeout=1.0) is False
    assert await transport.probe(f"http://127.0.0.1:{free_port()}", timeout=1.0) is False


# -- upstream paths: nothing leaves /api/handles/ (issue 11, finding 2) -----------------------------


@given(prefix=st.text(max_size=12), suffix=st.text(max_size=40))
def test_handle_path_has_no_dot_segment_and_decodes_to_the_handle(prefix: str, suffix: str) -> None:
    path = handle_path(f"{prefix}/{suffix}")
    assert path.startswith("/api/handles/")
    segments = path.split("/")
    assert "." not in segments and ".." not in segments  # so no "/./", "/../", "/." or "/.." anywhere
    assert len(segments) == 5  # "", "api", "handles", the prefix and the suffix: "/" in either is encoded
    assert unquote(path.removeprefix("/api/handles/"), errors="strict") == f"{prefix}/{suffix}"


def test_handle_path_takes_the_parsed_handle_and_a_bare_prefix() -> None:
    assert handle_path(parse_handle("88.118.8/lot-7/../VIN")) == "/api/handles/88.118.8/lot-7%2F..%2FVIN"
    assert handle_path("88.118.8/..") == "/api/handles/88.118.8/%2E%2E"
    assert handle_path("88.118.8/.") == "/api/handles/88.118.8/%2E"
    assert handle_path("88.118.8/") == "/api/handles/88.118.8/"  # a mint request names the prefix alone


async def test_dot_segments_reach_the_server_encoded(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return msgpack_answer({"responseCode": 100}, status=404)

    server.handler = handler
    await client.get(server.url, "88.118.8/p/q/r/s/../../../../healthz")
    await client.get(server.url, "88.118.8/..")
    assert [r.raw_path for r in server.seen] == [
        "/api/handles/88.118.8/p%2Fq%2Fr%2Fs%2F..%2F..%2F..%2F..%2Fhealthz",
        "/api/handles/88.118.8/%2E%2E",
    ]


@pytest.mark.parametrize("tail", ["/api/replication/snapshot?x=", "/x/..", "?a=b", "#f", "@evil"])
async def test_a_server_address_with_more_than_a_host_and_port_is_not_asked(
    server: Server, client: HandleClient, tail: str
) -> None:
    server.handler = lambda request: asyncio.sleep(0, msgpack_answer({"responseCode": 1}))
    with pytest.raises(UpstreamError, match="is not a server address") as caught:
        await client.get(server.url + tail, "88.118/X")
    assert caught.value.attempts[0].kind is FailureKind.CANNOT_CONNECT
    assert server.seen == []
    assert isinstance(upstream_url(server.url + "/", "/healthz"), URL)


# -- upstream answers: capped, JSON or msgpack only, never redirected (issue 11, finding 5) ---------


async def test_an_answer_over_the_limit_is_abandoned(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"[" + b"1," * 750_000 + b"1]", content_type="application/json")

    server.handler = handler
    with pytest.raises(UpstreamError) as caught:
        await client.get(server.url, "88.118/X")
    (attempt,) = caught.value.attempts
    assert attempt.kind is FailureKind.BAD_ANSWER
    assert f"exceeded the limit of {MAX_ANSWER_BYTES} bytes" in attempt.reason


async def test_an_endless_answer_is_abandoned_at_the_limit(server: Server) -> None:
    server.handler = endless = EndlessAnswer()
    async with aiohttp.ClientSession() as session:
        client = HandleClient(session, timeout=10.0, max_answer_bytes=200_000)
        with pytest.raises(UpstreamError, match="exceeded the limit of 200000 bytes"):
            await HttpTransport(client).query(server.url, "88.118/X", timeout=10.0)
    await asyncio.sleep(0.1)
    assert endless.sent < 20_000_000  # the connection was dropped, not drained


@pytest.mark.parametrize(
    ("status", "kind"), [(200, FailureKind.BAD_ANSWER), (404, FailureKind.BAD_ANSWER), (503, FailureKind.SERVER_ERROR)]
)
async def test_an_answer_that_is_not_json_or_msgpack_is_refused(
    server: Server, client: HandleClient, status: int, kind: FailureKind
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="<script>alert(1)</script>", content_type="text/html")

    server.handler = handler
    with pytest.raises(UpstreamError) as caught:
        await client.get(server.url, "88.118/X")
    (attempt,) = caught.value.attempts
    assert attempt.kind is kind
    assert attempt.reason == f"answered text/html (HTTP {status}), not JSON or msgpack"
    assert "<script>" not in caught.value.message


async def test_a_redirect_is_refused_and_not_followed(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": server.url + "/healthz"})

    server.handler = handler
    with pytest.raises(UpstreamError) as caught:
        await client.forward("GET", server.url, "88.118/X", [("auth", "true")], {}, None)
    assert caught.value.attempts[0].kind is FailureKind.BAD_ANSWER
    assert "answered HTTP 302, a redirect" in caught.value.message and "Location" not in caught.value.message
    assert len(server.seen) == 1


async def test_a_referral_status_300_is_still_read(server: Server, client: HandleClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return msgpack_answer({"responseCode": 303, "prefix": "88.118", "values": []}, status=300)

    server.handler = handler
    assert (await client.get(server.url, "88.118.8/VIN")).status == 300
