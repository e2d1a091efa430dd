"""The HANDLE.NET REST client over aiohttp, and the resolver's HTTP transport built on it.

This is where aiohttp, socket and timeout errors of an exchange with another node enter the service:
they are translated here, once, into an ``UpstreamError`` whose one ``Attempt`` carries the
``FailureKind`` (cannot connect, timed out, connection lost, bad answer) and a short reason.

Every other server is untrusted (DESIGN §11: any enterprise can delegate to any address), so this
module is also where what goes to it and what comes back is held to the API:

- URLs are built in one place, ``upstream_url``: the server's origin only (an HS_SITE address that
  smuggles in a path is refused) and a path from ``handle_path``, which encodes the prefix and the
  suffix as one path segment each, ``.`` and ``..`` included, so no identifier can make a request
  leave ``/api/handles/``. The URL is handed to aiohttp already encoded, so nothing normalises it.
- Answers are read in chunks up to ``MAX_ANSWER_BYTES`` and abandoned past it; only JSON and
  msgpack are read, and a redirect is never followed: each is a ``BAD_ANSWER``.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from resolver.codec import JSON, MSGPACK, decode, encode
from resolver.errors import FailureKind, HandleError, UpstreamError
from resolver.names import Handle

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "BadAnswer",
    "HandleClient",
    "HttpTransport",
    "Params",
    "Reply",
    "answer_reply",
    "basic_auth",
    "describe_failure",
    "handle_path",
    "upstream_url",
]

DEFAULT_TIMEOUT = 5.0  # seconds for one exchange; callers with a budget (the resolver) pass their own
# The most an answer from another node may hold. A record answer is a few KB and HANDLE.NET's own
# request limit is 1 MiB (resolver.limits.Limits.max_body_bytes); without a cap one anonymous GET
# of a name delegated to a hostile server made the recursive node read a 1.5 GB body into memory
# (issue 11, finding 5). Callers that read long pages from a configured peer pass their own.
MAX_ANSWER_BYTES = 1_048_576
_CHUNK = 65_536  # bytes per read while counting towards the cap
_ANSWER_TYPES = {JSON: JSON, "text/json": JSON, MSGPACK: MSGPACK, "application/x-msgpack": MSGPACK}

Params = Sequence[tuple[str, str]] | Mapping[str, str]


def basic_auth(identity: str, secret: str) -> str:
    """HANDLE.NET Basic credentials: ``INDEX%3AHANDLE:secret`` (the colon in the user percent-encoded)."""
    user = quote(identity, safe="/")
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


def _segment(text: str) -> str:
    """``text`` as one path segment: every reserved character encoded, ``/`` included, and a ``.``
    or ``..`` segment spelled ``%2E``/``%2E%2E`` (RFC 3986 §5.2.4 removes dot segments, encoded ones
    are data; the receiving node decodes the path once, ``nodes.shared.http_api.handle_from_path``)."""
    encoded = quote(text, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def handle_path(handle: Handle | str) -> str:
    """``/api/handles/PREFIX/SUFFIX`` for ``handle``: split where the grammar splits (the first
    ``/``), each part one encoded segment. A mint request names the prefix alone (``"88.118.8/"``)."""
    prefix, slash, suffix = (handle.text if isinstance(handle, Handle) else handle).partition("/")
    return f"/api/handles/{_segment(prefix)}{slash}{_segment(suffix)}"


@functools.lru_cache(maxsize=1024)
def _origin(base_url: str) -> str | None:
    """``scheme://host:port`` of a server's URL; None when it names more than a server (a path,
    a query, a fragment or user information: an HS_SITE address can hold any text)."""
    try:
        url = URL(base_url, encoded=True)
        if (
            url.scheme not in ("http", "https")
            or not url.host
            or url.raw_path not in ("", "/")
            or "?" in base_url
            or "#" in base_url
            or "@" in base_url
        ):
            return None
        return str(url.origin())
    except ValueError:
        return None


def upstream_url(base_url: str, path: str) -> URL:
    """The URL of ``path`` (already encoded: ``handle_path`` or a fixed endpoint) on the server at
    ``base_url``, marked encoded so that neither yarl nor aiohttp normalises it. ValueError when
    ``base_url`` is not a bare server address."""
    origin = _origin(base_url)
    if origin is None:
        raise ValueError(f"{base_url!r} is not a server address (http[s]://host:port)")
    return URL(origin + path, encoded=True)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    challenge: str | None = None
    """The ``WWW-Authenticate`` header of a 401 answer."""
    retry_after: int | None = None
    """The ``Retry-After`` seconds of a 429 or 503 answer (digits only, at most a day)."""

    @property
    def response_code(self) -> int:
        code = self.body.get("responseCode", 2)
        return code if isinstance(code, int) else 2


def describe_failure(exc: BaseException) -> tuple[FailureKind, str]:
    """The kind and a short reason of a failed HTTP exchange, for errors that list what each server said."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return FailureKind.TIMEOUT, "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FailureKind.CANNOT_CONNECT, f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.InvalidURL):
        return FailureKind.CANNOT_CONNECT, f"cannot connect (invalid URL {exc.url})"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return FailureKind.BAD_ANSWER, str(exc) or type(exc).__name__
    return FailureKind.CONNECTION_LOST, str(exc) or type(exc).__name__


class BadAnswer(Exception):
    """An answer a client will not read; its message is the reason, ``kind`` how it counts."""

    def __init__(self, reason: str, kind: FailureKind = FailureKind.BAD_ANSWER) -> None:
        super().__init__(reason)
        self.kind = kind


async def _read_answer(resp: aiohttp.ClientResponse, limit: int) -> Reply:
    """The answer's status and decoded body, read in chunks and abandoned past ``limit`` bytes."""
    if 300 < resp.status < 400:  # never read: answer_reply refuses it
        return answer_reply(resp.status, resp.content_type, b"", None, None)
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise BadAnswer(f"the answer of {declared} bytes exceeded the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise BadAnswer(f"the answer exceeded the limit of {limit} bytes")
        chunks.append(chunk)
    return answer_reply(
        resp.status,
        resp.content_type,
        b"".join(chunks),
        resp.headers.get("WWW-Authenticate"),
        resp.headers.get("Retry-After"),
    )


def answer_reply(status: int, content_type: str, body: bytes, challenge: str | None, retry_after: str | None) -> Reply:
    """The ``Reply`` of an answer read whole (``body``): a redirect is never followed and only JSON
    and msgpack are read, each else a ``BadAnswer``; ``content_type`` is the header's value (its
    parameters are ignored); ``challenge`` and ``retry_after`` the headers of those names, if any."""
    if 300 < status < 400:  # never followed: a Location may point anywhere (300 is a referral)
        raise BadAnswer(f"answered HTTP {status}, a redirect, not a Handle answer")
    media_type = content_type.partition(";")[0].strip().lower()
    challenge = challenge if status == 401 else None
    seconds = _retry_after(retry_after) if status in (429, 503) else None
    if not body:
        return Reply(status, {}, challenge, seconds)
    media = _ANSWER_TYPES.get(media_type)
    if media is None:
        kind = FailureKind.SERVER_ERROR if status >= 500 else FailureKind.BAD_ANSWER
        raise BadAnswer(f"answered {media_type or 'no media type'} (HTTP {status}), not JSON or msgpack", kind)
    try:
        parsed = decode(body, media)
    except (HandleError, ValueError, RecursionError):
        # Not what it claims to be: the status still says whether the server failed; its bytes are
        # not repeated (they would reach the client in the error's message).
        return Reply(status, {"responseCode": 2, "message": f"the answer is not valid {media}"}, challenge, seconds)
    if not isinstance(parsed, dict):
        return Reply(status, {"responseCode": 2, "message": "the answer is not an object"}, challenge, seconds)
    return Reply(status, parsed, challenge, seconds)


def _retry_after(value: str | None) -> int | None:
    """``Retry-After`` in seconds (RFC 9110 §10.2.3; the HTTP-date form is not used between nodes),
    None when absent or not a plain number of at most a day."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 6:
        return None
    seconds = int(value)
    return seconds if seconds <= 86_400 else None


class HandleClient:
    """Speaks to nodes with msgpack (DESIGN §4: nodes use msgpack between themselves). Answers are
    read up to ``max_answer_bytes``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = max_answer_bytes

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        *,
        params: Params = (),
        authorization: str | None = None,
        body: Any = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> Reply:
        """``method`` on ``path`` (encoded: ``handle_path`` or a fixed endpoint) of the server at
        ``base_url``: msgpack asked for, ``body`` sent as msgpack (or ``data`` as it is, with the
        given ``headers``). An UpstreamError when there is no answer this client will read."""
        sent = {**(headers or {}), "Accept": MSGPACK}
        if authorization:
            sent["Authorization"] = authorization
        if body is not None:
            sent["Content-Type"] = MSGPACK
            data = encode(body, MSGPACK)
        what = f"{method} {base_url.rstrip('/')}{path}"
        try:
            url = upstream_url(base_url, path)
        except ValueError as exc:
            raise UpstreamError.one(base_url, FailureKind.CANNOT_CONNECT, str(exc), what=what) from exc
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                headers=sent,
                data=data,
                timeout=self._timeout if timeout is None else aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                try:
                    return await _read_answer(resp, self._limit)
                except BadAnswer as exc:
                    resp.close()  # abandon the rest: the connection is not reused
                    raise UpstreamError.one(base_url, exc.kind, str(exc), what=what) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            kind, reason = describe_failure(exc)
            raise UpstreamError.one(base_url, kind, reason, what=what) from exc

    async def forward(
        self,
        method: str,
        base_url: str,
        handle: Handle | str | None,
        params: Params,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> Reply:
        """A client's request on ``handle`` (None: the listing, ``/api/handles?prefix=``) passed on
        with its ``headers`` and ``body`` as they are; the answer decoded like any other."""
        path = "/api/handles" if handle is None else handle_path(handle)
        return await self.request(method, base_url, path, params=params, headers=headers, data=body)

    async def get(self, base_url: str, handle: Handle | str, **kw: Any) -> Reply:
        return await self.request("GET", base_url, handle_path(handle), **kw)

    async def put(
        self,
        base_url: str,
        handle: Handle | str,
        values: list[dict[str, Any]],
        *,
        authorization: str,
        params: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        return await self.request(
            "PUT", base_url, handle_path(handle), params=params, authorization=authorization, body={"values": values}
        )

    async def delete(
        self,
        base_url: str,
        handle: Handle | str,
        *,
        authorization: str,
        params: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        return await self.request("DELETE", base_url, handle_path(handle), params=params, authorization=authorization)


class HttpTransport:
    """The resolver's transport (``resolver.walk.Transport``): the REST API over a ``HandleClient``,
    msgpack between nodes. ``params`` are added to every query (``idres resolve`` asks ``trace=true``)."""

    def __init__(self, client: HandleClient, *, params: Sequence[tuple[str, str]] = ()) -> None:
        self._client = client
        self._params = tuple(params)

    async def query(self, url: str, handle: str, timeout: float) -> tuple[int, Mapping[str, Any]]:
        reply = await self._client.get(url, handle, params=self._params, timeout=timeout)
        return reply.status, reply.body

    async def probe(self, url: str, timeout: float) -> bool:
        try:
            reply = await self._client.request("GET", url, "/healthz", timeout=timeout)
        except UpstreamError:
            return False
        return reply.status == 200
