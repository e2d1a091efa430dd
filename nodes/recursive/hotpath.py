"""The recursive node's GET handler: a cache hit answered with bytes encoded before, the rest resolved.

A hit for a query-less JSON GET is the figure ``python -m benchmarks resolve`` compares with a bare
aiohttp server returning pre-encoded bytes (DESIGN §6: at least 0.9 of its rate), so this handler
is written for it: no middleware, no ``web.AppKey`` lookups and as few calls as it takes.

1. ``Cache.served_bytes(raw path)``: the entry and JSON body kept for this path while the entry is
   fresh and not yet near expiry; the cache counts the hit. One dict lookup and a ``web.Response``.
2. Else, for a path parsed before (``HotPath.handles``), ``Cache.lookup``: a fresh ``Entry`` with a
   body already encoded for this media type is answered (and its body kept for step 1).
3. Else ``_get_slow``: credentials go to the owning primary (``forward``), the rest through the one
   way into the driver, ``RecursiveResolver.resolve_after_lookup`` (refresh, serve-stale, walks),
   with filters, ``trace`` and ``pretty`` as an authoritative node answers them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from nodes.recursive.config import RECURSIVE, RECURSIVE_CONFIG
from nodes.recursive.forward import forward
from nodes.shared.http_api import Handler, error_response, handle_from_path, query_bool, query_ints, respond
from nodes.shared.metrics import METRICS, NodeMetrics
from resolver.bodies import answer_body, not_found_body, values_not_found_body
from resolver.cache import Cache, Entry, Found
from resolver.codec import JSON, MSGPACK, choose_media_type, encode
from resolver.driver import Resolved
from resolver.errors import UpstreamError
from resolver.names import Handle, parse_handle
from resolver.records import filter_values

__all__ = ["HotPath", "get_handler"]

_CONTENT_TYPES = {JSON: "application/json; charset=utf-8", MSGPACK: MSGPACK}
_HEADERS = {media: {"Content-Type": content_type} for media, content_type in _CONTENT_TYPES.items()}
_JSON_HEADERS = _HEADERS[JSON]


class HotPath:
    """What the GET handler keeps between requests besides the cache: the identifiers it parsed, and
    its answers counted as plain integers.

    ``handles`` maps the raw path of a query-less GET to the identifier parsed from it the first time
    it was asked, and its cache key (``Handle.key`` builds a new string on each call); it is bounded
    like the cache and simply starts again when full. ``answers`` and ``not_found`` count the hits the
    handler answered itself; they are added to the Prometheus counters when ``/metrics`` is scraped.
    """

    __slots__ = ("answers", "handles", "limit", "not_found")

    def __init__(self, limit: int) -> None:
        self.handles: dict[str, tuple[Handle, str]] = {}  # raw path -> (identifier, its cache key)
        self.limit = limit
        self.answers = 0  # 200 answers served by the hot path since the last scrape
        self.not_found = 0  # and 404 ones

    def remember(self, raw: str, handle: Handle) -> None:
        if len(self.handles) >= self.limit:
            self.handles.clear()
        self.handles[raw] = (handle, handle.key)

    def flush_into(self, metrics: NodeMetrics) -> Callable[[], None]:
        answered, not_found = metrics.resolutions.labels("answer"), metrics.resolutions.labels("not_found")

        def flush() -> None:
            answers, self.answers = self.answers, 0
            missing, self.not_found = self.not_found, 0
            if answers:
                answered.inc(answers)
                metrics.count_request("GET", 200, answers)
            if missing:
                not_found.inc(missing)
                metrics.count_request("GET", 404, missing)

        return flush


def get_handler(cache: Cache, hot: HotPath, metrics: NodeMetrics) -> Handler:
    """The GET /api/handles/{handle} handler over ``cache`` (the one the application's driver uses).
    It maps errors and counts requests itself, as ``guarded`` does for the other handlers."""
    served_bytes, lookup, keep_bytes, handles = cache.served_bytes, cache.lookup, cache.keep_bytes, hot.handles

    async def get_handle(request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        headers = request.headers
        handle: Handle | None = None
        found: Found | None = None
        if "Authorization" not in headers:  # credentials always go to the owning primary
            accept = headers.get("Accept")
            media = JSON if accept is None else choose_media_type(accept)
            if media == JSON:
                served = served_bytes(raw)  # only query-less paths are kept there
                if served is not None:
                    if served[0].values is None:
                        hot.not_found += 1
                        return web.Response(body=served[1], status=404, headers=_JSON_HEADERS)
                    hot.answers += 1
                    return web.Response(body=served[1], headers=_JSON_HEADERS)
            known = handles.get(raw)  # only query-less paths are kept there
            if known is not None:
                handle, key = known
                found = lookup(key)
                if type(found) is Entry:  # fresh: Refresh, Stale and misses go to the driver
                    body = found.encoded.get((handle.text, media))
                    if body is not None:  # encoded for the first client that asked this way
                        if media == JSON:
                            keep_bytes(raw, found, body)
                        if found.values is None:
                            hot.not_found += 1
                            return web.Response(body=body, status=404, headers=_HEADERS[media])
                        hot.answers += 1
                        return web.Response(body=body, headers=_HEADERS[media])
        try:
            response = await _get_slow(request, cache, hot, handle, found)
        except Exception as exc:
            mapped = error_response(request, exc)
            if mapped is None:
                raise
            response = mapped
        metrics.count_request(request.method, response.status)
        return response

    return get_handle


async def _get_slow(
    request: web.Request, cache: Cache, hot: HotPath, known: Handle | None, found: Found | None
) -> web.StreamResponse:
    """Every GET the hot path did not answer. ``known`` is set when the hot path had parsed the path
    before and looked in the cache; ``found`` is then what it found."""
    handle = known
    if handle is None:
        handle = parse_handle(handle_from_path(request))
        if "Authorization" in request.headers or query_bool(request, "auth"):
            return await forward(request, handle, body=None)
        found = cache.lookup(handle.key)
    outcomes = request.app[METRICS].resolutions
    try:
        resolved = await request.app[RECURSIVE].resolve_after_lookup(handle, found)
    except UpstreamError:
        outcomes.labels("error").inc()
        raise
    entry = resolved.entry
    outcomes.labels("stale" if resolved.cache == "stale" else "not_found" if entry.values is None else "answer").inc()
    text = handle.text
    types, indexes = request.query.getall("type", []), query_ints(request, "index")
    trace = query_bool(request, "trace")
    if not (types or indexes or trace):
        media = choose_media_type(request.headers.get("Accept"))
        status = 404 if entry.values is None else 200
        if media == JSON and query_bool(request, "pretty"):
            return respond(request, status, _body_of(text, entry))
        body = entry.encoded.get((text, media))
        if body is None:  # encoded for the first client that asks this way; later hits reuse the bytes
            body = entry.encoded[(text, media)] = encode(_body_of(text, entry), media)
        raw = request.raw_path
        if "?" not in raw:
            if known is None:
                hot.remember(raw, handle)
            if media == JSON:
                cache.keep_bytes(raw, entry, body)  # the next hit is served from it at once
        return web.Response(body=body, status=status, headers=_HEADERS[media])
    if entry.values is None:
        status, payload = 404, not_found_body(text)
    elif types or indexes:
        selected = filter_values(entry.values, types, indexes)
        status, payload = 200, answer_body(text, selected) if selected else values_not_found_body(text)
    else:
        status, payload = 200, answer_body(text, entry.values)
    if trace:
        payload["trace"] = _trace(request, resolved)
    return respond(request, status, payload)


def _body_of(text: str, entry: Entry) -> dict[str, Any]:
    return not_found_body(text) if entry.values is None else answer_body(text, entry.values)


def _trace(request: web.Request, resolved: Resolved) -> list[dict[str, Any]]:
    spec = request.app[RECURSIVE_CONFIG].spec
    if resolved.cache != "miss":
        return [{"node": spec.name, "address": spec.url, "ms": 0.0, "cache": resolved.cache}]
    return [
        {
            "node": hop.description or hop.url,
            "address": hop.url,
            "ms": round(hop.ms, 3),
            "cache": "miss",
            "outcome": hop.outcome,
            **({"detail": hop.detail} if hop.detail else {}),
        }
        for hop in resolved.hops
    ]
