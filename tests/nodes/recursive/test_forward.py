"""The forward path of the recursive node (nodes.recursive.forward): the query rebuilt from what the
API knows, and the answer rebuilt from the upstream's Handle body, against an upstream in the test's loop."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from nodes.recursive.config import CLIENT, RECURSIVE, RECURSIVE_CONFIG, RecursiveConfig
from nodes.recursive.forward import HTTP_STATUSES, answer_of, forward, upstream_params, write_handle
from nodes.shared.http_api import guarded, handle_from_path
from resolver.client import HandleClient, Reply
from resolver.config import DEFAULT_LIMITS, NodeSpec, Topology
from resolver.driver import RecursiveResolver
from resolver.errors import FailureKind, ProtocolError, UpstreamError
from resolver.names import parse_handle
from resolver.resolution import Hop
from resolver.sites import SiteServer
from tests.conftest import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def test_the_status_table_follows_the_error_tree() -> None:
    assert HTTP_STATUSES[1] == (200, 201)
    assert HTTP_STATUSES[2] == (502, 503)
    assert (HTTP_STATUSES[100], HTTP_STATUSES[101], HTTP_STATUSES[102]) == ((404,), (409,), (400,))
    assert (HTTP_STATUSES[402], HTTP_STATUSES[403], HTTP_STATUSES[401]) == ((401, 403), (401,), (403,))
    assert HTTP_STATUSES[200] == (200, 400) and HTTP_STATUSES[7] == (503,)


@pytest.mark.parametrize(
    ("status", "body", "answered"),
    [
        (201, {"responseCode": 1, "handle": "88.118/X"}, 201),
        (200, {"responseCode": 100}, 404),  # the status the API uses for the code, whatever was said
        (500, {"responseCode": 2, "message": "boom"}, 502),
        (503, {"responseCode": 2, "message": "not replicated"}, 503),
        (401, {"responseCode": 403}, 401),
    ],
)
def test_an_upstream_handle_body_gets_the_apis_status(status: int, body: dict[str, Any], answered: int) -> None:
    assert answer_of("http://up:1", Reply(status, body)) == (answered, body)


@pytest.mark.parametrize(
    ("body", "words"),
    [({}, "no responseCode"), ({"responseCode": "1"}, "responseCode 1"), ({"responseCode": 999}, "responseCode 999")],
)
def test_a_body_that_is_not_a_handle_answer_is_a_bad_answer(body: dict[str, Any], words: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        answer_of("http://up:1", Reply(200, body))
    (attempt,) = caught.value.attempts
    assert attempt.server == "http://up:1" and attempt.kind is FailureKind.BAD_ANSWER
    assert words in attempt.reason and "not a Handle answer" in attempt.reason


def test_the_query_sent_on_is_rebuilt_from_the_known_parameters() -> None:
    request = make_mocked_request(
        "PUT", "/api/handles/88.118/X?auth=yes&type=URL&index=1,2&pretty&evil=%2F..&overwrite=0&page=3"
    )
    assert upstream_params(request) == [
        ("auth", "true"),
        ("overwrite", "false"),
        ("type", "URL"),
        ("index", "1"),
        ("index", "2"),
        ("page", "3"),
    ]
    assert upstream_params(make_mocked_request("PUT", "/api/handles/88.118/X?index=various")) == [("index", "various")]
    listing = make_mocked_request("GET", "/api/handles?prefix=88.118&pageSize=10&after=88.118%2FX-9")
    assert upstream_params(listing) == [("prefix", "88.118"), ("pageSize", "10"), ("after", "88.118/X-9")]
    with pytest.raises(ProtocolError):
        upstream_params(make_mocked_request("GET", "/api/handles/88.118/X?index=../x"))


# -- through an application, against an upstream in the test's loop -------------------------------


@dataclass
class Located:
    primary_servers: tuple[SiteServer, ...]
    step_servers: tuple[SiteServer, ...] = ()
    hops: tuple[Hop, ...] = ()


@dataclass
class FakeResolver:
    """``locate`` names the upstream; ``invalidate`` is what a write calls after forwarding."""

    server: SiteServer
    invalidated: list[str] = field(default_factory=list)

    async def locate(self, handle: object) -> Located:
        return Located((self.server,))

    def invalidate(self, handle: Any) -> None:
        self.invalidated.append(handle.text)


@dataclass
class Upstream:
    handler: Handler
    url: str = ""
    seen: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.raw_path)
        self.authorizations.append(request.headers.get("Authorization"))
        return await self.handler(request)


async def _get(request: web.Request) -> web.StreamResponse:
    return await forward(request, parse_handle(handle_from_path(request)), body=None)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async def default(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, body=msgpack.packb({"responseCode": 100}), content_type="application/msgpack")

    served = Upstream(default)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", served.dispatch)
    server = TestServer(app, port=free_port())
    await server.start_server()
    served.url = str(server.make_url("")).rstrip("/")
    try:
        yield served
    finally:
        await server.close()


@pytest.fixture
async def recursive(upstream: Upstream) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with aiohttp.ClientSession() as session:
        app = web.Application()
        spec = NodeSpec("recursive", "recursive", "127.0.0.1", free_port())
        app[RECURSIVE_CONFIG] = RecursiveConfig(spec, Topology({"recursive": spec}), limits=DEFAULT_LIMITS)
        app[RECURSIVE] = cast(RecursiveResolver, FakeResolver(SiteServer(upstream.url, True)))
        app[CLIENT] = HandleClient(session, timeout=2.0)
        app.router.add_get("/api/handles/{handle:.+}", guarded(_get, lambda method, status: None))
        app.router.add_route("PUT", "/api/handles/{handle:.+}", guarded(write_handle, lambda method, status: None))
        async with TestClient(TestServer(app, port=free_port())) as client:
            yield client


async def test_a_401_carries_this_nodes_challenge_and_no_other_upstream_header(
    upstream: Upstream, recursive: TestClient[web.Request, web.Application]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"WWW-Authenticate": 'Basic realm="evil"', "Set-Cookie": "a=b", "X-Frame-Options": "ALLOW"}
        return web.json_response({"responseCode": 402, "message": "authenticate"}, status=401, headers=headers)

    upstream.handler = handler
    response = await recursive.get("/api/handles/88.118/X?auth=true&pretty")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="handle"'
    assert "Set-Cookie" not in response.headers and "X-Frame-Options" not in response.headers
    assert await response.json() == {"responseCode": 402, "message": "authenticate"}
    assert upstream.seen == ["/api/handles/88.118/X?auth=true"]  # pretty is this node's business


async def test_a_write_is_sent_to_the_encoded_path_and_answered_as_the_client_asked(
    upstream: Upstream, recursive: TestClient[web.Request, web.Application]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"responseCode": 1, "handle": "88.118/lot-7/../VIN"}, status=201)

    upstream.handler = handler
    response = await recursive.put(
        "/api/handles/88.118/lot-7%2F..%2FVIN?overwrite=false",  # the test client would drop a raw "/.."
        data=b'{"values": []}',
        headers={"Accept": "application/msgpack", "Content-Type": "application/json"},
    )
    assert response.status == 201 and response.content_type == "application/msgpack"
    assert msgpack.unpackb(await response.read()) == {"responseCode": 1, "handle": "88.118/lot-7/../VIN"}
    assert upstream.seen == ["/api/handles/88.118/lot-7%2F..%2FVIN?overwrite=false"]


async def test_an_answer_without_a_handle_body_is_a_502_naming_the_server(
    upstream: Upstream, recursive: TestClient[web.Request, web.Application]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    upstream.handler = handler
    response = await recursive.get("/api/handles/88.118/X?auth=true")
    body = await response.json()
    assert (response.status, body["responseCode"]) == (502, 2)
    assert upstream.url in body["message"] and "no responseCode, not a Handle answer" in body["message"]


@pytest.mark.parametrize(("sent", "passed"), [("7", "7"), ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("99999999", None)])
async def test_a_429_keeps_its_retry_after_as_a_number_and_nothing_else(
    upstream: Upstream, recursive: TestClient[web.Request, web.Application], sent: str, passed: str | None
) -> None:
    # A client locked out by the owning node's login limits is told when to come back, through the
    # recursive node too; the header is read as seconds and written anew, never copied.
    async def handler(request: web.Request) -> web.StreamResponse:
        body = {"responseCode": 3, "message": "too many failed logins for 300:88.118/USER: try again in 7 s"}
        return web.json_response(body, status=429, headers={"Retry-After": sent})

    upstream.handler = handler
    response = await recursive.get("/api/handles/88.118/X?auth=true")
    body = await response.json()
    assert (response.status, body["responseCode"]) == (429, 3)
    assert "too many failed logins" in body["message"]
    assert response.headers.get("Retry-After") == passed


# -- credentials go only where they belong (issue 11, finding 1) ----------------------------------


def _basic(user: str, secret: str = "s3cret") -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


@contextlib.asynccontextmanager
async def _delegated(
    upstream: Upstream, trusted: tuple[str, ...] = (), *, at: str | None = None, allow_plain: bool = False
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A recursive node whose topology is only itself and that locates every handle at ``upstream``
    (or at the URL ``at``)."""
    spec = NodeSpec(
        "recursive",
        "recursive",
        "127.0.0.1",
        free_port(),
        trusted_servers=trusted,
        allow_plain_credentials=allow_plain,
    )
    async with aiohttp.ClientSession() as session:
        app = web.Application()
        app[RECURSIVE_CONFIG] = RecursiveConfig(spec, Topology({"recursive": spec}))
        app[RECURSIVE] = cast(RecursiveResolver, FakeResolver(SiteServer(at or upstream.url, True)))
        app[CLIENT] = HandleClient(session, timeout=2.0)
        app.router.add_get("/api/handles/{handle:.+}", guarded(_get, lambda method, status: None))
        app.router.add_route("*", "/api/handles/{handle:.+}", guarded(write_handle, lambda method, status: None))
        async with TestClient(TestServer(app, port=spec.port)) as client:
            yield client


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_credentials_are_not_sent_to_a_server_delegated_outside_the_identitys_prefix(
    upstream: Upstream, method: str
) -> None:
    async with _delegated(upstream) as client:
        response = await client.request(
            method,
            "/api/handles/88.118.8.1/X?auth=true",
            data=b'{"values": []}' if method == "PUT" else None,
            headers={"Authorization": _basic("300%3A0.NA/88.119.6")},
        )
        body = await response.json()
    assert (response.status, body["responseCode"]) == (403, 401)
    assert f"88.118.8.1 is served by {upstream.url}, which is not a node of this topology" in body["message"]
    assert "not under 300:0.NA/88.119.6's prefix" in body["message"]
    assert "send credentialed requests for it there yourself" in body["message"]
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("user", "trusted"),
    [
        ("300%3A0.NA/88.118.8", False),  # 88.118.8.1 is under the identity's own prefix
        ("300%3A88.118.8/ADMIN", False),  # an ordinary handle's prefix is its own
        ("300%3A0.na/88.118.8", False),  # compared normalised
        ("300%3A0.NA/88.119.6", True),  # listed in trusted_servers
    ],
)
async def test_credentials_go_to_the_identitys_own_servers_and_to_trusted_ones(
    upstream: Upstream, user: str, trusted: bool
) -> None:
    header = _basic(user)
    async with _delegated(upstream, (upstream.url,) if trusted else ()) as client:
        response = await client.get("/api/handles/88.118.8.1/X?auth=true", headers={"Authorization": header})
    assert response.status == 404
    assert upstream.authorizations == [header]


async def test_a_read_without_credentials_still_goes_anywhere(upstream: Upstream) -> None:
    async with _delegated(upstream) as client:
        response = await client.get("/api/handles/88.118.8.1/X?auth=true")
    assert response.status == 404 and upstream.authorizations == [None]


async def test_unreadable_credentials_go_to_trusted_servers_only(upstream: Upstream) -> None:
    async with _delegated(upstream) as client:
        response = await client.get("/api/handles/88.118.8.1/X?auth=true", headers={"Authorization": "Bearer token"})
        body = await response.json()
    assert (response.status, body["responseCode"]) == (403, 401)
    assert "credentials this node cannot read" in body["message"] and upstream.seen == []


# -- credentials travel over HTTPS or stay on this machine (issue 11, finding 12) -------------------


@pytest.mark.parametrize("user", ["300%3A0.NA/88.118.8", "300%3A0.NA/88.119.6"])
async def test_credentials_are_not_sent_over_plain_http_to_another_machine(upstream: Upstream, user: str) -> None:
    # Even to a server under the identity's own prefix, or one the operator trusts: on the way over
    # plain HTTP, anyone on the network reads the secret.
    elsewhere = "http://192.0.2.8:8300"  # TEST-NET-1: nothing is ever sent there
    async with _delegated(upstream, (elsewhere,), at=elsewhere) as client:
        response = await client.get("/api/handles/88.118.8.1/X?auth=true", headers={"Authorization": _basic(user)})
        body = await response.json()
    assert (response.status, body["responseCode"]) == (403, 401)
    assert f"88.118.8.1 is served by {elsewhere} over plain HTTP" in body["message"]
    assert "sends credentials only over HTTPS or to this machine" in body["message"]
