"""``POST /api/batch``: bulk registration on an authoritative node (DESIGN §4).

Basic credentials (checked, like a mirror's refusal, before the body is read), then at most
``Limits.max_batch_operations`` operations ``{"op": "create"|"upsert"|"delete", "handle", "values"}``
as msgpack or JSON (``{"operations": [...]}`` or an array) or NDJSON, within ``Limits.max_batch_bytes``.
Answered (HTTP 200) once the transaction committed and the ``before_ack`` hooks (sync mirrors) passed::

    {"responseCode": 1, "applied": N, "failed": M, "lastSeq": SEQ,
     "results": [{"responseCode": RC, "handle": TEXT[, "message": "..."]}, ...]}   # one per operation

``create`` is PUT overwrite=false, ``upsert`` PUT overwrite=true (the whole record), ``delete`` DELETE,
with the routing (301), existence (101, 100), authorisation (401) and validation (102, 202) of single
writes, per operation (4: not an operation). Operations apply in order, a later one seeing the earlier
ones; the valid ones commit in one transaction, each as one change-log entry (so mirrors replicate bulk
loads), all with the batch's one timestamp.

Node CPU per identifier is the budget. *decode*: an msgpack ``Unpacker``, ``CHUNK`` operations at a
time, the count read from the array header first. *validate*: identifiers through a memo of valid
prefixes (``parse_handle`` decides the rest), values of the common kind through
``values.simple_value_rows`` straight into the stored layout (no ``HandleValue``), anything else through
``parse_put_body``. *pack*: once per record, into exactly what the store keeps (``Write.packed``). Between
chunks the event loop serves other requests, and the cyclic GC is held off within one. *authorise*, under
the write lock: one ``Storage.existing`` query per batch, stored records read only for upserts and
deletes of existing handles, routing decided once per prefix, authorisation skipped for the operator or
else decided once per (prefix, permission) for creates. *sqlite*: one ``Storage.write``. Each stage's
seconds are on ``/metrics`` as ``idres_batch_stage_seconds_total{stage}``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterable
from itertools import islice
from typing import Any, NamedTuple

import msgpack
from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from nodes.authority import Authority, changes_needed
from nodes.http import read_bytes, respond
from nodes.keys import AUTHORITY, CONFIG, METRICS
from resolver.auth import Identity, Perm, hash_secret_values
from resolver.codec import (
    Malformed,
    batch_operations,
    body_media_type,
    pack_rows,
    row_packer,
    row_value,
    unpack_rows,
    value_row,
)
from resolver.errors import (
    AuthenticationNeeded,
    HandleAlreadyExists,
    HandleError,
    HandleNotFound,
    InvalidHandle,
    NotResponsible,
    PermissionDenied,
)
from resolver.limits import Limits
from resolver.names import MAX_HANDLE_LENGTH, Handle, parse_handle
from resolver.records import Record, keep_row_timestamps, parse_put_body
from resolver.storage import Write
from resolver.values import HandleValue, simple_value_rows
from resolver.zone import Zone

__all__ = ["CHUNK", "STAGES", "BatchStats", "setup_batch"]

# Operations decoded and validated between two yields to the event loop: ~3 ms of work here.
CHUNK = 250
STAGES = ("turn", "decode", "validate", "pack", "hash", "lock", "authorise", "sqlite", "ack", "encode")
KINDS = ("create", "upsert", "delete")
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


# -- validation: each operation on its own, no I/O -----------------------------------------------------


class _Op:
    """One valid operation, waiting for the decision under the write lock."""

    __slots__ = (
        "blob", "handle", "key", "kind", "position", "prefix_handle", "rows", "secret", "simple", "text", "values",
        "zone",
    )

    def __init__(self, position: int, kind: str, text: str, key: str, zone: str, handle: Handle | None) -> None:
        self.position, self.kind, self.text, self.key, self.zone = position, kind, text, key, zone
        self.handle = handle  # parsed for a prefix handle, else built when needed (handle_of)
        self.prefix_handle = handle is not None  # 0.NA/...: takes the slow paths
        # A put's values: rows in the stored layout, HandleValues, the packed blob. Once packed, the
        # rows of the common kind are dropped (fewer live objects for the garbage collector to
        # walk) and come back from the blob if a later operation of the batch needs them.
        self.rows: list[list[Any]] | None = None
        self.values: tuple[HandleValue, ...] | None = None
        self.blob: bytes | None = None
        self.secret = False  # holds an HS_SECKEY value
        self.simple = False  # values of the common kind only (simple_value_rows): no HS_ADMIN, HS_VLIST...

    def handle_of(self) -> Handle:
        if self.handle is None:
            self.handle = Handle(self.text, self.zone, self.key[len(self.zone) + 1 :])
        return self.handle

    def rows_of(self) -> list[list[Any]]:
        if self.rows is None:
            self.rows = unpack_rows(self.blob) if self.blob is not None else [value_row(v) for v in self.values or ()]
        return self.rows

    def values_of(self) -> tuple[HandleValue, ...]:
        if self.values is None:
            self.values = tuple(map(row_value, self.rows_of()))
        return self.values


def _failure(code: int, text: str, message: str) -> dict[str, Any]:
    return {"responseCode": code, "handle": text, "message": message}


def _brief(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


# The part before "/" of ordinary handles seen valid -> their normalised prefix. A handle under a
# known prefix is valid iff parse_handle's remaining checks hold, which _parse repeats.
_prefixes: dict[str, str] = {}


def _parse(text: str) -> tuple[str, str, Handle | None]:
    """(key, zone, Handle if it is a prefix handle), exactly as ``parse_handle`` decides; InvalidHandle."""
    head, _, suffix = text.partition("/")
    prefix = _prefixes.get(head)
    if prefix is not None and suffix and len(text) <= MAX_HANDLE_LENGTH and suffix.isprintable():
        return f"{prefix}/{suffix}", prefix, None
    handle = parse_handle(text)
    if handle.is_prefix_handle:
        return handle.key, handle.zone, handle
    if len(_prefixes) >= 4096:
        _prefixes.clear()
    _prefixes[head] = handle.prefix
    return handle.key, handle.prefix, None


def prepare(raw: Any, position: int, now: int, limits: Limits) -> _Op | dict[str, Any]:
    """Validate one raw operation: an ``_Op`` (values not yet packed), or its failure result."""
    if type(raw) is not dict:
        if isinstance(raw, Malformed):
            return _failure(4, "", raw.message)
        return _failure(4, "", f"operation {position + 1} is not a map of op, handle and values: {_brief(raw)}")
    text = raw.get("handle")
    if type(text) is not str:
        return _failure(4, "", f'operation {position + 1} has no "handle" string')
    kind = raw.get("op")
    if kind not in KINDS:
        return _failure(4, text, f'unknown op {_brief(kind)}: "op" must be "create", "upsert" or "delete"')
    try:
        key, zone, handle = _parse(text)
    except InvalidHandle as exc:
        return _failure(exc.response_code, text, exc.message)
    op = _Op(position, kind, text, key, zone, handle)
    if kind == "delete":
        return op
    raw_values = raw.get("values")
    if handle is None:
        op.rows = simple_value_rows(raw_values, now, limits)
        if op.rows is not None:
            op.simple = True
            return op
    if type(raw_values) is not list:
        return _failure(4, text, f'a {kind} needs "values", a list of values (may be empty)')
    try:
        op.values = parse_put_body(raw_values, handle_text=text, now=now, limits=limits)
    except HandleError as exc:
        return _failure(exc.response_code, text, exc.message)
    op.secret = any(v.type.upper() == "HS_SECKEY" for v in op.values)
    return op


def _pack(op: _Op, packer: msgpack.Packer | None = None) -> dict[str, Any] | None:
    """Pack ``op``'s values (from its HandleValues if it has no rows yet); a failure result if they cannot be."""
    try:
        op.blob = pack_rows(op.rows_of(), packer)
    except (TypeError, ValueError, OverflowError) as exc:
        return _failure(202, op.text, f"the values cannot be stored: {exc}")
    return None


def _hash_secrets(ops: list[_Op]) -> None:
    """Hash HS_SECKEY clear texts (PBKDF2, ~60 ms each: in a worker thread), then repack."""
    for op in ops:
        op.values = hash_secret_values(op.values_of())
        op.rows = op.blob = None


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

    def __init__(self, authority: Authority, identity: Identity, ops: list[_Op]) -> None:
        self.authority, self.identity = authority, identity
        self.operator = authority.is_operator(identity)
        own = authority.zone
        # Prefix handles in the batch change routing for the operations after them: route on a copy.
        changes_zone = any(op.prefix_handle for op in ops)
        self.zone = Zone(own.own, set(own.hosted), dict(own.delegated)) if changes_zone else own
        self.overlay: dict[str, _Op | None] = {}  # key -> the batch's last put of it (None: deleted)
        self.pending: dict[str, Record | None] = {}  # the same, for the records authorisation reads
        self.routes: dict[str, NotResponsible | None] = {}  # zone -> refusal, for ordinary handles
        self.grants: dict[tuple[str, bool, int], bool] = {}  # (zone, prefix handle?, permission) -> allowed
        self.existing: set[str] = set()
        self.stored: dict[str, Record] = {}
        self.prefixes: list[tuple[str, tuple[HandleValue, ...] | None]] = []  # prefix handles written, in order
        self.secrets = False  # some HS_SECKEY value written or removed

    async def load(self, ops: list[_Op]) -> None:
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

    def _route(self, op: _Op) -> None:
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

    async def require(self, op: _Op, permissions: set[int], current: list[list[Any]] | None) -> None:
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

    def plan(self, op: _Op) -> _Plan:
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

    def apply(self, op: _Op, plan: _Plan) -> None:
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


async def _prepare_all(body: bytes, media: str, limits: Limits, stats: BatchStats) -> list[_Op | dict[str, Any]]:
    seconds = stats.seconds
    clock = time.perf_counter
    started = clock()
    _, raw_ops = batch_operations(body, media, limits.max_batch_operations)
    now = int(time.time())
    prepared: list[_Op | dict[str, Any]] = []
    collecting = gc.isenabled()
    packer = row_packer()
    while True:
        # A chunk allocates many containers and frees them (reference counting) before it ends,
        # all without cycles: the cyclic collector would only walk them, tripling the decode time.
        gc.disable()
        try:
            t0 = clock()
            chunk = list(islice(raw_ops, CHUNK))
            t1 = clock()
            seconds["decode"] += t1 - t0 + (t0 - started if not prepared else 0.0)
            if not chunk:
                break
            base = len(prepared)
            items = [prepare(raw, base + i, now, limits) for i, raw in enumerate(chunk)]
            t2 = clock()
            for i, item in enumerate(items):
                if type(item) is _Op and item.kind != "delete" and not item.secret:
                    failed = _pack(item, packer)
                    if failed is not None:
                        items[i] = failed
                    elif item.simple:
                        item.rows = None
            del chunk
            seconds["validate"] += t2 - t1
            seconds["pack"] += clock() - t2
        finally:
            if collecting:
                gc.enable()
        prepared.extend(items)
        await asyncio.sleep(0)  # let other requests in between chunks
    secret = [op for op in prepared if type(op) is _Op and op.secret]
    if secret:
        t0 = clock()
        await asyncio.to_thread(_hash_secrets, secret)
        for op in secret:
            failed = _pack(op)
            if failed is not None:
                prepared[op.position] = failed
        seconds["hash"] += clock() - t0
    return prepared


async def _apply(
    authority: Authority, identity: Identity, prepared: list[_Op | dict[str, Any]], stats: BatchStats
) -> tuple[list[dict[str, Any]], int, int]:
    """Decide and commit under the write lock; (results, applied, last seq)."""
    seconds = stats.seconds
    clock = time.perf_counter
    ops = [op for op in prepared if isinstance(op, _Op)]
    results = [{} if isinstance(op, _Op) else op for op in prepared]
    writes: list[Write] = []
    decider = _Decider(authority, identity, ops)
    t0 = clock()
    async with authority.write_lock:
        t1 = clock()
        authority.refuse_if_read_only()  # again: the node may have been demoted meanwhile
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
                    results[op.position] = _failure(exc.response_code, op.text, exc.message)
                    continue
                decider.apply(op, plan)
                writes.append(plan.write)
                results[op.position] = {"responseCode": 1, "handle": op.text}
            seconds["authorise"] += clock() - t
            await asyncio.sleep(0)
        t3 = clock()
        seq = await authority.commit(writes) if writes else await authority.store.last_seq()
        t4 = clock()
        for prefix, values in decider.prefixes:
            authority.learn_write(prefix, values, secrets=False)
        authority.learn_write(None, None, secrets=decider.secrets)
    seconds["lock"] += t1 - t0
    seconds["sqlite"] += t2 - t1 + t4 - t3
    if writes:
        await authority.acknowledge(seq)
    seconds["ack"] += clock() - t4
    return results, len(writes), seq


async def post_batch(request: web.Request, stats: BatchStats) -> web.Response:
    authority = request.app[AUTHORITY]
    limits = request.app[CONFIG].limits
    identity = await authority.authenticate(request.headers.get("Authorization"))
    await authority.admit_write()  # a mirror refuses (503/7) before the body is read
    if identity is None:
        raise AuthenticationNeeded("bulk registration needs credentials (Basic INDEX%3AHANDLE:secret)")
    media = body_media_type(request.headers.get("Content-Type"))
    body = await read_bytes(request, limits.max_batch_bytes)
    waited = time.perf_counter()
    async with stats.turn:
        stats.seconds["turn"] += time.perf_counter() - waited
        prepared = await _prepare_all(body, media, limits, stats)
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


def setup_batch(app: web.Application) -> None:
    """Add ``POST /api/batch`` and its metrics (after ``app[METRICS]`` is set)."""
    stats = BatchStats()

    async def batch(request: web.Request) -> web.Response:
        return await post_batch(request, stats)

    app.router.add_post("/api/batch", batch)
    app[METRICS].add_source(stats.metrics)
