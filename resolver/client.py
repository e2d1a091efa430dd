"""An async HANDLE.NET REST client over aiohttp that can follow referrals down the node tree."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from resolver.codec import MSGPACK, decode, encode
from resolver.errors import HandleError, UpstreamError
from resolver.sites import site_servers
from resolver.values import value_from_wire

__all__ = ["HandleClient", "Hop", "Reply", "Resolution", "basic_auth", "error_reason"]

# Handle suffixes may hold any printable character; keep "/" readable, encode the rest that URLs need.
_SAFE = "/:@!$&'()*+,;=-._~"
# Each referral is one level of the tree; HANDLE.NET's own resolver gives up after 40 steps.
MAX_REFERRALS = 16
DEFAULT_TIMEOUT = 5.0


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


@dataclass(frozen=True, slots=True)
class Hop:
    url: str
    status: int
    response_code: int
    ms: float
    description: str = ""


@dataclass(slots=True)
class Resolution:
    reply: Reply
    hops: list[Hop] = field(default_factory=list)


# Response headers a forwarded answer keeps: its encoding, and the challenge a 401 must carry.
_PASSED_BACK = ("Content-Type", "WWW-Authenticate", "Location")


def error_reason(exc: BaseException) -> str:
    """A short reason for a failed HTTP exchange, for messages that list what each server said."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    return str(exc) or type(exc).__name__


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
            raise UpstreamError(f"{method} {url} failed", attempts=[(base_url, error_reason(exc))]) from exc

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
            raise UpstreamError(f"{method} {url} failed", attempts=[(base_url, error_reason(exc))]) from exc

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

    async def resolve(
        self,
        handle: str,
        start_urls: Sequence[str],
        *,
        params: Sequence[tuple[str, str]] = (),
        authorization: str | None = None,
    ) -> Resolution:
        """Ask ``start_urls`` (in order, the next one if a node cannot be reached) and follow referrals
        (HTTP 300, responseCode 303) down to the node that answers; every hop is recorded."""
        hops: list[Hop] = []
        candidates: list[tuple[str, str]] = [(url, "") for url in start_urls]
        seen: set[str] = set()
        for _ in range(MAX_REFERRALS):
            attempts: list[tuple[str, str]] = []
            reply: Reply | None = None
            for url, description in candidates:
                started = time.perf_counter()
                try:
                    reply = await self.get(url, handle, params=params, authorization=authorization)
                except UpstreamError as exc:
                    attempts.extend(exc.attempts)
                    hops.append(Hop(url, 0, 2, (time.perf_counter() - started) * 1000, description))
                    continue
                hops.append(
                    Hop(url, reply.status, reply.response_code, (time.perf_counter() - started) * 1000, description)
                )
                if reply.status >= 500:
                    attempts.append((url, f"HTTP {reply.status}: {reply.body.get('message', '')}"))
                    reply = None
                    continue
                break
            if reply is None:
                raise UpstreamError(f"no node could be reached for {handle}", handle=handle, attempts=attempts)
            if reply.status != 300 or reply.response_code != 303:
                return Resolution(reply, hops)
            now = int(time.time())
            sites = [value_from_wire(v, position=i + 1, now=now) for i, v in enumerate(reply.body.get("values", []))]
            servers = [s for s in site_servers(sites) if s.url not in seen]
            if not servers:
                raise UpstreamError(
                    f"the referral for {handle} names no server that was not tried already",
                    handle=handle,
                    attempts=[(hops[-1].url, "referral loop or empty referral")],
                )
            seen.update(s.url for s in servers)
            candidates = [(s.url, s.description) for s in servers]
        raise UpstreamError(f"more than {MAX_REFERRALS} referrals for {handle}", handle=handle)
