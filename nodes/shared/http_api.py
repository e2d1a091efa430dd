"""HTTP plumbing shared by every node: the error middleware, content negotiation, bodies and parameters."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from nodes.shared.access_log import RESPONSE_CODE, STARTED
from resolver.codec import JSON, MSGPACK, body_media_type, choose_media_type, decode, encode
from resolver.errors import (
    BodyTooLarge,
    CredentialsNeedTLS,
    HandleError,
    InvalidHandle,
    MethodNotAllowed,
    ProtocolError,
)
from resolver.trust import is_this_machine
from resolver.values import describe

__all__ = [
    "HANDLES_PATH",
    "MAX_QUERY_INT",
    "Handler",
    "credentials",
    "error_middleware",
    "error_response",
    "guarded",
    "handle_from_path",
    "query_bool",
    "query_int",
    "query_ints",
    "read_body",
    "read_bytes",
    "respond",
]

log = logging.getLogger("idres.http")

HANDLES_PATH = "/api/handles/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def respond(
    request: web.Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    """Encode ``body`` as the client asked (msgpack or JSON) with the given HTTP status."""
    media = choose_media_type(request.headers.get("Accept"))
    if media == JSON and request.query.get("pretty", "false").lower() in ("", "true", "yes", "1"):
        import json

        data = json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8")
    else:
        data = encode(body, media)
    content_type = MSGPACK if media == MSGPACK else "application/json; charset=utf-8"
    response = web.Response(status=status, body=data, headers={"Content-Type": content_type, **(headers or {})})
    code = body.get("responseCode")
    if type(code) is int:
        response[RESPONSE_CODE] = code  # for the access log (nodes.shared.access_log)
    return response


def error_response(request: web.Request, exc: Exception) -> web.Response | None:
    """The Handle response for an error a handler raised: responseCode, HTTP status and a message,
    never HTML. The one place where errors become HTTP: aiohttp's own exceptions are translated into
    the error tree first. None for an aiohttp ``HTTPException`` that is not mapped (it is raised as it is)."""
    if isinstance(exc, HandleError):
        error = exc
        if error.handle is None and request.path.startswith(HANDLES_PATH) and len(request.path) > len(HANDLES_PATH):
            # An error about a value or a body still names the handle the client was writing.
            with contextlib.suppress(InvalidHandle):
                error.handle = handle_from_path(request)
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        error = BodyTooLarge(f"request body too large: {exc.text}")
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        error = _method_not_allowed(request, exc.allowed_methods)
    elif isinstance(exc, web.HTTPNotFound):
        error = MethodNotAllowed(f"Unknown HTTP API endpoint {request.path}")  # HANDLE.NET's answer
    elif isinstance(exc, web.HTTPException):
        return None
    else:
        log.error("internal error on %s %s", request.method, request.path_qs, exc_info=exc)
        error = HandleError("internal error (logged on the node)")
    headers = {"WWW-Authenticate": 'Basic realm="handle"'} if error.http_status == 401 else None
    if error.retry_after is not None:  # 429 TooManyRequests: when to try again (RFC 6585 §4)
        headers = {**(headers or {}), "Retry-After": str(error.retry_after)}
    return respond(request, error.http_status, error.to_body(), headers)


def _method_not_allowed(request: web.Request, allowed: Iterable[str]) -> MethodNotAllowed:
    return MethodNotAllowed(
        f"method {request.method} is not allowed on {request.path} (allowed: {', '.join(sorted(allowed))})"
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes a Handle response: responseCode, HTTP status and a message, never HTML."""
    request[STARTED] = time.perf_counter()  # for the access log's duration
    try:
        return await handler(request)
    except Exception as exc:
        response = error_response(request, exc)
        if response is None:
            raise
        return response


def credentials(request: web.Request, allow_plain: bool) -> str | None:
    """The request's ``Authorization`` header, None without one. Over plain HTTP from another machine
    it is refused (403, responseCode 402, as HANDLE.NET does), unless the operator set
    ``allow_plain_credentials``: a secret sent that way has been readable on the network."""
    header = request.headers.get("Authorization")
    if header is None or allow_plain or request.secure or is_this_machine(request.remote):
        return header
    raise CredentialsNeedTLS(
        "credentials are accepted only over HTTPS (or from this machine): this request came over plain "
        f"HTTP from {request.remote}; send it to this node's https:// address (and change the secret if "
        "it has crossed a network in the clear)"
    )


def guarded(handler: Handler, count: Callable[[str, int], None]) -> Handler:
    """``handler`` with what ``error_middleware`` and ``count_requests`` do, for an application that
    runs no middleware (the recursive node: each aiohttp middleware layer costs its hot path about
    3 us of 60). ``count(method, status)`` is called for every response, errors included."""

    async def run(request: web.Request) -> web.StreamResponse:
        request[STARTED] = time.perf_counter()  # for the access log's duration
        try:
            response = await handler(request)
        except Exception as exc:
            mapped = error_response(request, exc)
            if mapped is None:
                if isinstance(exc, web.HTTPException):
                    count(request.method, exc.status)
                raise
            response = mapped
        count(request.method, response.status)
        return response

    return run


async def read_body(request: web.Request, limit: int) -> Any:
    """Decode the request body, refusing one over ``limit`` bytes before reading it whole."""
    media = body_media_type(request.headers.get("Content-Type"))
    return decode(await read_bytes(request, limit), media)


async def read_bytes(request: web.Request, limit: int) -> bytes:
    """The raw request body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65_536):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise ProtocolError("the request has no body")
    return b"".join(chunks)


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """HANDLE.NET booleans: a bare ``?name``, ``true`` and ``yes`` are true."""
    if name not in request.query:
        return default
    value = request.query[name].strip().lower()
    if value in ("", "true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise ProtocolError(f"parameter {name}={describe(request.query[name])} is not a boolean (true or false)")


# SQLite's integers, and so every OFFSET, LIMIT and seq a parameter ends in, are signed 64-bit.
MAX_QUERY_INT = 2**63 - 1
_MAX_DIGITS = len(str(MAX_QUERY_INT))


def _integer(name: str, raw: str, part: str, *, signed: bool) -> int:
    """One integer parameter: ASCII digits (a sign too when ``signed``), at most ``MAX_QUERY_INT``
    in size, refused in words naming the parameter. Never ``int()`` of thousands of digits (a
    ValueError past 4,300) and never a value SQLite cannot bind."""
    text = part.strip()
    digits = text[1:] if signed and text[:1] in ("-", "+") else text
    if not (digits.isascii() and digits.isdigit()):
        kind = "an integer" if signed else "a non-negative integer"
        raise ProtocolError(f"parameter {name}={describe(raw)} is not {kind}")
    if len(digits.lstrip("0")) > _MAX_DIGITS or int(digits) > MAX_QUERY_INT:
        raise ProtocolError(f"parameter {name}={describe(raw)} is out of range (at most {MAX_QUERY_INT})")
    return int(text)


def query_ints(request: web.Request, name: str) -> list[int]:
    """Every non-negative integer of a parameter, given repeatedly or comma-separated (``index=1,2``)."""
    return [
        _integer(name, raw, part, signed=False) for raw in request.query.getall(name, []) for part in raw.split(",")
    ]


def query_int(request: web.Request, name: str) -> int | None:
    """An integer parameter (signed), None when absent or empty."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    return _integer(name, raw, raw, signed=True)


def handle_from_path(request: web.Request, base: str = HANDLES_PATH) -> str:
    """The handle in the path after ``base``, percent-decoded with ``+`` kept literal (HANDLE.NET
    decodes with ``decodeURLIgnorePlus``). Taken from the raw path so ``%2F`` and ``%3F`` survive.
    InvalidHandle (102) when the bytes are not UTF-8."""
    raw = request.raw_path.split("?", 1)[0]
    try:
        return unquote(raw[len(base) :], errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidHandle("the handle in the path is not valid percent-encoded UTF-8") from exc
