"""The authoritative node's aiohttp application: top-level, secondary and enterprise are configurations."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from prometheus_client.metrics_core import Metric

from nodes.authoritative.authority import AUTHORITY, Answer, Authority
from nodes.authoritative.batch.endpoint import setup_batch
from nodes.authoritative.batch.workers import DEFAULT_WORKERS
from nodes.authoritative.config import CONFIG, AuthoritativeConfig
from nodes.authoritative.identity import remote_verifier
from nodes.replication.endpoints import setup_replication
from nodes.replication.roles import REPLICATION, stored_role
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
from resolver.client import HandleClient
from resolver.config import NodeSpec, Topology
from resolver.errors import ProtocolError
from resolver.names import parse_handle, prefix_handle
from resolver.records import parse_put_body
from resolver.sites import site_value
from resolver.storage import SQLiteStorage, Write
from resolver.values import HandleValue, value_to_wire

__all__ = ["AuthoritativeConfig", "create_app", "own_prefix_values"]


def own_prefix_values(topology: Topology, spec: NodeSpec, hashed_secret: str) -> tuple[HandleValue, ...]:
    """The node's own prefix handle: its sites, HS_ADMIN -> the admin group at 200, which lists the
    operator identity 300:0.NA/<prefix>, whose HS_SECKEY is at 300 (Technical Manual §3.6 layout)."""
    assert spec.prefix is not None
    me = prefix_handle(spec.prefix)
    sites = tuple(
        site_value(i, site.host, site.port, primary=not site.is_mirror, description=site.description or site.name)
        for i, site in enumerate(topology.sites_of(spec.mirror_of or spec.name), start=1)
    )
    return (
        *sites,
        HandleValue(100, "HS_ADMIN", "admin", {"handle": me, "index": 200, "permissions": "111111111111"}),
        HandleValue(200, "HS_VLIST", "vlist", [{"handle": me, "index": 300}]),
        HandleValue(300, "HS_SECKEY", "string", hashed_secret, permissions="1100"),
    )


async def ensure_own_prefix_handle(authority: Authority, topology: Topology, secret: str) -> None:
    """Write the node's prefix handle if it is missing or out of date; a restart with the same
    topology and secret writes nothing."""
    import asyncio

    from resolver.auth import hash_secret, verify_secret

    spec = authority.spec
    key = prefix_handle(spec.prefix or "")
    current = await authority.store.get(key)
    old = current.by_index() if current else {}
    seckey = old.get(300)
    if (
        seckey is not None
        and seckey.type == "HS_SECKEY"
        and await asyncio.to_thread(verify_secret, secret, seckey.value)
    ):
        hashed = seckey.value
    else:
        hashed = await asyncio.to_thread(hash_secret, secret)
    wanted = own_prefix_values(topology, spec, hashed)
    now = int(time.time())
    merged = dict(old)
    for v in wanted:
        previous = old.get(v.index)
        # The admin values are only a starting point: an operator who edits them (adds members to
        # the group at 200, say) keeps the edits across restarts. Sites and the secret follow config.
        kept = previous is not None and (
            previous.same_content(v) or (v.type in ("HS_ADMIN", "HS_VLIST") and previous.type == v.type)
        )
        merged[v.index] = previous if kept and previous is not None else v.with_timestamp(now)
    # Sites of a topology that shrank must not linger.
    for index, v in old.items():
        if v.type.upper() == "HS_SITE" and index not in {w.index for w in wanted}:
            del merged[index]
    if current is None or merged != old:
        values = tuple(sorted(merged.values(), key=lambda v: v.index))
        await authority.store.write([Write(key, values)])
        authority.zone.learn(spec.prefix or "", values)


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    config.db_path.parent.mkdir(parents=True, exist_ok=True)
    store = await SQLiteStorage.open(config.db_path)
    session = aiohttp.ClientSession()
    client = HandleClient(session)
    roots = [n.url for n in config.topology.roots()]

    try:
        # A stored role (a promotion or demotion) wins over the topology: nodes.replication.roles.
        mirror = config.spec.is_mirror or await stored_role(store) == "mirror"
        authority = Authority(
            config.spec,
            store,
            config.limits,
            read_only=mirror,
            remote_verifier=remote_verifier(client, roots),
        )
        await authority.start()
        if not mirror:  # a promoted mirror holds its primary's prefix handle already
            await ensure_own_prefix_handle(authority, config.topology, config.operator_secret)
        app[AUTHORITY] = authority
        yield
    finally:
        await session.close()
        await store.close()


async def get_handle(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    text = handle_from_path(request)
    handle = parse_handle(text)
    identity = await authority.authenticate(request.headers.get("Authorization"))
    if identity is not None and query_bool(request, "publicOnly"):
        identity = None
    result = await authority.resolve(
        handle, types=request.query.getall("type", []), indexes=query_ints(request, "index"), identity=identity
    )
    outcomes = request.app[METRICS].resolutions
    if not isinstance(result, Answer):
        outcomes.labels("referral").inc()
        return respond(
            request,
            300,
            {
                "responseCode": 303,
                "handle": text,
                "prefix": result.prefix,
                "message": f"prefix {result.prefix} is delegated: ask one of its sites",
                "values": [value_to_wire(v) for v in result.sites],
            },
        )
    if result.values is None:
        outcomes.labels("not_found").inc()
        return respond(request, 404, {"responseCode": 100, "handle": text, "message": "Handle Not Found"})
    if result.filtered and not result.values:
        outcomes.labels("values_not_found").inc()
        return respond(
            request,
            200,
            {"responseCode": 200, "handle": text, "values": [], "message": "no value matches the type or index given"},
        )
    outcomes.labels("answer").inc()
    return respond(
        request, 200, {"responseCode": 1, "handle": text, "values": [value_to_wire(v) for v in result.values]}
    )


async def put_handle(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    limits = request.app[CONFIG].limits
    text = handle_from_path(request)
    mint = query_bool(request, "mintNewSuffix")
    handle = parse_handle(text + "X" if mint else text)  # validate the prefix part of a mint request
    identity = await authority.authenticate(request.headers.get("Authorization"))
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
    identity = await authority.authenticate(request.headers.get("Authorization"))
    indexes = query_ints(request, "index") or None
    await authority.delete(handle, indexes=indexes, identity=identity)
    return respond(request, 200, {"responseCode": 1, "handle": text})


async def list_handles(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    prefix_text = request.query.get("prefix")
    if not prefix_text:
        raise ProtocolError("listing needs ?prefix=PREFIX")
    identity = await authority.authenticate(request.headers.get("Authorization"))
    page, page_size = query_int(request, "page"), query_int(request, "pageSize")
    _, total, keys = await authority.list_handles(prefix_text, page=page, page_size=page_size, identity=identity)
    body: dict[str, object] = {"responseCode": 1, "prefix": prefix_text, "totalCount": str(total), "handles": keys}
    if page is not None:
        body["page"] = page
    if page_size is not None:
        body["pageSize"] = page_size
    return respond(request, 200, body)


async def session_this(request: web.Request) -> web.Response:
    """HANDLE.NET's ``GET /api/sessions/this``: who the Basic credentials prove the client to be."""
    identity = await request.app[AUTHORITY].authenticate(request.headers.get("Authorization"))
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
            "mirror": request.app[REPLICATION].role == "mirror",  # a stored role wins over the topology
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
    app.cleanup_ctx.append(_storage_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/handles", list_handles)
    app.router.add_get("/api/handles/", list_handles)
    app.router.add_get("/api/sessions/this", session_this)
    app.router.add_route("GET", "/api/handles/{handle:.+}", get_handle)
    app.router.add_route("PUT", "/api/handles/{handle:.+}", put_handle)
    app.router.add_route("DELETE", "/api/handles/{handle:.+}", delete_handle)
    setup_batch(app, DEFAULT_WORKERS if config.spec.batch_workers is None else config.spec.batch_workers)
    setup_replication(app)
    return app
