"""``POST /api/batch``: bulk registration on an authoritative node (DESIGN §4).

Basic credentials (checked, like a mirror's refusal, before the body is read), then at most
``Limits.max_batch_operations`` operations ``{"op": "create"|"upsert"|"delete", "handle", "values"}``
as msgpack or JSON (``{"operations": [...]}`` or an array) or NDJSON, within ``Limits.max_batch_bytes``.
Answered (HTTP 200) once the transaction committed and the write observer's ``before_ack`` (sync mirrors) passed::

    {"responseCode": 1, "applied": N, "failed": M, "lastSeq": SEQ,
     "results": [{"responseCode": RC, "handle": TEXT[, "message": "..."]}, ...]}   # one per operation

``create`` is PUT overwrite=false, ``upsert`` PUT overwrite=true (the whole record), ``delete`` DELETE,
decided by the same rules, in the same words, as single writes (``nodes.authoritative.writes``):
routing (301), existence (101, 100), authorisation (401) and validation (102, 202), per operation
(4: not an operation). Operations apply in order, a later one seeing the earlier
ones; the valid ones commit in one transaction, each as one change-log entry (so mirrors replicate bulk
loads), all with the batch's one timestamp.

Node CPU per identifier is the budget. *Preparing* (``nodes.authoritative.batch.prep``: decode, validate, pack) is
most of it: a large body goes whole to a worker process (``nodes.authoritative.batch.workers``), so batches prepare in
parallel on every core; a small one is prepared in the event loop, ``CHUNK`` operations at a time with
other requests served in between, one batch after the other (``turn``). *authorise*, under the write
lock (``writes.BatchDecider``): one ``Storage.existing`` query per batch, stored records read only for
upserts and deletes, routing decided once per prefix, authorisation skipped for the operator or else
decided once per (prefix, permission) for creates; the operator's plain creates (a bulk load) take a
shorter path that decides the same. *sqlite*: the store's reads and one ``Storage.write``. Each
stage's seconds are on ``/metrics`` as ``idres_batch_stage_seconds_total{stage}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from nodes.authoritative.authority import AUTHORITY, Authority
from nodes.authoritative.batch.prep import Prepared, hash_secrets, pack_op, prepare_steps
from nodes.authoritative.batch.workers import BatchWorkers
from nodes.authoritative.config import CONFIG
from nodes.authoritative.write_ops import WriteOp
from nodes.authoritative.writes import BatchDecider, needs_credentials
from nodes.shared.http_api import read_bytes, respond
from nodes.shared.metrics import METRICS
from resolver.auth import Identity
from resolver.codec import body_media_type
from resolver.limits import Limits

__all__ = ["STAGES", "BatchStats", "setup_batch"]

# "validate": decoding, validating and packing in the loop; "worker": waiting for a worker process to
# do that for a body; "unwire": rebuilding operations as objects for the general decider.
STAGES = ("turn", "validate", "worker", "unwire", "hash", "lock", "authorise", "sqlite", "ack", "encode")


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


async def _others(prepared: Prepared, results: list[dict[str, Any]], stats: BatchStats) -> list[WriteOp]:
    """The operations other than plain creates, rebuilt, their secrets hashed (failures into ``results``)."""
    t0 = time.perf_counter()
    ops = prepared.others_ops()
    stats.seconds["unwire"] += time.perf_counter() - t0
    secret = [op for op in ops if op.secret]
    if not secret:
        return ops
    t0 = time.perf_counter()
    await asyncio.to_thread(hash_secrets, secret)
    unstorable = set()
    for op in secret:
        failed = pack_op(op)
        if failed is not None:
            results[op.position] = failed
            unstorable.add(op.position)
    stats.seconds["hash"] += time.perf_counter() - t0
    return [op for op in ops if op.position not in unstorable] if unstorable else ops


async def _apply(
    authority: Authority, identity: Identity, prepared: Prepared, stats: BatchStats
) -> tuple[list[dict[str, Any]], int, int]:
    """Decide and commit under the write lock; (results, applied, last seq)."""
    seconds = stats.seconds
    clock = time.perf_counter
    results: list[dict[str, Any]] = [{}] * prepared.size
    for position, result in prepared.failures:
        results[position] = result
    others = await _others(prepared, results, stats) if prepared.others else []
    t0 = clock()
    decider = BatchDecider(authority, identity, prepared.creates, others)  # chooses its path
    t1 = clock()
    seconds["unwire"] += t1 - t0
    async with authority.write_lock:
        t2 = clock()
        authority.refuse_if_read_only()  # again: the node may have been demoted meanwhile
        decided = await decider.decide(results)
        t3 = clock()
        writes = decided.writes
        seq = await authority.commit(writes, created=decided.created) if writes else await authority.store.last_seq()
        t4 = clock()
        authority.learn(decided)
    seconds["lock"] += t2 - t1
    seconds["authorise"] += decider.deciding
    seconds["sqlite"] += decider.loading + t4 - t3
    if writes:
        await authority.acknowledge(seq)
    seconds["ack"] += clock() - t4
    return results, len(writes), seq


async def post_batch(request: web.Request, stats: BatchStats, workers: BatchWorkers) -> web.Response:
    authority = request.app[AUTHORITY]
    limits = request.app[CONFIG].limits
    identity = await authority.identify(request)
    await authority.admit_write()  # a mirror refuses (503/7) before the body is read
    if identity is None:
        raise needs_credentials(None, "")
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
