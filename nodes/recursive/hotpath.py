"""The recursive node's GET handler: a cache hit answered with bytes encoded before, the rest resolved.

A hit for a query-less JSON GET is the figure ``python -m benchmarks resolve`` compares with a bare
aiohttp server returning pre-encoded bytes (DESIGN §6: at least 0.9 of its rate), so this handler
is written for it: no middleware, no ``web.AppKey`` lookups and as few calls as it takes.

1. A path with no query and no percent escape carries the identifier exactly as the client sent it
   after ``/api/handles/`` (what ``handle_from_path`` would decode it to). When that text is a cache
   key itself (the canonical spelling, as nearly every client sends it), ``Cache.served_bytes(text)``
   gives the JSON body stored for it while the entry is fresh and not yet near expiry, and the cache
   counts the hit: one dict lookup and a ``web.Response``. Nothing is kept per path.
2. Else ``_get_slow``: credentials go to the owning primary (``forward``), the rest through
   ``Cache.lookup`` and the one way into the driver, ``RecursiveResolver.resolve_after_lookup``
   (refresh, serve-stale, walks), with filters, ``trace`` and ``pretty`` as an authoritative node
   answers them; other media types and spellings get their body from ``Cache.encoded``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from nodes.recursive.config import RECURSIVE, RECURSIVE_CONFIG
from nodes.recursive.forward import forward
from nodes.shared.access_log import CACHE, HOPS, RESPONSE_CODE, STARTED
from nodes.shared.gc_pauses import collector_pauses
from nodes.shared.http_api import (
    HANDLES_PATH,
    Handler,
    error_response,
    handle_from_path,
    query_bool,
    query_ints,
    respond,
)
from nodes.shared.metrics import METRICS, NodeMetrics
from resolver.bodies import answer_body, not_found_body, values_not_found_body
from resolver.cache import Cache, Entry
from resolver.codec import JSON, MSGPACK, choose_media_type
from resolver.driver import Resolved
from resolver.errors import HandleNotFound, UpstreamError
from resolver.names import parse_handle
from resolver.records import filter_values
from resolver.resolution import Hop, ResolutionFailed

__all__ = ["HotPath", "freeze_startup_objects", "get_handler"]

_CONTENT_TYPES = {JSON: "application/json; charset=utf-8", MSGPACK: MSGPACK}
_HEADERS = {media: {"Content-Type": content_type} for media, content_type in _CONTENT_TYPES.items()}
_JSON_HEADERS = _HEADERS[JSON]
_TAIL = len(HANDLES_PATH)  # where the identifier starts in the raw path


class HotPath:
    """What the GET handler counts between scrapes: its answers, as plain integers added to the
    Prometheus counters when ``/metrics`` is scraped (a labelled counter costs a hit a microsecond).
    It keeps nothing per path: the cache serves by the identifier's text itself (issue 12)."""

    __slots__ = ("answers", "not_found")

    def __init__(self) -> None:
        self.answers = 0  # 200 answers served by the hot path since the last scrape
        self.not_found = 0  # and 404 ones

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


async def freeze_startup_objects(app: web.Application) -> None:
    """An ``on_startup`` callback, after the driver's cleanup context: hand every object the node
    built to start (modules, the application, the cache's own tables) to ``gc.freeze``, so that no
    collection walks them again. A held answer is invisible to the collector already
    (``resolver.cache``), but the tables holding a million of them the collector would walk entry
    by entry: 80-140 ms a full collection at a million answers, measured, where a frozen cache
    costs none. Frozen objects are never freed, which costs nothing here: they live as long as the
    process. Each worker process runs it for itself."""
    del app
    gc.collect()
    gc.freeze()
    collector_pauses()  # collections are timed from here on: the serving process's, not start-up's


def get_handler(cache: Cache, hot: HotPath, metrics: NodeMetrics) -> Handler:
    """The GET /api/handles/{handle} handler over ``cache`` (the one the application's driver uses).
    It maps errors and counts requests itself, as ``guarded`` does for the other handlers."""
    served_bytes = cache.served_bytes
    clock = time.perf_counter

    async def get_handle(request: web.Request) -> web.StreamResponse:
        request[STARTED] = clock()  # for the access log's duration, as the hit's marks below
        raw = request.raw_path
        headers = request.headers
        if "Authorization" not in headers and "%" not in raw and "?" not in raw:  # see step 1 above
            accept = headers.get("Accept")
            if accept is None or choose_media_type(accept) == JSON:
                served = served_bytes(raw[_TAIL:])
                if served is not None:
                    request[CACHE] = "hit"  # for the access log, as responseCode below
                    if served[1] == 404:
                        hot.not_found += 1
                        missing = web.Response(body=served[0], status=404, headers=_JSON_HEADERS)
                        missing[RESPONSE_CODE] = HandleNotFound.response_code
                        return missing
                    hot.answers += 1
                    answer = web.Response(body=served[0], headers=_JSON_HEADERS)
                    answer[RESPONSE_CODE] = 1
                    return answer
        try:
            response = await _get_slow(request, cache)
        except Exception as exc:
            mapped = error_response(request, exc)
            if mapped is None:
                raise
            response = mapped
        metrics.count_request(request.method, response.status)
        return response

    return get_handle


async def _get_slow(request: web.Request, cache: Cache) -> web.StreamResponse:
    """Every GET the hot path did not answer."""
    handle = parse_handle(handle_from_path(request))
    if "Authorization" in request.headers or query_bool(request, "auth"):
        return await forward(request, handle, body=None)
    found = cache.lookup(handle.key)
    outcomes = request.app[METRICS].resolutions
    try:
        resolved = await request.app[RECURSIVE].resolve_after_lookup(handle, found)
    except UpstreamError as exc:
        outcomes.labels("error").inc()
        asked = exc.hops if isinstance(exc, ResolutionFailed) else exc.attempts
        request[CACHE], request[HOPS] = "miss", len(asked)
        if isinstance(exc, ResolutionFailed) and query_bool(request, "trace"):
            # The error names every server asked too: error_response knows nothing of traces.
            return respond(request, exc.http_status, {**exc.to_body(), "trace": _hops(exc.hops)})
        raise
    request[CACHE], request[HOPS] = resolved.cache, len(resolved.hops)
    entry = resolved.entry
    outcomes.labels("stale" if resolved.cache == "stale" else "answer" if entry.exists else "not_found").inc()
    text = handle.text
    types, indexes = request.query.getall("type", []), query_ints(request, "index")
    trace = query_bool(request, "trace")
    if not (types or indexes or trace):
        media = choose_media_type(request.headers.get("Accept"))
        if media == JSON and query_bool(request, "pretty"):
            return respond(request, entry.status, _body_of(text, entry))
        response = web.Response(body=cache.encoded(entry, text, media), status=entry.status, headers=_HEADERS[media])
        response[RESPONSE_CODE] = 1 if entry.exists else HandleNotFound.response_code
        return response
    values = entry.values
    if values is None:
        status, payload = 404, not_found_body(text)
    elif types or indexes:
        selected = filter_values(values, types, indexes)
        status, payload = 200, answer_body(text, selected) if selected else values_not_found_body(text)
    else:
        status, payload = 200, answer_body(text, values)
    if trace:
        payload["trace"] = _trace(request, resolved)
    return respond(request, status, payload)


def _body_of(text: str, entry: Entry) -> dict[str, Any]:
    values = entry.values
    return not_found_body(text) if values is None else answer_body(text, values)


def _trace(request: web.Request, resolved: Resolved) -> list[dict[str, Any]]:
    spec = request.app[RECURSIVE_CONFIG].spec
    own = {"node": spec.name, "address": spec.url, "ms": 0.0, "cache": resolved.cache}
    if resolved.cache == "hit":
        return [own]
    hops = _hops(resolved.hops)
    # Served stale: first this node's expired entry that answered, then the tries that failed.
    return hops if resolved.cache == "miss" else [own, *hops]


def _hops(hops: tuple[Hop, ...]) -> list[dict[str, Any]]:
    """Each server asked, in order: for the trace of an answer, a "not found" and an error alike."""
    return [
        {
            "node": hop.description or hop.url,
            "address": hop.url,
            "ms": round(hop.ms, 3),
            "cache": "miss",
            "outcome": hop.outcome,
            **({"detail": hop.detail} if hop.detail else {}),
        }
        for hop in hops
    ]
