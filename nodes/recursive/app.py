"""The public recursive node's aiohttp application: resolves any identifier through the tree, cached.

Reads answer like an authoritative node (200 with the record, 404/100 when it does not exist) from
the cache when they can (``hotpath``); ``auth=true`` or credentials bypass the cache and ask the
owning node's primary, and writes are forwarded to that primary with the client's credentials and
invalidate the cached entry (``forward``). This module puts them together: the factory, the
driver's cleanup context, health and metrics, and the routes. A node run as several processes
(``workers = N``) answers ``/healthz`` and ``/metrics`` for all of them (``workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from nodes.recursive.config import CLIENT, RECURSIVE, RECURSIVE_CONFIG, RecursiveConfig
from nodes.recursive.forward import list_handles, write_handle
from nodes.recursive.hotpath import HotPath, freeze_startup_objects, get_handler
from nodes.recursive.workers import (
    WorkerSlot,
    health_answer,
    metrics_answer,
    node_healthz,
    node_metrics,
    siblings_ctx,
)
from nodes.shared.gc_pauses import collector_pauses
from nodes.shared.http_api import Handler, guarded, respond
from nodes.shared.metrics import METRICS, NodeMetrics, UpstreamMetrics, counter, gauge, metrics_handler
from nodes.shared.openapi import openapi_handler
from nodes.web import add_front_door, no_such_route, setup_cors
from nodes.web.recursive import recursive_lookup, recursive_topology
from resolver.cache import Cache
from resolver.client import HandleClient
from resolver.config import NodeSpec, Topology
from resolver.driver import RecursiveResolver
from resolver.http1 import ConnectionPool, PooledTransport
from resolver.sites import SiteServer
from resolver.tls import client_context, node_session
from resolver.upstream import Upstreams

__all__ = ["RecursiveConfig", "create_recursive_app", "root_servers"]

log = logging.getLogger("idres")


def root_servers(topology: Topology, spec: NodeSpec) -> list[SiteServer]:
    """The root hints: the named top-level nodes (all of them when none are named), primaries first."""
    nodes = [topology.node(n) for n in spec.root_hints] if spec.root_hints else topology.roots()
    return [SiteServer(n.url, not n.is_mirror, n.description or n.name) for n in nodes]


def _health(app: web.Application) -> dict[str, Any]:
    config = app[RECURSIVE_CONFIG]
    resolver = app[RECURSIVE]
    return {
        "status": "ok",
        "node": config.spec.name,
        "role": "recursive",
        "roots": [s.url for s in resolver.roots],
        "cacheEntries": len(resolver.cache),
        "down": resolver.upstreams.down_servers(),
    }


async def healthz(request: web.Request) -> web.Response:
    return respond(request, 200, _health(request.app))


def _cache_metrics(app: web.Application, upstream: UpstreamMetrics) -> Iterable[Metric]:
    resolver = app.get(RECURSIVE)
    if resolver is None:
        return
    for name, value in resolver.cache.stats.as_dict().items():
        yield counter(f"idres_cache_{name}", f"Recursive cache: {name.replace('_', ' ')}", value)
    yield gauge("idres_cache_entries", "Entries in the recursive cache", len(resolver.cache))
    # One family per metric with a sample per server (a family repeated per server is invalid), and
    # only for the servers with series of their own: the label set stays bounded (issue 11).
    labelled = upstream.labelled
    srtt = GaugeMetricFamily("idres_upstream_srtt_seconds", "Smoothed round-trip time by server", labels=["server"])
    down = GaugeMetricFamily("idres_upstream_down", "1 while a server is marked down", labels=["server"])
    health = resolver.upstreams.snapshot()
    for url, known in health.items():
        if labelled(url):
            srtt.add_metric([url], known.srtt)
            down.add_metric([url], 1.0 if known.down else 0.0)
    yield srtt
    yield down
    yield gauge("idres_upstream_servers", "Upstream servers tracked (asked lately, or root hints)", len(health))
    pauses = resolver.upstreams.pauses  # the node's own stalls, which never count against an upstream
    yield counter("idres_loop_pauses", "Times the event loop ran late by more than a few ms", pauses.count)
    yield counter("idres_loop_pause_seconds", "Seconds the event loop ran late, summed", pauses.total)
    yield gauge("idres_loop_pause_max_seconds", "The longest event-loop pause seen", pauses.worst)
    collections = collector_pauses()
    yield counter("idres_gc_pauses", "Garbage collections of this process", collections.count)
    yield counter("idres_gc_pause_seconds", "Seconds the garbage collector stopped this process", collections.total)
    yield gauge("idres_gc_pause_max_seconds", "The longest garbage collection", collections.worst)
    yield counter(
        "idres_upstream_timeouts_excused",
        "Timed-out upstream tries not held against the server: the node itself was paused",
        pauses.excused,
    )
    yield gauge(
        "idres_upstream_down_servers", "Tracked upstream servers marked down", sum(h.down for h in health.values())
    )


def _started(config: RecursiveConfig, roots: list[SiteServer], worker: WorkerSlot | None) -> str:
    """The line the node logs when it starts: what it listens on and where resolutions begin."""
    spec = config.spec
    which = f" (worker {worker.index} of {worker.count})" if worker is not None else ""
    hints = ", ".join(r.url if r.primary else f"{r.url} (mirror)" for r in roots) or "none"
    return (
        f"{spec.name} serving: recursive node on {spec.url}{which}; root hints: {hints}; cache up to "
        f"{config.cache.max_entries} answers; upstream deadline {config.upstream.deadline:g} s"
    )


def _resolver_ctx(
    cache: Cache, upstream: UpstreamMetrics, worker: WorkerSlot | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The driver over ``cache`` (which the GET handler reads directly), its HTTP client and the
    background probes of servers marked down, for as long as the application runs. Per-server state
    is bounded: the upstream table forgets servers (never the root hints) and their series go too."""

    async def resolver_ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[RECURSIVE_CONFIG]
        # Keep-alive connections to every upstream; the per-try timeouts come from the resolution.
        # Resolutions go through the lean pool (resolver.http1: a fraction of aiohttp's CPU a miss),
        # the writes and credentialed reads the node forwards through aiohttp's client.
        pool = ConnectionPool(client_context(config.topology.tls_ca), limit=256, limit_per_host=64)
        session = node_session(config.topology.tls_ca, limit=64, limit_per_host=16)
        client = HandleClient(session)

        roots = root_servers(config.topology, config.spec)
        upstreams = Upstreams(config.upstream, keep=[r.url for r in roots], on_forget=upstream.forget)
        resolver = RecursiveResolver(
            roots, PooledTransport(pool), cache=cache, upstreams=upstreams, on_query=upstream.observe
        )
        app[RECURSIVE] = resolver
        app[CLIENT] = client
        probes = asyncio.create_task(resolver.probe_forever())
        log.info("%s", _started(config, roots, worker))
        try:
            yield
        finally:
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            await resolver.close()
            await pool.close()
            await session.close()
            log.info("%s stopped: %d cached answers dropped", config.spec.name, len(cache))

    return resolver_ctx


def create_recursive_app(config: RecursiveConfig, worker: WorkerSlot | None = None) -> web.Application:
    """The node's application; ``worker``: this process is one of the node's several workers."""
    # No aiohttp middleware: each layer costs a cache hit about 3 us of its 60 (benchmarks/resolve.py).
    # Every handler is ``guarded`` instead (error mapping and request counting, as the middlewares
    # do on authoritative nodes); the GET handler does both itself, after its hot path.
    app = web.Application(client_max_size=config.limits.max_body_bytes)
    app[RECURSIVE_CONFIG] = config
    app[METRICS] = metrics = NodeMetrics(config.spec.name, "recursive")
    upstream = UpstreamMetrics(keep=[r.url for r in root_servers(config.topology, config.spec)])
    metrics.add_collector(upstream)
    metrics.add_source(lambda: _cache_metrics(app, upstream))
    # Made here rather than with the driver, so the GET handler holds it from the start.
    cache = Cache(config.cache)
    hot = HotPath()
    metrics.add_flush(hot.flush_into(metrics))
    app.cleanup_ctx.append(_resolver_ctx(cache, upstream, worker))
    # After the driver is built: what the node made to start is frozen, so no collection walks the
    # cache's tables while they fill (resolver.cache keeps each answer invisible to the collector).
    app.on_startup.append(freeze_startup_objects)
    health_route: Handler = healthz
    metrics_route: Handler = metrics_handler
    if worker is not None:
        own_health = health_answer(lambda: _health(app))
        app.cleanup_ctx.append(siblings_ctx(worker, {"health": own_health, "metrics": metrics_answer(metrics)}))
        health_route, metrics_route = node_healthz(worker, own_health), node_metrics(worker, metrics)

    def route(handler: Handler) -> Handler:
        return guarded(handler, metrics.count_request)

    # The identifier route first: the router tries the resources sharing a path prefix in the order
    # they were added, so a resolution does not test the listing route's path first.
    # [\s\S], not ".": a line break (%0A) in the path is an invalid handle (400), not an unknown endpoint.
    app.router.add_route("GET", r"/api/handles/{handle:[\s\S]+}", get_handler(cache, hot, metrics))
    app.router.add_route("PUT", r"/api/handles/{handle:[\s\S]+}", route(write_handle))
    app.router.add_route("DELETE", r"/api/handles/{handle:[\s\S]+}", route(write_handle))
    app.router.add_get("/api/handles", route(list_handles))
    app.router.add_get("/api/handles/", route(list_handles))
    app.router.add_get("/healthz", route(health_route))
    app.router.add_get("/metrics", route(metrics_route))
    app.router.add_get("/api/openapi.json", route(openapi_handler))
    # The pages and proxy redirects for people (issue 14): "/" and "/{identifier}", never "/api/...".
    add_front_door(app, recursive_lookup(app), recursive_topology(app), public_url=config.spec.public_url, wrap=route)
    app.router.add_route("*", r"/{tail:[\s\S]*}", route(no_such_route))  # after every other route
    setup_cors(app)  # last: HEAD beside each GET, OPTIONS on /api/, the CORS header
    return app
