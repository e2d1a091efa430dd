"""The public recursive node's aiohttp application: resolves any identifier through the tree, cached.

Reads answer like an authoritative node (200 with the record, 404/100 when it does not exist) from
the cache when they can; ``auth=true`` or credentials bypass the cache and ask the owning node's
primary; writes are forwarded to that primary with the client's credentials and invalidate the
cached entry. A cache hit without filters is one dict lookup for pre-encoded bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from nodes.http import error_middleware, handle_from_path, query_bool, query_ints, read_bytes, respond
from nodes.keys import CLIENT, METRICS, RECURSIVE, RECURSIVE_CONFIG
from nodes.metrics import NodeMetrics, count_requests, counter, gauge, metrics_handler
from resolver.cache import DEFAULT_CACHE_CONFIG, Cache, CacheConfig, Entry
from resolver.client import HandleClient
from resolver.codec import JSON, MSGPACK, choose_media_type, decode, encode
from resolver.config import DEFAULT_LIMITS, Limits, NodeSpec, Topology
from resolver.driver import HttpTransport, RecursiveResolver, Resolved
from resolver.errors import HandleError, InvalidHandle, ProtocolError, ReadOnly, UpstreamError
from resolver.names import Handle, parse_handle, parse_prefix
from resolver.records import filter_values
from resolver.sites import SiteServer
from resolver.upstream import DEFAULT_UPSTREAM_CONFIG, UpstreamConfig, Upstreams
from resolver.values import value_to_wire

__all__ = ["RecursiveConfig", "create_recursive_app", "root_servers"]

API = "/api/handles/"
_CONTENT_TYPES = {JSON: "application/json; charset=utf-8", MSGPACK: MSGPACK}
# Headers a forwarded request keeps: what the authoritative node needs to authenticate and decode.
_FORWARDED = ("Authorization", "Content-Type", "Accept")


@dataclass(frozen=True, slots=True)
class RecursiveConfig:
    spec: NodeSpec
    topology: Topology
    cache: CacheConfig = DEFAULT_CACHE_CONFIG
    upstream: UpstreamConfig = DEFAULT_UPSTREAM_CONFIG
    limits: Limits = DEFAULT_LIMITS


def root_servers(topology: Topology, spec: NodeSpec) -> list[SiteServer]:
    """The root hints: the named top-level nodes (all of them when none are named), primaries first."""
    nodes = [topology.node(n) for n in spec.root_hints] if spec.root_hints else topology.roots()
    return [SiteServer(n.url, not n.is_mirror, n.description or n.name) for n in nodes]


def _record_body(text: str, entry: Entry) -> tuple[int, dict[str, Any]]:
    if entry.values is None:
        return 404, {"responseCode": 100, "handle": text, "message": "Handle Not Found"}
    return 200, {"responseCode": 1, "handle": text, "values": [value_to_wire(v) for v in entry.values]}


async def _handle(request: web.Request) -> Handle:
    try:
        text = handle_from_path(request, API)
    except UnicodeDecodeError as exc:
        raise InvalidHandle("the handle in the path is not valid percent-encoded UTF-8") from exc
    return parse_handle(text)


async def get_handle(request: web.Request) -> web.StreamResponse:
    handle = await _handle(request)
    if "Authorization" in request.headers or query_bool(request, "auth"):
        return await _forward(request, handle, body=None)
    resolver = request.app[RECURSIVE]
    outcomes = request.app[METRICS].resolutions
    try:
        resolved = await resolver.resolve(handle)
    except UpstreamError:
        outcomes.labels("error").inc()
        raise
    entry = resolved.entry
    outcomes.labels("stale" if resolved.cache == "stale" else "not_found" if entry.values is None else "answer").inc()
    types, indexes = request.query.getall("type", []), query_ints(request, "index")
    trace = query_bool(request, "trace")
    if not (types or indexes or trace or "pretty" in request.query):
        # The hot path: the bytes were encoded for the first client that asked this way.
        media = choose_media_type(request.headers.get("Accept"))
        body = entry.encoded.get((handle.text, media))
        if body is None:
            status, payload = _record_body(handle.text, entry)
            body = entry.encoded[(handle.text, media)] = encode(payload, media)
        return web.Response(
            body=body, status=404 if entry.values is None else 200, headers={"Content-Type": _CONTENT_TYPES[media]}
        )
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
    try:
        text = handle_from_path(request, API)
    except UnicodeDecodeError as exc:
        raise InvalidHandle("the handle in the path is not valid percent-encoded UTF-8") from exc
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


def create_recursive_app(config: RecursiveConfig) -> web.Application:
    app = web.Application(middlewares=[count_requests, error_middleware], client_max_size=config.limits.max_body_bytes)
    app[RECURSIVE_CONFIG] = config
    app[METRICS] = metrics = NodeMetrics(config.spec.name, "recursive")
    metrics.add_source(lambda: _cache_metrics(app))
    app.cleanup_ctx.append(_resolver_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/handles", list_handles)
    app.router.add_get("/api/handles/", list_handles)
    app.router.add_route("GET", "/api/handles/{handle:.+}", get_handle)
    app.router.add_route("PUT", "/api/handles/{handle:.+}", write_handle)
    app.router.add_route("DELETE", "/api/handles/{handle:.+}", write_handle)
    return app
