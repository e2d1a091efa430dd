"""The public recursive node's aiohttp application: resolves any identifier through the tree, cached.

Reads answer like an authoritative node (200 with the record, 404/100 when it does not exist) from
the cache when they can; ``auth=true`` or credentials bypass the cache and ask the owning node's
primary; writes are forwarded to that primary with the client's credentials and invalidate the
cached entry. A cache hit without filters is one dict lookup for pre-encoded bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from nodes.shared.http_api import (
    Handler,
    error_response,
    guarded,
    handle_from_path,
    query_bool,
    query_ints,
    read_bytes,
    respond,
)
from nodes.shared.metrics import METRICS, NodeMetrics, counter, gauge, metrics_handler
from resolver.cache import DEFAULT_CACHE_CONFIG, Cache, CacheConfig, Entry, Freshness
from resolver.client import HandleClient
from resolver.codec import JSON, MSGPACK, choose_media_type, decode, encode
from resolver.config import DEFAULT_LIMITS, Limits, NodeSpec, Topology
from resolver.driver import HttpTransport, RecursiveResolver, Resolved
from resolver.errors import HandleError, ProtocolError, ReadOnly, UpstreamError
from resolver.names import Handle, parse_handle, parse_prefix
from resolver.records import filter_values
from resolver.sites import SiteServer
from resolver.upstream import DEFAULT_UPSTREAM_CONFIG, UpstreamConfig, Upstreams
from resolver.values import value_to_wire

__all__ = ["RecursiveConfig", "create_recursive_app", "root_servers"]

_CONTENT_TYPES = {JSON: "application/json; charset=utf-8", MSGPACK: MSGPACK}
_HEADERS = {media: {"Content-Type": content_type} for media, content_type in _CONTENT_TYPES.items()}
_PREFETCH, _STALE = Freshness.PREFETCH, Freshness.STALE  # an enum member read via its class costs 100 ns
# Headers a forwarded request keeps: what the authoritative node needs to authenticate and decode.
_FORWARDED = ("Authorization", "Content-Type", "Accept")


@dataclass(frozen=True, slots=True)
class RecursiveConfig:
    spec: NodeSpec
    topology: Topology
    cache: CacheConfig = DEFAULT_CACHE_CONFIG
    upstream: UpstreamConfig = DEFAULT_UPSTREAM_CONFIG
    limits: Limits = DEFAULT_LIMITS


RECURSIVE_CONFIG: web.AppKey[RecursiveConfig] = web.AppKey("recursive_config")
RECURSIVE: web.AppKey[RecursiveResolver] = web.AppKey("recursive")
CLIENT: web.AppKey[HandleClient] = web.AppKey("client")


def root_servers(topology: Topology, spec: NodeSpec) -> list[SiteServer]:
    """The root hints: the named top-level nodes (all of them when none are named), primaries first."""
    nodes = [topology.node(n) for n in spec.root_hints] if spec.root_hints else topology.roots()
    return [SiteServer(n.url, not n.is_mirror, n.description or n.name) for n in nodes]


def _record_body(text: str, entry: Entry) -> tuple[int, dict[str, Any]]:
    if entry.values is None:
        return 404, {"responseCode": 100, "handle": text, "message": "Handle Not Found"}
    return 200, {"responseCode": 1, "handle": text, "values": [value_to_wire(v) for v in entry.values]}


async def _handle(request: web.Request) -> Handle:
    return parse_handle(handle_from_path(request))


class _HotPath:
    """What a cache hit needs, gathered once so the GET handler reaches it without app lookups.

    ``handles`` maps the raw path of a query-less GET to the identifier parsed from it the first time
    it was asked: a hit then costs a dict lookup, the cache lookup and a ``web.Response`` of
    pre-encoded bytes. ``fresh`` goes one step further for JSON answers: raw path -> (cache entry,
    body), served without the cache lookup while the entry is ``live`` and before its
    ``prefetch_at`` (after that the lookup decides: prefetch, expiry); the hit is counted on the entry
    (so the LRU order still sees it, ``Cache.count_fresh_hits``). Measured on the 100,000-identifier
    hot-cache benchmark, that lookup and its LRU bookkeeping were a tenth of a hit's cost. Both maps are
    bounded like the cache and simply start again when full. The hits are tallied as plain integers
    and added to the Prometheus counters when ``/metrics`` is scraped.
    """

    __slots__ = (
        "answers", "cache", "clock", "fresh", "fresh_answers", "fresh_not_found", "handles", "limit", "not_found",
        "resolver",
    )  # fmt: skip

    def __init__(self, limit: int) -> None:
        self.resolver: RecursiveResolver | None = None  # set when the application starts
        self.cache: Cache | None = None  # the resolver's
        self.clock: Callable[[], float] = time.monotonic  # the cache's, once it is known
        self.handles: dict[str, tuple[Handle, str]] = {}  # raw path -> (identifier, its cache key)
        self.fresh: dict[str, tuple[Entry, bytes]] = {}  # raw path -> (entry, its JSON body)
        self.limit = limit
        self.answers = 0  # 200 answers served by the hot path since the last scrape
        self.not_found = 0  # and 404 ones
        self.fresh_answers = 0  # and the same served from ``fresh``: one integer to add per request
        self.fresh_not_found = 0

    def remember(self, raw: str, entry: Entry, body: bytes) -> None:
        if len(self.fresh) >= self.limit:
            self.fresh.clear()
        self.fresh[raw] = (entry, body)

    def flush_into(self, metrics: NodeMetrics) -> Callable[[], None]:
        answered, not_found = metrics.resolutions.labels("answer"), metrics.resolutions.labels("not_found")

        def flush() -> None:
            fresh_answers, fresh_not_found = self.fresh_answers, self.fresh_not_found
            self.fresh_answers = self.fresh_not_found = 0
            if (fresh_answers or fresh_not_found) and self.cache is not None:
                self.cache.count_fresh_hits(fresh_answers + fresh_not_found, fresh_not_found)
            answers, self.answers = self.answers + fresh_answers, 0
            missing, self.not_found = self.not_found + fresh_not_found, 0
            if answers:
                answered.inc(answers)
                metrics.count_request("GET", 200, answers)
            if missing:
                not_found.inc(missing)
                metrics.count_request("GET", 404, missing)

        return flush


def _get_handler(hot: _HotPath, metrics: NodeMetrics) -> Handler:
    async def get_handle(request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        headers = request.headers
        fresh = hot.fresh.get(raw)  # only query-less paths are kept there
        if fresh is not None and "Authorization" not in headers:
            held, answer = fresh
            accept = headers.get("Accept")
            if held.live and hot.clock() < held.prefetch_at and (accept is None or choose_media_type(accept) == JSON):
                held.hits += 1
                if held.values is not None:
                    hot.fresh_answers += 1
                    return web.Response(body=answer, headers=_HEADERS[JSON])
                hot.fresh_not_found += 1
                return web.Response(body=answer, status=404, headers=_HEADERS[JSON])
        known = hot.handles.get(raw)  # only query-less paths are kept there
        handle: Handle | None = None
        entry: Entry | None = None
        usable = False
        if known is not None and "Authorization" not in headers:
            assert hot.cache is not None and hot.resolver is not None
            handle, key = known
            # RecursiveResolver.lookup() inlined: this is the one place where a call matters.
            hit = hot.cache.lookup(key)
            if hit is not None:
                entry, freshness = hit
                if freshness is _PREFETCH:
                    hot.resolver.prefetch(handle)
                usable = freshness is not _STALE
            if usable:
                assert entry is not None
                accept = headers.get("Accept")
                media = JSON if accept is None else choose_media_type(accept)
                body = entry.encoded.get((handle.text, media))
                if body is not None:
                    # The hot path: the bytes were encoded for the first client that asked this way.
                    if media == JSON:
                        hot.remember(raw, entry, body)
                    if entry.values is None:
                        hot.not_found += 1
                        return web.Response(body=body, status=404, headers=_HEADERS[media])
                    hot.answers += 1
                    return web.Response(body=body, headers=_HEADERS[media])
        try:
            response = await _get_slow(request, hot, handle, entry, usable)
        except Exception as exc:
            mapped = error_response(request, exc)
            if mapped is None:
                raise
            response = mapped
        metrics.count_request(request.method, response.status)
        return response

    return get_handle


async def _get_slow(
    request: web.Request, hot: _HotPath, known: Handle | None, entry: Entry | None, usable: bool
) -> web.StreamResponse:
    """Every GET the hot path did not answer; ``known`` is set when it already looked in the cache."""
    handle = known if known is not None else await _handle(request)
    if "Authorization" in request.headers or query_bool(request, "auth"):
        return await _forward(request, handle, body=None)
    resolver = request.app[RECURSIVE]
    outcomes = request.app[METRICS].resolutions
    try:
        if known is None:
            resolved = await resolver.resolve(handle)
        elif usable:
            assert entry is not None
            resolved = Resolved(entry, "hit")
        else:
            resolved = await resolver.fetch(handle, entry)
    except UpstreamError:
        outcomes.labels("error").inc()
        raise
    entry = resolved.entry
    outcomes.labels("stale" if resolved.cache == "stale" else "not_found" if entry.values is None else "answer").inc()
    types, indexes = request.query.getall("type", []), query_ints(request, "index")
    trace = query_bool(request, "trace")
    if not (types or indexes or trace):
        media = choose_media_type(request.headers.get("Accept"))
        status = 404 if entry.values is None else 200
        if media == JSON and query_bool(request, "pretty"):
            return respond(request, status, _record_body(handle.text, entry)[1])
        body = entry.encoded.get((handle.text, media))
        if body is None:  # encoded for the first client that asks this way; later hits reuse the bytes
            body = entry.encoded[(handle.text, media)] = encode(_record_body(handle.text, entry)[1], media)
        raw = request.raw_path
        if known is None and "?" not in raw:
            if len(hot.handles) >= hot.limit:
                hot.handles.clear()
            hot.handles[raw] = (handle, handle.key)
            if media == JSON and entry.live:  # the next hit is served from it at once
                hot.remember(raw, entry, body)
        return web.Response(body=body, status=status, headers=_HEADERS[media])
    status, payload = _record_body(handle.text, entry)
    if entry.values is not None and (types or indexes):
        selected = filter_values(entry.values, types, indexes)
        payload["values"] = [value_to_wire(v) for v in selected]
        if not selected:
            payload.update(responseCode=200, message="no value matches the type or index given")
    if trace:
        payload["trace"] = _trace(request, resolved)
    return respond(request, status, payload)


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


async def _forward(request: web.Request, route: Handle, body: bytes | None) -> web.Response:
    """Send the client's request, credentials included, to the primary of the node owning ``route``."""
    resolver = request.app[RECURSIVE]
    located = await resolver.locate(route)
    headers = {k: request.headers[k] for k in _FORWARDED if k in request.headers}
    attempts: list[tuple[str, str]] = []
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
            attempts.append((server.url, "read-only (a mirror)"))
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
        return await _forward(request, route, body)
    finally:
        # Even a failed or lost answer may hide a committed write: never keep serving the old record.
        request.app[RECURSIVE].invalidate(route)


async def list_handles(request: web.Request) -> web.Response:
    prefix = request.query.get("prefix")
    if not prefix:
        raise ProtocolError("listing needs ?prefix=PREFIX")
    return await _forward(request, parse_handle(f"{parse_prefix(prefix)}/X"), body=None)


async def healthz(request: web.Request) -> web.Response:
    config = request.app[RECURSIVE_CONFIG]
    resolver = request.app[RECURSIVE]
    return respond(
        request,
        200,
        {
            "status": "ok",
            "node": config.spec.name,
            "role": "recursive",
            "roots": [s.url for s in resolver.roots],
            "cacheEntries": len(resolver.cache),
            "down": resolver.upstreams.down_servers(),
        },
    )


def _cache_metrics(app: web.Application) -> Iterable[Metric]:
    resolver = app.get(RECURSIVE)
    if resolver is None:
        return
    for name, value in resolver.cache.stats.as_dict().items():
        yield counter(f"idres_cache_{name}", f"Recursive cache: {name.replace('_', ' ')}", value)
    yield gauge("idres_cache_entries", "Entries in the recursive cache", len(resolver.cache))
    # One family per metric with a sample per server (a family repeated per server is invalid).
    srtt = GaugeMetricFamily("idres_upstream_srtt_seconds", "Smoothed round-trip time by server", labels=["server"])
    down = GaugeMetricFamily("idres_upstream_down", "1 while a server is marked down", labels=["server"])
    for url, health in resolver.upstreams.snapshot().items():
        srtt.add_metric([url], health.srtt)
        down.add_metric([url], 1.0 if health.down else 0.0)
    yield srtt
    yield down


async def _resolver_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[RECURSIVE_CONFIG]
    metrics = app[METRICS]
    # Keep-alive connections to every upstream; the per-try timeouts come from the resolution.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, limit_per_host=64))
    client = HandleClient(session)

    def on_query(url: str, seconds: float, ok: bool) -> None:
        metrics.upstream_rtt.labels(url).observe(seconds)
        if not ok:
            metrics.upstream_failures.labels(url).inc()

    resolver = RecursiveResolver(
        root_servers(config.topology, config.spec),
        HttpTransport(client),
        cache=Cache(config.cache),
        upstreams=Upstreams(config.upstream),
        on_query=on_query,
    )
    app[RECURSIVE] = resolver
    app[CLIENT] = client
    probes = asyncio.create_task(resolver.probe_forever())
    try:
        yield
    finally:
        probes.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probes
        await resolver.close()
        await session.close()


async def _no_such_route(request: web.Request) -> web.StreamResponse:
    """What the router found nothing for: 405 with the allowed methods when the path exists, else
    "Unknown HTTP API endpoint" (the answers ``error_middleware`` gives on authoritative nodes)."""
    allowed: set[str] = set()
    this = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not this:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def create_recursive_app(config: RecursiveConfig) -> web.Application:
    # No aiohttp middleware: each layer costs a cache hit about 3 us of its 60 (benchmarks/resolve.py).
    # Every handler is ``guarded`` instead (error mapping and request counting, as the middlewares
    # do on authoritative nodes); the GET handler does both itself, after its hot path.
    app = web.Application(client_max_size=config.limits.max_body_bytes)
    app[RECURSIVE_CONFIG] = config
    app[METRICS] = metrics = NodeMetrics(config.spec.name, "recursive")
    metrics.add_source(lambda: _cache_metrics(app))
    hot = _HotPath(config.cache.max_entries)
    metrics.add_flush(hot.flush_into(metrics))

    async def hot_path_ctx(app: web.Application) -> AsyncIterator[None]:
        hot.resolver = app[RECURSIVE]
        hot.cache = hot.resolver.cache
        hot.clock = hot.cache.clock
        yield

    app.cleanup_ctx.append(_resolver_ctx)
    app.cleanup_ctx.append(hot_path_ctx)

    def route(handler: Handler) -> Handler:
        return guarded(handler, metrics.count_request)

    # The identifier route first: the router tries the resources sharing a path prefix in the order
    # they were added, so a resolution does not test the listing route's path first.
    app.router.add_route("GET", "/api/handles/{handle:.+}", _get_handler(hot, metrics))
    app.router.add_route("PUT", "/api/handles/{handle:.+}", route(write_handle))
    app.router.add_route("DELETE", "/api/handles/{handle:.+}", route(write_handle))
    app.router.add_get("/api/handles", route(list_handles))
    app.router.add_get("/api/handles/", route(list_handles))
    app.router.add_get("/healthz", route(healthz))
    app.router.add_get("/metrics", route(metrics_handler))
    app.router.add_route("*", "/{tail:.*}", route(_no_such_route))
    return app
