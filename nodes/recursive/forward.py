"""Requests the recursive node cannot answer from its cache, passed on to the owning node's primary:
writes (which then invalidate the cached entry), listings and authenticated reads."""

from __future__ import annotations

from aiohttp import web

from nodes.recursive.config import CLIENT, RECURSIVE, RECURSIVE_CONFIG
from nodes.shared.http_api import handle_from_path, query_bool, read_bytes
from resolver.codec import JSON, MSGPACK, decode
from resolver.errors import Attempt, FailureKind, HandleError, ProtocolError, ReadOnly, UpstreamError
from resolver.names import Handle, parse_handle, parse_prefix

__all__ = ["forward", "list_handles", "write_handle"]

# Headers a forwarded request keeps: what the authoritative node needs to authenticate and decode.
_FORWARDED = ("Authorization", "Content-Type", "Accept")


async def forward(request: web.Request, route: Handle, body: bytes | None) -> web.Response:
    """Send the client's request, credentials included, to the primary of the node owning ``route``."""
    resolver = request.app[RECURSIVE]
    located = await resolver.locate(route)
    headers = {k: request.headers[k] for k in _FORWARDED if k in request.headers}
    attempts: list[Attempt] = []
    # The primary first; a site that answers "read-only" (a demoted old primary, after a promotion
    # that the delegation's HS_SITE values do not show yet) passes the write on to the next site.
    for server in (*located.primary_servers, *(s for s in located.step_servers if not s.primary)):
        try:
            status, passed_back, data = await request.app[CLIENT].forward(
                request.method, server.url, request.raw_path, headers, body
            )
        except UpstreamError as exc:
            attempts.extend(exc.attempts)
            continue
        if status == 503 and _response_code(passed_back, data) == ReadOnly.response_code:
            attempts.append(Attempt(server.url, FailureKind.READ_ONLY, "read-only (a mirror)"))
            continue
        return web.Response(status=status, body=data, headers=passed_back)
    raise UpstreamError(f"the primary for {route.text} could not be reached", handle=route.text, attempts=attempts)


def _response_code(headers: dict[str, str], data: bytes) -> int | None:
    media = MSGPACK if headers.get("Content-Type", "").startswith(MSGPACK) else JSON
    try:
        body = decode(data, media)
    except HandleError:
        return None
    code = body.get("responseCode") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


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
