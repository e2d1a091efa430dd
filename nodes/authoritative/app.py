"""The authoritative node's aiohttp application: top-level, secondary and enterprise are configurations."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from prometheus_client.metrics_core import Metric

from nodes.authoritative.authority import AUTHORITY, Answer, Authority
from nodes.authoritative.batch.endpoint import setup_batch
from nodes.authoritative.batch.workers import DEFAULT_WORKERS
from nodes.authoritative.config import CONFIG, AuthoritativeConfig
from nodes.authoritative.identity import remote_verifier
from nodes.authoritative.own_prefix import ensure_own_prefix_handle
from nodes.replication.endpoints import setup_replication
from nodes.replication.roles import REPLICATION, Replication, replicating, starting_role
from nodes.shared.http_api import (
    error_middleware,
    handle_from_path,
    query_bool,
    query_int,
    query_ints,
    read_body,
    respond,
)
from nodes.shared.metrics import METRICS, NodeMetrics, count_requests, gauge, metrics_handler
from nodes.shared.openapi import openapi_handler
from nodes.web import add_front_door, no_such_route, setup_cors
from nodes.web.authoritative import authority_lookup, no_topology
from resolver.bodies import answer_body, not_found_body, referral_body, values_not_found_body
from resolver.client import HandleClient
from resolver.errors import ProtocolError
from resolver.names import parse_handle
from resolver.records import parse_put_body
from resolver.storage import SQLiteStorage
from resolver.tls import node_session

__all__ = ["AuthoritativeConfig", "create_app"]

log = logging.getLogger("idres")


async def _node_ctx(app: web.Application) -> AsyncIterator[None]:
    """The node's resources in the one order that works, stopped in reverse: open the store, decide
    the role (``starting_role``: a stored role wins over the topology), build the authority, write
    the own prefix handle, start replication (which observes the authority), and only then serve."""
    config = app[CONFIG]
    config.db_path.parent.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as resources:
        store = await SQLiteStorage.open(config.db_path, synchronous=config.spec.durability.upper())
        resources.push_async_callback(store.close)
        session = await resources.enter_async_context(node_session(config.topology.tls_ca))
        roots = [n.url for n in config.topology.roots()]
        role = await starting_role(store, config.spec)
        authority = Authority(
            config.spec,
            store,
            config.limits,
            read_only=role.is_mirror,
            remote_verifier=remote_verifier(
                HandleClient(session),
                roots,
                trusted=[n.url for n in config.topology.nodes.values()],
                allow_plain=config.spec.allow_plain_credentials,
            ),
            proxies=frozenset(n.host for n in config.topology.nodes.values() if n.role == "recursive"),
        )
        await authority.start()
        if role.writes_own_prefix_handle:
            await ensure_own_prefix_handle(authority, config.topology, config.operator_secret)
        replication = await resources.enter_async_context(replicating(authority, config, role))
        app[AUTHORITY], app[REPLICATION] = authority, replication
        log.info("%s", _started(config, replication))
        yield
    log.info("%s stopped: database %s closed", config.spec.name, config.db_path)


_WHY = {"topology": "as the topology says", "promoted": "promoted earlier", "demoted": "demoted earlier"}


def _started(config: AuthoritativeConfig, replication: Replication) -> str:
    """The line the node logs once it serves: its role as decided at start, prefix, address, file, peers."""
    spec = config.spec
    following = replication.mirror.name if replication.mirror is not None else "?"
    role = "primary" if replication.role == "primary" else f"mirror of {following}"
    hosts = f" (also hosts {', '.join(spec.hosts)})" if spec.hosts else ""
    peers = ", ".join(f"{p.name} {p.url}" for p in replication.peers) or "none"
    return (
        f"{spec.name} serving: {spec.role} node, {role} ({_WHY[replication.role_source]}) at epoch "
        f"{replication.epoch}, prefix {spec.prefix}{hosts}, on {spec.url}; data {config.db_path.resolve()} "
        f"(durability {spec.durability}); replication peers: {peers}"
    )


async def get_handle(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    text = handle_from_path(request)
    handle = parse_handle(text)
    identity = await authority.identify(request)
    if identity is not None and query_bool(request, "publicOnly"):
        identity = None
    result = await authority.resolve(
        handle, types=request.query.getall("type", []), indexes=query_ints(request, "index"), identity=identity
    )
    outcomes = request.app[METRICS].resolutions
    if not isinstance(result, Answer):
        outcomes.labels("referral").inc()
        return respond(request, 300, referral_body(text, result.prefix, result.sites))
    if result.values is None:
        outcomes.labels("not_found").inc()
        return respond(request, 404, not_found_body(text))
    if result.filtered and not result.values:
        outcomes.labels("values_not_found").inc()
        return respond(request, 200, values_not_found_body(text))
    outcomes.labels("answer").inc()
    return respond(request, 200, answer_body(text, result.values))


async def put_handle(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    limits = request.app[CONFIG].limits
    text = handle_from_path(request)
    mint = query_bool(request, "mintNewSuffix")
    handle = parse_handle(text + "X" if mint else text)  # validate the prefix part of a mint request
    identity = await authority.identify(request)
    overwrite = query_bool(request, "overwrite", default=True)
    body = await read_body(request, limits.max_body_bytes)
    values = parse_put_body(body, handle_text=text, now=int(time.time()), limits=limits)
    if mint:
        result = await authority.mint(text, values, identity)
        return respond(request, 201, {"responseCode": 1, "handle": result.handle})
    index_params = request.query.getall("index", [])
    indexes: list[int] | None
    if not index_params:
        indexes = None
    elif index_params == ["various"]:
        indexes = [v.index for v in values]
    else:
        indexes = query_ints(request, "index")
    result = await authority.put(handle, values, overwrite=overwrite, indexes=indexes, identity=identity)
    status = 201 if result.created and not overwrite else 200
    return respond(request, status, {"responseCode": 1, "handle": text})


async def delete_handle(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    text = handle_from_path(request)
    handle = parse_handle(text)
    identity = await authority.identify(request)
    indexes = query_ints(request, "index") or None
    await authority.delete(handle, indexes=indexes, identity=identity)
    return respond(request, 200, {"responseCode": 1, "handle": text})


async def list_handles(request: web.Request) -> web.Response:
    """GET /api/handles?prefix=P[&page=N&pageSize=S][&after=CURSOR]: one page of P's handles, with
    ``next`` (the cursor of the following page) when more follow (``Authority.list_handles``)."""
    authority = request.app[AUTHORITY]
    prefix_text = request.query.get("prefix")
    if not prefix_text:
        raise ProtocolError("listing needs ?prefix=PREFIX")
    identity = await authority.identify(request)
    page, page_size = query_int(request, "page"), query_int(request, "pageSize")
    after = request.query.get("after") or None
    if after is not None and not after.isprintable():
        # A cursor is a handle this node listed: text SQLite can compare, no control characters.
        raise ProtocolError("after= is not a cursor this node gave (the next of an earlier listing)")
    listing = await authority.list_handles(prefix_text, page=page, page_size=page_size, after=after, identity=identity)
    body: dict[str, object] = {
        "responseCode": 1,
        "prefix": prefix_text,
        "totalCount": str(listing.total),
        "handles": listing.handles,
    }
    if page is not None:
        body["page"] = page
    if page_size is not None:
        body["pageSize"] = page_size
    if listing.next is not None:
        body["next"] = listing.next
    if listing.message is not None:
        body["message"] = listing.message
    return respond(request, 200, body)


async def session_this(request: web.Request) -> web.Response:
    """HANDLE.NET's ``GET /api/sessions/this``: who the Basic credentials prove the client to be."""
    identity = await request.app[AUTHORITY].identify(request)
    body: dict[str, object] = {"sessionId": None, "authenticated": identity is not None}
    if identity is not None:
        body["id"] = str(identity)
    return respond(request, 200, body)


async def healthz(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    spec = authority.spec
    return respond(
        request,
        200,
        {
            "status": "ok",
            "node": spec.name,
            "role": spec.role,
            "prefix": spec.prefix,
            "mirror": request.app[REPLICATION].role == "mirror",  # as starting_role decided, or a role change since
            "lastSeq": await authority.store.last_seq(),
            "operator": str(authority.operator),
        },
    )


def _replication_metrics(app: web.Application) -> Iterable[Metric]:
    replication = app.get(REPLICATION)
    mirror = replication.mirror if replication is not None else None
    if mirror is not None:
        lag = mirror.lag_seconds()
        yield gauge(
            "idres_replication_connected",
            "Whether this mirror is connected to its primary",
            1.0 if mirror.connected else 0.0,
        )
        yield gauge(
            "idres_replication_lag_seconds",
            "Seconds since this mirror last had every change "
            "(0 while connected and caught up; NaN before the first sync)",
            math.nan if lag is None else lag,
        )


def create_app(config: AuthoritativeConfig) -> web.Application:
    app = web.Application(middlewares=[count_requests, error_middleware], client_max_size=config.limits.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = metrics = NodeMetrics(config.spec.name, config.spec.role)
    metrics.add_source(lambda: _replication_metrics(app))
    app.cleanup_ctx.append(_node_ctx)  # one context: see its docstring for the order
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/handles", list_handles)
    app.router.add_get("/api/handles/", list_handles)
    app.router.add_get("/api/sessions/this", session_this)
    app.router.add_get("/api/openapi.json", openapi_handler)
    # [\s\S], not ".": a line break (%0A) in the path is an invalid handle (400), not an unknown endpoint.
    app.router.add_route("GET", r"/api/handles/{handle:[\s\S]+}", get_handle)
    app.router.add_route("PUT", r"/api/handles/{handle:[\s\S]+}", put_handle)
    app.router.add_route("DELETE", r"/api/handles/{handle:[\s\S]+}", delete_handle)
    setup_batch(app, DEFAULT_WORKERS if config.spec.batch_workers is None else config.spec.batch_workers)
    setup_replication(app)
    if config.spec.front_door:  # pages and proxy redirects for this node's own identifiers (issue 14)
        add_front_door(app, authority_lookup(app), no_topology, public_url=config.spec.public_url)
    app.router.add_route("*", r"/{tail:[\s\S]*}", no_such_route)  # unknown paths: 404, not 405
    setup_cors(app)
    return app
