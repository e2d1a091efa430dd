"""``POST /api/batch``: bulk registration on an authoritative node (DESIGN §4).

Basic credentials (checked, like a mirror's refusal, before the body is read), then at most
``Limits.max_batch_operations`` operations ``{"op": "create"|"upsert"|"delete", "handle", "values"}``
as msgpack or JSON (``{"operations": [...]}`` or an array) or NDJSON, within ``Limits.max_batch_bytes``.
Answered (HTTP 200) once the transaction committed and the write observer's ``before_ack`` (sync mirrors) passed::

    {"responseCode": 1, "applied": N, "failed": M, "lastSeq": SEQ,
     "results": [{"responseCode": RC, "handle": TEXT[, "message": "..."]}, ...]}   # one per operation

``create`` is PUT overwrite=false, ``upsert`` PUT overwrite=true (the whole record), ``delete`` DELETE,
with the routing (301), existence (101, 100), authorisation (401) and validation (102, 202) of single
writes, per operation (4: not an operation). Operations apply in order, a later one seeing the earlier
ones; the valid ones commit in one transaction, each as one change-log entry (so mirrors replicate bulk
loads), all with the batch's one timestamp.

Node CPU per identifier is the budget. *Preparing* (``nodes.authoritative.batch.prep``: decode, validate, pack) is
most of it: a large body goes whole to a worker process (``nodes.authoritative.batch.workers``), so batches prepare in
parallel on every core; a small one is prepared in the event loop, ``CHUNK`` operations at a time with
other requests served in between, one batch after the other (``turn``). *authorise*, under the write
lock: one ``Storage.existing`` query per batch, stored records read only for upserts and deletes of
existing handles, routing decided once per prefix, authorisation skipped for the operator or else
decided once per (prefix, permission) for creates; the operator's plain creates (a bulk load) take a
shorter path that decides the same (``_decide_creates``). *sqlite*: one ``Storage.write``. Each
stage's seconds are on ``/metrics`` as ``idres_batch_stage_seconds_total{stage}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, NamedTuple

from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from nodes.authoritative.authority import AUTHORITY, Authority, changes_needed
from nodes.authoritative.batch.prep import CHUNK, Creates, Op, Prepared, failure, hash_secrets, pack_op, prepare_steps
from nodes.authoritative.batch.workers import BatchWorkers
from nodes.authoritative.config import CONFIG
from nodes.shared.http_api import read_bytes, respond
from nodes.shared.metrics import METRICS
from resolver.auth import Identity, Perm
from resolver.codec import body_media_type, pack_rows, row_value, value_row
from resolver.errors import (
    AuthenticationNeeded,
    HandleAlreadyExists,
    HandleError,
    HandleNotFound,
    NotResponsible,
    PermissionDenied,
)
from resolver.limits import Limits
from resolver.names import Handle
from resolver.records import Record, keep_row_timestamps
from resolver.storage import Write
from resolver.values import HandleValue
from resolver.zone import Zone

__all__ = ["STAGES", "BatchStats", "setup_batch"]

# "validate": decoding, validating and packing in the loop; "worker": waiting for a worker process to
# do that for a body; "unwire": rebuilding operations as objects for the general decider.
STAGES = ("turn", "validate", "worker", "unwire", "hash", "lock", "authorise", "sqlite", "ack", "encode")
# Types whose values decide who may do what: a batch writing one re-reads authorisation afterwards.
_ADMIN_TYPES = frozenset({"HS_ADMIN", "HS_VLIST", "HS_SECKEY"})


class BatchStats:
    """Seconds per stage, requests and operations by outcome: ``idres_batch_*`` on /metrics."""

    def __init__(self) -> None:
        # Batches are validated one after the other (each still yielding between chunks): when two
        # interleave, both finish together and the loop idles while they commit in turn; in turn,
        # one batch commits (in SQLite's thread) while the next one is validated.
        self.turn = asyncio.Lock()
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.requests = 0
        self.applied = 0
        self.failed = 0

    def metrics(self) -> Iterable[Metric]:
        stages = CounterMetricFamily(
            "idres_batch_stage_seconds", "Seconds POST /api/batch spent per stage", labels=["stage"]
        )
        for stage, seconds in self.seconds.items():
            stages.add_metric([stage], seconds)
        yield stages
        ops = CounterMetricFamily("idres_batch_operations", "Batch operations by outcome", labels=["outcome"])
        ops.add_metric(["applied"], self.applied)
        ops.add_metric(["failed"], self.failed)
        yield ops
        yield CounterMetricFamily("idres_batch_requests", "Batches answered with HTTP 200", value=self.requests)


# -- deciding, under the write lock ---------------------------------------------------------------------


def _touches_admin(rows: list[list[Any]] | None) -> bool:
    return any(str(row[1]).upper() in _ADMIN_TYPES for row in rows or ())


def _record(key: str, rows: list[list[Any]] | None) -> Record | None:
    return None if rows is None else Record(key, tuple(map(row_value, rows)))


class _Plan(NamedTuple):
    write: Write
    needed: set[int] | None  # permissions to check; None: none (the operator)
    current: list[list[Any]] | None  # the record they are checked against (None: it has none)
    old: list[list[Any]] | None  # the record before (None: it had none)


class _Decider:
    """Applies the batch's operations in order to an overlay of the stored records (routing, existence,
    authorisation, as single writes decide them); each one that passes is a write to commit."""

    def __init__(self, authority: Authority, identity: Identity, ops: list[Op]) -> None:
        self.authority, self.identity = authority, identity
        self.operator = authority.is_operator(identity)
        own = authority.zone
        # Prefix handles in the batch change routing for the operations after them: route on a copy.
        changes_zone = any(op.prefix_handle for op in ops)
        self.zone = Zone(own.own, set(own.hosted), dict(own.delegated)) if changes_zone else own
        self.overlay: dict[str, Op | None] = {}  # key -> the batch's last put of it (None: deleted)
        self.pending: dict[str, Record | None] = {}  # the same, for the records authorisation reads
        self.routes: dict[str, NotResponsible | None] = {}  # zone -> refusal, for ordinary handles
        self.grants: dict[tuple[str, bool, int], bool] = {}  # (zone, prefix handle?, permission) -> allowed
        self.existing: set[str] = set()
        self.stored: dict[str, Record] = {}
        self.prefixes: list[tuple[str, tuple[HandleValue, ...] | None]] = []  # prefix handles written, in order
        self.secrets = False  # some HS_SECKEY value written or removed

    async def load(self, ops: list[Op]) -> None:
        store = self.authority.store
        self.existing = await store.existing([op.key for op in ops])
        wanted = [op.key for op in ops if op.kind != "create" and op.key in self.existing]
        self.stored = await store.get_many(wanted) if wanted else {}

    def _exists(self, key: str) -> bool:
        return self.overlay[key] is not None if key in self.overlay else key in self.existing

    def _current(self, key: str) -> list[list[Any]] | None:
        if key in self.overlay:
            put = self.overlay[key]
            return None if put is None else put.rows_of()
        record = self.stored.get(key)
        return None if record is None else [value_row(v) for v in record.values]

    def _route(self, op: Op) -> None:
        if op.prefix_handle:
            self.authority.route_write(op.handle_of(), self.zone)
            return
        if op.zone not in self.routes:
            try:
                self.authority.route_write(op.handle_of(), self.zone)
                self.routes[op.zone] = None
            except NotResponsible as exc:
                self.routes[op.zone] = exc
        refused = self.routes[op.zone]
        if refused is not None:
            raise NotResponsible(refused.message, handle=op.text)

    async def require(self, op: Op, permissions: set[int], current: list[list[Any]] | None) -> None:
        """Authorise as ``Authority._require`` does; ``current``: the record's rows, None if it has none."""
        record = _record(op.key, current)
        for permission in sorted(permissions):
            # Without a record of its own, a handle's rights come from its prefix chain alone.
            memo = (op.zone, op.prefix_handle, permission) if record is None else None
            allowed = self.grants.get(memo) if memo else None
            if allowed is None:
                allowed = await self.authority.may(
                    self.identity, permission, op.handle_of(), record, pending=self.pending
                )
                if memo:
                    self.grants[memo] = allowed
            if not allowed:
                raise PermissionDenied(
                    f"{self.identity} may not {Perm.NAMES[permission]} on {op.text}: no HS_ADMIN value of the "
                    f"handle or its prefixes grants it",
                    handle=op.text,
                )

    def plan(self, op: Op) -> _Plan:
        """What ``op`` does after the operations before it, and what it needs checked (nothing for
        the operator); a HandleError if it fails. Nothing is applied until ``apply``."""
        self._route(op)
        prefix_handle = op.prefix_handle
        check = not self.operator
        if op.kind == "delete":
            if not self._exists(op.key):
                raise HandleNotFound(f"{op.text} does not exist", handle=op.text)
            if prefix_handle and op.zone == self.authority.zone.own:
                raise PermissionDenied(f"{op.text} is this node's own prefix handle and cannot be deleted")
            old = self._current(op.key)
            needed = {Perm.DELETE_DERIVED_PREFIX if prefix_handle else Perm.DELETE_HANDLE} if check else None
            return _Plan(Write(op.key, None), needed, old, old)
        assert op.blob is not None, "puts are packed before they are planned"
        if not self._exists(op.key):
            needed = {Perm.ADD_DERIVED_PREFIX if prefix_handle else Perm.ADD_HANDLE} if check else None
            return _Plan(Write.packed(op.key, op.blob), needed, None, None)
        if op.kind == "create":
            raise HandleAlreadyExists(f"{op.text} already exists (create; upsert replaces a record)", handle=op.text)
        old = self._current(op.key) or []
        kept = keep_row_timestamps(old, op.rows_of())
        if kept is not None:
            op.rows, op.values, op.blob = kept, None, pack_rows(kept)
        needed = changes_needed(tuple(map(row_value, old)), op.values_of()) if check else None
        return _Plan(Write.packed(op.key, op.blob), needed, old, old)

    def apply(self, op: Op, plan: _Plan) -> None:
        """``op`` passed: later operations see its result."""
        put = not plan.write.is_delete
        self.overlay[op.key] = op if put else None
        old = plan.old
        new = op.rows_of() if put and not op.simple else None  # common values: no admin types
        prefix_handle = op.prefix_handle
        if prefix_handle or (old is not None and _touches_admin(old)) or (new is not None and _touches_admin(new)):
            # Rights, groups or secrets changed: what was decided about them before may not hold now.
            for row in (*(old or ()), *(new or ())):
                self.secrets = self.secrets or str(row[1]).upper() == "HS_SECKEY"
            if not self.operator:
                self.pending[op.key] = Record(op.key, op.values_of()) if put else None
            self.grants.clear()
        if prefix_handle:
            values = op.values_of() if put else None
            self.zone.learn(op.zone, values)
            self.prefixes.append((op.zone, values))
            self.routes.clear()


# -- the endpoint -----------------------------------------------------------------------------------------


async def _prepare_all(body: bytes, media: str, limits: Limits, stats: BatchStats, workers: BatchWorkers) -> Prepared:
    seconds = stats.seconds
    clock = time.perf_counter
    started = clock()
    now = int(time.time())
    prepared = await workers.prepare(body, media, limits, now) if workers.wanted(body) else None
    if prepared is not None:
        seconds["worker"] += clock() - started
        return prepared
    prepared = Prepared.empty()
    t0 = clock()
    for step in prepare_steps(body, media, limits, now):
        prepared = step  # the last step is the whole batch
        seconds["validate"] += clock() - t0
        await asyncio.sleep(0)  # let other requests in between chunks
        t0 = clock()
    seconds["validate"] += clock() - t0
    return prepared


async def _items(prepared: Prepared, stats: BatchStats) -> list[Op | dict[str, Any]]:
    """Every operation as an Op (secrets hashed, all packed) or its failure result, in order."""
    t0 = time.perf_counter()
    items = prepared.items()
    stats.seconds["unwire"] += time.perf_counter() - t0
    secret = [op for op in items if type(op) is Op and op.secret]
    if secret:
        t0 = time.perf_counter()
        await asyncio.to_thread(hash_secrets, secret)
        for op in secret:
            failed = pack_op(op)
            if failed is not None:
                items[op.position] = failed
        stats.seconds["hash"] += time.perf_counter() - t0
    return items


async def _decide_creates(authority: Authority, creates: Creates, results: list[dict[str, Any]]) -> list[Write]:
    """``_Decider`` for the operator's plain creates (``batchprep.Creates``), at a fraction of the
    cost: routing once per prefix, then only existence decides (in the store or earlier in the batch)."""
    existing = await authority.store.existing(creates.keys)
    routes: dict[str, NotResponsible | None] = {}
    writes: list[Write] = []
    packed = Write.packed
    for position, text, key, zone, blob in zip(
        creates.positions, creates.texts, creates.keys, creates.zones, creates.blobs, strict=True
    ):
        if zone not in routes:
            try:
                authority.route_write(Handle(text, zone, key[len(zone) + 1 :]))
                routes[zone] = None
            except NotResponsible as exc:
                routes[zone] = exc
        refused = routes[zone]
        if refused is not None:
            results[position] = failure(refused.response_code, text, refused.message)
        elif key in existing:
            message = f"{text} already exists (create; upsert replaces a record)"
            results[position] = failure(HandleAlreadyExists.response_code, text, message)
        else:
            existing.add(key)
            writes.append(packed(key, blob))
            results[position] = {"responseCode": 1, "handle": text}
    return writes


async def _apply(
    authority: Authority, identity: Identity, prepared: Prepared, stats: BatchStats
) -> tuple[list[dict[str, Any]], int, int]:
    """Decide and commit under the write lock; (results, applied, last seq)."""
    seconds = stats.seconds
    clock = time.perf_counter
    results: list[dict[str, Any]] = [{}] * prepared.size
    ops: list[Op] = []
    decider: _Decider | None = None
    if authority.is_operator(identity) and not prepared.others:
        for position, result in prepared.failures:
            results[position] = result
    else:
        items = await _items(prepared, stats)
        ops = [op for op in items if isinstance(op, Op)]
        results = [{} if isinstance(op, Op) else op for op in items]
        decider = _Decider(authority, identity, ops)
    writes: list[Write] = []
    t0 = clock()
    async with authority.write_lock:
        t1 = clock()
        authority.refuse_if_read_only()  # again: the node may have been demoted meanwhile
        if decider is None:
            t2 = clock()
            writes = await _decide_creates(authority, prepared.creates, results)
            t3 = clock()
        else:
            await decider.load(ops)
            t2 = clock()
            for start in range(0, len(ops), CHUNK):
                t = clock()
                for op in ops[start : start + CHUNK]:
                    try:
                        plan = decider.plan(op)
                        if plan.needed:
                            await decider.require(op, plan.needed, plan.current)
                    except HandleError as exc:
                        results[op.position] = failure(exc.response_code, op.text, exc.message)
                        continue
                    decider.apply(op, plan)
                    writes.append(plan.write)
                    results[op.position] = {"responseCode": 1, "handle": op.text}
                seconds["authorise"] += clock() - t
                await asyncio.sleep(0)
            t3 = clock()
        seq = await authority.commit(writes, created=decider is None) if writes else await authority.store.last_seq()
        t4 = clock()
        if decider is not None:
            for prefix, values in decider.prefixes:
                authority.learn_write(prefix, values, secrets=False)
            authority.learn_write(None, None, secrets=decider.secrets)
    seconds["lock"] += t1 - t0
    if decider is None:
        seconds["authorise"] += t3 - t2
    seconds["sqlite"] += t2 - t1 + t4 - t3
    if writes:
        await authority.acknowledge(seq)
    seconds["ack"] += clock() - t4
    return results, len(writes), seq


async def post_batch(request: web.Request, stats: BatchStats, workers: BatchWorkers) -> web.Response:
    authority = request.app[AUTHORITY]
    limits = request.app[CONFIG].limits
    identity = await authority.authenticate(request.headers.get("Authorization"))
    await authority.admit_write()  # a mirror refuses (503/7) before the body is read
    if identity is None:
        raise AuthenticationNeeded("bulk registration needs credentials (Basic INDEX%3AHANDLE:secret)")
    media = body_media_type(request.headers.get("Content-Type"))
    body = await read_bytes(request, limits.max_batch_bytes)
    if workers.wanted(body):
        # Prepared in a worker process: batches prepare in parallel, each decided once it is ready.
        prepared = await _prepare_all(body, media, limits, stats, workers)
    else:
        waited = time.perf_counter()
        async with stats.turn:
            stats.seconds["turn"] += time.perf_counter() - waited
            prepared = await _prepare_all(body, media, limits, stats, workers)
    del body
    results, applied, seq = await _apply(authority, identity, prepared, stats)
    failed = len(results) - applied
    stats.requests += 1
    stats.applied += applied
    stats.failed += failed
    started = time.perf_counter()
    response = respond(
        request,
        200,
        {"responseCode": 1, "applied": applied, "failed": failed, "lastSeq": seq, "results": results},
    )
    stats.seconds["encode"] += time.perf_counter() - started
    return response


def setup_batch(app: web.Application, workers: int) -> None:
    """Add ``POST /api/batch`` and its metrics (after ``app[METRICS]`` is set); ``workers``: processes
    preparing large bodies (``nodes.authoritative.batch.workers``), started with the first one and stopped
    with the app."""
    stats = BatchStats()
    pool = BatchWorkers(workers)

    async def batch(request: web.Request) -> web.Response:
        return await post_batch(request, stats, pool)

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(pool.close)

    app.router.add_post("/api/batch", batch)
    app.cleanup_ctx.append(pool_ctx)
    app[METRICS].add_source(stats.metrics)
