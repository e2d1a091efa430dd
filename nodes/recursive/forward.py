"""Requests the recursive node cannot answer from its cache, passed on to the owning node's primary:
writes (which then invalidate the cached entry), listings and authenticated reads.

The owning node is whatever the tree names, so it is untrusted (DESIGN §11): what goes to it is
rebuilt from what this node parsed (the identifier, ``resolver.client.handle_path``, and the query
parameters the API knows), and what comes back is never passed through. Its answer must be a
Handle body (an object with an integer ``responseCode``) in JSON or msgpack within
``resolver.client.MAX_ANSWER_BYTES``; this node answers it itself, encoded as its client asked,
with the HTTP status the API uses for that responseCode and no header of the upstream's. Anything
else (a redirect, HTML, an oversized or unreadable body) is a 502 naming the server and the fault.

The client's ``Authorization`` header goes only where ``resolver.trust.may_receive_credentials``
allows: a server the tree names for the identity's own prefix or under it, a node of this topology,
or one of the topology's ``trusted_servers``. Any other server is not contacted: the client gets a
403 naming it, to send its credentials there itself if it means to (issue 11, finding 1).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from nodes.recursive.config import CLIENT, RECURSIVE, RECURSIVE_CONFIG
from nodes.shared.access_log import CACHE, HOPS
from nodes.shared.http_api import credentials, handle_from_path, query_bool, query_int, query_ints, read_bytes, respond
from resolver.auth import Identity, parse_basic
from resolver.client import Reply
from resolver.errors import (
    Attempt,
    AuthenticationFailed,
    FailureKind,
    HandleError,
    PermissionDenied,
    ProtocolError,
    ReadOnly,
    UpstreamError,
)
from resolver.names import Handle, parse_handle, parse_prefix
from resolver.resolution import ResolutionFailed
from resolver.trust import channel_allowed, may_receive_credentials

__all__ = [
    "HTTP_STATUSES",
    "answer_of",
    "check_credentials_may_go",
    "forward",
    "list_handles",
    "upstream_params",
    "write_handle",
]

# Headers a forwarded request keeps: what the authoritative node needs to authenticate and decode.
# (The answer is asked for in msgpack by the client and re-encoded here as this client asked.)
_FORWARDED = ("Authorization", "Content-Type")
_BOOLEANS = ("auth", "publicOnly", "overwrite", "mintNewSuffix")
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="handle"'}  # what error_response sends with a 401


def _statuses() -> dict[int, tuple[int, ...]]:
    """responseCode -> the HTTP statuses the API answers it with, the usual one first: from the
    error tree (``resolver.errors``: every class names its pair) and the answers of
    ``resolver.bodies`` (1: 200, or 201 for a created handle; 200: a filtered read found nothing)."""
    table: dict[int, list[int]] = {1: [200, 201], 200: [200], 100: [404]}
    pending: list[type[HandleError]] = [HandleError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        statuses = table.setdefault(cls.response_code, [])
        if cls.http_status not in statuses:
            statuses.append(cls.http_status)
    # An upstream's failure is a bad gateway here (its own 500 is not this node's internal error);
    # 503 is kept for "committed, not yet on a mirror" (NotReplicated).
    table[2] = [502, 503]
    return {code: tuple(statuses) for code, statuses in table.items()}


HTTP_STATUSES: dict[int, tuple[int, ...]] = _statuses()
"""responseCode -> the HTTP statuses this API uses for it, the one answered by default first."""


def answer_of(server: str, reply: Reply) -> tuple[int, dict[str, Any]]:
    """The status and body this node answers for ``server``'s ``reply``: the upstream's status when
    the API uses it for that responseCode, else the usual one. UpstreamError (a bad answer) when
    the body is not a Handle body or its responseCode is not one this API answers with."""
    code = reply.body.get("responseCode")
    if type(code) is not int or code not in HTTP_STATUSES:
        why = "no responseCode" if "responseCode" not in reply.body else f"responseCode {str(code)[:20]}"
        raise UpstreamError.one(
            server, FailureKind.BAD_ANSWER, f"answered HTTP {reply.status} with {why}, not a Handle answer"
        )
    statuses = HTTP_STATUSES[code]
    return (reply.status if reply.status in statuses else statuses[0]), reply.body


def upstream_params(request: web.Request) -> list[tuple[str, str]]:
    """The query the owning node is sent: the parameters the API knows, as this node parsed them
    (a malformed one is refused here, 400), never the client's query string copied."""
    query = request.query
    params = [(name, "true" if query_bool(request, name) else "false") for name in _BOOLEANS if name in query]
    params += [("type", t) for t in query.getall("type", [])]
    raw_indexes = query.getall("index", [])
    if raw_indexes == ["various"]:  # PUT ?index=various: the indexes of the values sent
        params.append(("index", "various"))
    else:
        params += [("index", str(i)) for i in query_ints(request, "index")]
    if "prefix" in query:
        parse_prefix(query["prefix"])  # checked here; sent as written (the owner echoes it)
        params.append(("prefix", query["prefix"]))
    for name in ("page", "pageSize"):
        number = query_int(request, name)
        if number is not None:
            params.append((name, str(number)))
    if query.get("after"):  # a listing's cursor: the owning node checks it
        params.append(("after", query["after"]))
    return params


def _identity(authorization: str) -> Identity | None:
    """The identity the header names, or None when this node cannot read it (the owner will say why)."""
    try:
        return parse_basic(authorization)[0]
    except AuthenticationFailed:
        return None


def check_credentials_may_go(request: web.Request, authorization: str | None, route: Handle, urls: list[str]) -> None:
    """PermissionDenied, naming the server, unless each of ``urls`` (the servers the tree names for
    ``route``'s prefix) may be sent the client's ``authorization`` header; nothing to check without
    one. Credentials go on only over HTTPS or to this machine, unless the operator allows plain HTTP
    to the servers it trusts."""
    if authorization is None:
        return
    config = request.app[RECURSIVE_CONFIG]
    allow_plain = config.spec.allow_plain_credentials
    trusted = [*(n.url for n in config.topology.nodes.values()), *config.spec.trusted_servers]
    identity = _identity(authorization)
    for url in urls:
        if not channel_allowed(url, trusted, allow_plain=allow_plain):
            raise PermissionDenied(
                f"{route.zone} is served by {url} over plain HTTP: this node sends credentials only over "
                "HTTPS or to this machine, so it does not pass yours on; send credentialed requests for it "
                "there yourself",
                handle=route.text,
            )
        if may_receive_credentials(identity, route.zone, url, trusted):
            continue
        whose = f"{identity}'s prefix" if identity is not None else "the prefix of credentials this node cannot read"
        raise PermissionDenied(
            f"{route.zone} is served by {url}, which is not a node of this topology, not trusted by its "
            f"operator and not under {whose}: this node does not pass your credentials on to it; "
            "send credentialed requests for it there yourself",
            handle=route.text,
        )


def _passed_back(status: int, reply: Reply) -> dict[str, str] | None:
    """The headers this node's answer carries: its own challenge with a 401, and the owning node's
    ``Retry-After`` (read as a number, never copied) with a 429 or 503."""
    if status == 401:
        return _CHALLENGE
    if reply.retry_after is not None and status in (429, 503):
        return {"Retry-After": str(reply.retry_after)}
    return None


async def forward(request: web.Request, route: Handle, body: bytes | None) -> web.Response:
    """Send the client's request, credentials included, to the primary of the node owning ``route``.
    The path sent is the identifier of this request's path (none for a listing, ``/api/handles``)."""
    # Credentials over plain HTTP from another machine are refused before anyone is asked.
    authorization = credentials(request, request.app[RECURSIVE_CONFIG].spec.allow_plain_credentials)
    target = handle_from_path(request) or None
    params = upstream_params(request)
    request[CACHE] = "bypass"  # for the access log, with the upstream requests counted below
    try:
        located = await request.app[RECURSIVE].locate(route)
    except UpstreamError as exc:
        request[HOPS] = len(exc.hops if isinstance(exc, ResolutionFailed) else exc.attempts)
        raise
    request[HOPS] = walked = len(located.hops)
    headers = {k: request.headers[k] for k in _FORWARDED if k in request.headers}
    # The primary first; a site that answers "read-only" (a demoted old primary, after a promotion
    # that the delegation's HS_SITE values do not show yet) passes the write on to the next site.
    servers = (*located.primary_servers, *(s for s in located.step_servers if not s.primary))
    check_credentials_may_go(request, authorization, route, [s.url for s in servers])
    attempts: list[Attempt] = []
    for asked, server in enumerate(servers, 1):
        request[HOPS] = walked + asked
        try:
            reply = await request.app[CLIENT].forward(request.method, server.url, target, params, headers, body)
            status, answer = answer_of(server.url, reply)
            if status == 503 and reply.response_code == ReadOnly.response_code:
                attempts.append(Attempt(server.url, FailureKind.READ_ONLY, "read-only (a mirror)"))
                continue
            try:
                return respond(request, status, answer, _passed_back(status, reply))
            except (TypeError, ValueError, RecursionError, OverflowError) as exc:  # cannot be sent as JSON
                raise UpstreamError.one(
                    server.url, FailureKind.BAD_ANSWER, "answered a body this node cannot re-encode"
                ) from exc
        except UpstreamError as exc:
            attempts.extend(exc.attempts)
    raise UpstreamError(f"the primary for {route.text} could not be reached", handle=route.text, attempts=attempts)


async def write_handle(request: web.Request) -> web.Response:
    """PUT and DELETE: forwarded to the owning node's primary; the cached entry is dropped."""
    text = handle_from_path(request)
    # A mint request names only the prefix ("88.118.8/"); route it as a handle under that prefix.
    route = parse_handle(text + "X" if query_bool(request, "mintNewSuffix") else text)
    body = (
        await read_bytes(request, request.app[RECURSIVE_CONFIG].limits.max_body_bytes)
        if request.method == "PUT"
        else None
    )
    try:
        return await forward(request, route, body)
    finally:
        # Even a failed or lost answer may hide a committed write: never keep serving the old record.
        request.app[RECURSIVE].invalidate(route)


async def list_handles(request: web.Request) -> web.Response:
    """GET /api/handles?prefix=P: forwarded to the node that owns P (it needs the client's credentials)."""
    prefix = request.query.get("prefix")
    if not prefix:
        raise ProtocolError("listing needs ?prefix=PREFIX")
    return await forward(request, parse_handle(f"{parse_prefix(prefix)}/X"), body=None)
