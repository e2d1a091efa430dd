"""The HANDLE.NET REST client over aiohttp, and the resolver's HTTP transport built on it.

This is where aiohttp, socket and timeout errors of an exchange with another node enter the service:
they are translated here, once, into an ``UpstreamError`` whose one ``Attempt`` carries the
``FailureKind`` (cannot connect, timed out, connection lost, bad answer) and a short reason.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from resolver.codec import MSGPACK, decode, encode
from resolver.errors import FailureKind, HandleError, UpstreamError

__all__ = ["DEFAULT_TIMEOUT", "HandleClient", "HttpTransport", "Reply", "basic_auth", "describe_failure"]

# Handle suffixes may hold any printable character; keep "/" readable, encode the rest that URLs need.
_SAFE = "/:@!$&'()*+,;=-._~"
DEFAULT_TIMEOUT = 5.0  # seconds for one exchange; callers with a budget (the resolver) pass their own


def basic_auth(identity: str, secret: str) -> str:
    """HANDLE.NET Basic credentials: ``INDEX%3AHANDLE:secret`` (the colon in the user percent-encoded)."""
    user = quote(identity, safe="/")
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def response_code(self) -> int:
        code = self.body.get("responseCode", 2)
        return code if isinstance(code, int) else 2


# Response headers a forwarded answer keeps: its encoding, and the challenge a 401 must carry.
_PASSED_BACK = ("Content-Type", "WWW-Authenticate", "Location")


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


def _upstream_error(method: str, url: str, server: str, exc: BaseException) -> UpstreamError:
    kind, reason = describe_failure(exc)
    return UpstreamError.one(server, kind, reason, what=f"{method} {url}")


class HandleClient:
    """Speaks to nodes with msgpack (DESIGN §4: nodes use msgpack between themselves)."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | Mapping[str, str] = (),
        authorization: str | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Reply:
        headers = {"Accept": MSGPACK}
        if authorization:
            headers["Authorization"] = authorization
        data = None
        if body is not None:
            headers["Content-Type"] = MSGPACK
            data = encode(body, MSGPACK)
        url = base_url.rstrip("/") + path
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                headers=headers,
                data=data,
                timeout=self._timeout if timeout is None else aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                media = MSGPACK if resp.content_type == MSGPACK else "application/json"
                try:
                    parsed = decode(raw, media) if raw else {}
                except HandleError:
                    parsed = {"responseCode": 2, "message": raw[:200].decode("utf-8", "replace")}
                return Reply(resp.status, parsed if isinstance(parsed, dict) else {"responseCode": 2})
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _upstream_error(method, url, base_url, exc) from exc

    async def forward(
        self, method: str, base_url: str, path_qs: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        """Pass a client's request through unchanged: (status, the headers worth passing back, body)."""
        url = base_url.rstrip("/") + path_qs
        try:
            async with self._session.request(
                method, url, headers=headers, data=body, timeout=self._timeout, allow_redirects=False
            ) as resp:
                passed = {k: resp.headers[k] for k in _PASSED_BACK if k in resp.headers}
                passed.setdefault("Content-Type", "application/json")
                return resp.status, passed, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _upstream_error(method, url, base_url, exc) from exc

    async def get(self, base_url: str, handle: str, **kw: Any) -> Reply:
        return await self.request("GET", base_url, "/api/handles/" + quote(handle, safe=_SAFE), **kw)

    async def put(
        self,
        base_url: str,
        handle: str,
        values: list[dict[str, Any]],
        *,
        authorization: str,
        params: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        return await self.request(
            "PUT",
            base_url,
            "/api/handles/" + quote(handle, safe=_SAFE),
            params=params,
            authorization=authorization,
            body={"values": values},
        )

    async def delete(
        self, base_url: str, handle: str, *, authorization: str, params: Sequence[tuple[str, str]] = ()
    ) -> Reply:
        return await self.request(
            "DELETE", base_url, "/api/handles/" + quote(handle, safe=_SAFE), params=params, authorization=authorization
        )


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
