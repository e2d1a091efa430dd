"""Pull replication: every node serves its change log and a snapshot; a mirror copies, then follows.

Endpoints (changes, snapshot, promote and fence are operator-only, ``300:0.NA/<prefix>``, as they carry
non-public values such as hashed HS_SECKEY or change the node's role; status is public, its digest
is not unless the topology says ``public_digest = true``):

- ``GET /api/replication/changes?after=SEQ&limit=N&wait=SECONDS[&node=NAME&epoch=E]`` ->
  ``{"responseCode": 1, "lastSeq": L, "epoch", "changes": [{"seq", "key", "op": "put"|"delete",
  "values"}]}``, seq > after in order (limit 1000 by default, at most 10000; ``lastSeq`` >= every seq
  in the page). With ``wait`` (at most 30 s) and nothing new it long-polls until a write commits or
  the wait ends. A mirror adds its name and epoch: its ``after`` is then its acknowledgement that it
  has applied everything up to ``after`` (counted for a peer of this node at this node's epoch; the
  log is trimmed below what every peer acknowledged, ``nodes.replication.retention``). HTTP 410
  (responseCode 2, ``firstSeq``, ``lastSeq``, a message saying the log was trimmed) when the entries
  after ``after`` are no longer kept: the mirror copies a snapshot again.
- ``GET /api/replication/snapshot[?after_key=KEY]`` -> a stream of maps (msgpack objects back to back,
  or NDJSON lines): ``{"responseCode": 1, "lastSeq": L, "epoch", "node"}``, then ``{"key", "values"}``
  per record in key order after ``after_key`` (to resume a cut stream), then
  ``{"responseCode": 1, "done": true, "count": N}``; no trailer means cut short,
  ``{"responseCode": 2, "message"}`` failed. The records are read a page at a time by key cursor
  (``Storage.records_after``) and sent as read, so memory stays one page whatever the node holds. L
  is read before the first page, so replaying the changes after L converges: puts and deletes carry
  whole records, so they are idempotent and the last one for a key wins. Every stored record is
  sent, whatever its prefix, so that equal data gives equal digests.
- ``GET /api/replication/status[?digest=false]`` -> role, node, epoch, writable, roleSource
  ("topology", or "promoted"/"demoted": a stored role, which wins over the topology; ``note`` then
  says how it differs), lastSeq and firstSeq (the newest and the oldest entry this node's own log
  keeps: ``firstSeq`` is ``lastSeq + 1`` when it keeps none), records and digest (``Storage.digest``,
  kept up to date by the write path; for the operator, or anyone with ``public_digest``;
  ``digest=false`` skips them), ``message`` when writes are refused. A primary adds ``syncMirrors``
  and ``mirrors``: per mirror that polled it, ``appliedSeq``, ``lagSeq`` and ``seenSecondsAgo``. A
  mirror adds appliedSeq (the upstream's seq applied), snapshotSeq, primary (URL), primaryNode,
  primaryEpoch, connected, state ("connecting", "copying", "following" or "failing":
  ``follower.MirrorState``), lagSeq, lagSeconds (0 while connected and caught up, else seconds since
  it last was, null if never) and lastError (null while all is well, and while the upstream has been
  unreachable for less than ``follower.CONNECT_GRACE`` seconds: state "connecting" then).
- ``GET /api/replication/digest[?bucket=B&after_key=K]``: the digest by buckets of the key space, so
  two nodes can find where they differ (``nodes.replication.digests``).
- ``POST /api/replication/promote`` -> ``{"responseCode": 1, "role": "primary", "epoch": N, "fenced",
  "message"}``: see ``nodes.replication.roles`` (roles, epochs, peer checks, fencing, sync_mirrors).
- ``POST /api/replication/fence?node=NAME&epoch=E`` -> ``{"responseCode": 1, "node", "role", "lastSeq"}``:
  the peer NAME is being promoted to epoch E; a primary stops taking writes first (``Replication.fence``).

Values: in msgpack (between nodes, DESIGN §4) ``values`` is one ``bin`` blob, exactly
``codec.pack_values`` output, so a mirror stores bit for bit what the primary holds, unvalidated and
unchanged. In JSON/NDJSON (for people) it is the list of HANDLE.NET wire values. A delete: null.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from aiohttp import web

from nodes.authoritative.authority import AUTHORITY, Authority
from nodes.replication.access import may_read_digest, operator_only
from nodes.replication.digests import get_digest
from nodes.replication.follower import APPLIED_SEQ, PAGE_BYTES, SNAPSHOT_SEQ, meta_int
from nodes.replication.roles import REPLICATION
from nodes.shared.http_api import query_bool, query_int, respond
from resolver.codec import JSON, MSGPACK, NDJSON, choose_media_type, encode, unpack_values
from resolver.errors import HandleError, ProtocolError
from resolver.storage import Change, PackedChange
from resolver.values import value_to_wire

__all__ = ["setup_replication"]

log = logging.getLogger("idres.replication")

DEFAULT_LIMIT = 1_000
MAX_LIMIT = 10_000
MAX_WAIT = 30.0
# A long-poll also rereads the log this often, so writes that bypass the Authority (another process
# on the same database file, or a direct store.write) are still seen within a second.
RECHECK_SECONDS = 1.0
# Records per read of a snapshot: what the primary holds in memory per mirror copying. Typical records
# (~400 bytes) make a page of ~100 KB; even 256 records at the 256 KiB record limit stay at 64 MB.
SNAPSHOT_PAGE = 256


# -- serving: every authoritative node ---------------------------------------------------------


def _change_body(change: Change) -> dict[str, Any]:
    values = None if change.op == "delete" else [value_to_wire(v) for v in change.values]
    return {"seq": change.seq, "key": change.key, "op": change.op, "values": values}


def _packed_change_body(change: PackedChange) -> dict[str, Any]:
    # The stored bytes are exactly pack_values output: sent as they are, never decoded here.
    return {"seq": change.seq, "key": change.key, "op": change.op, "values": change.blob}


async def _read_changes(authority: Authority, after: int, limit: int, packed: bool) -> tuple[list[dict[str, Any]], int]:
    """The change bodies after ``after`` and the newest seq among them (0 if none)."""
    if packed:
        raw = await authority.store.changes_packed(after, limit)
        size = 0
        for count, change in enumerate(raw):  # at most PAGE_BYTES of values, at least one change
            size += len(change.blob or b"")
            if size > PAGE_BYTES and count:
                raw = raw[:count]
                break
        return [_packed_change_body(c) for c in raw], raw[-1].seq if raw else 0
    changes = await authority.store.changes(after, limit)
    return [_change_body(c) for c in changes], changes[-1].seq if changes else 0


async def get_changes(request: web.Request) -> web.Response:
    authority = await operator_only(request)
    after, limit = query_int(request, "after") or 0, query_int(request, "limit") or DEFAULT_LIMIT
    try:
        wait = float(request.query.get("wait") or 0)
    except ValueError:
        raise ProtocolError(f"parameter wait={request.query['wait']!r} is not a number of seconds") from None
    if after < 0 or limit < 0 or not 0 <= wait < math.inf:
        raise ProtocolError("after, limit and wait must not be negative")
    limit, wait = min(limit, MAX_LIMIT), min(wait, MAX_WAIT)
    replication = request.app[REPLICATION]
    node, epoch = request.query.get("node"), query_int(request, "epoch")
    if node and epoch == replication.epoch and any(peer.name == node for peer in replication.peers):
        replication.acks.report(node, after)  # a mirror's `after` is what it has applied
    feed = replication.feed
    packed = choose_media_type(request.headers.get("Accept")) == MSGPACK
    store = authority.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        # Take the event before reading: a write committing after the read sets this very event,
        # so it cannot slip in between the read and the wait unnoticed.
        woken = feed.event
        found, newest = await _read_changes(authority, after, limit, packed)
        # Asked after the page: trimming only removes the oldest entries, so if the entry after `after`
        # is kept now, it was when the page was read, and the page starts right after `after`.
        first = await store.first_seq()
        if after < first - 1:
            last = await store.last_seq()
            return respond(request, 410, _trimmed_body(authority, after, first, last, replication.epoch))
        remaining = deadline - loop.time()
        if found or remaining <= 0 or feed.closing:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), min(remaining, RECHECK_SECONDS))
    last = max(await store.last_seq(), newest)
    body = {"responseCode": 1, "lastSeq": last, "epoch": replication.epoch, "changes": found}
    return respond(request, 200, body)


def _trimmed_body(authority: Authority, after: int, first: int, last: int, epoch: int) -> dict[str, Any]:
    """The answer to a mirror that fell behind the trimmed log: copy a snapshot, then follow from its lastSeq."""
    message = (
        f"the change log of {authority.spec.name} was trimmed: it keeps seq {first} to {last}, so the changes "
        f"after seq {after} are gone; copy a snapshot (GET /api/replication/snapshot) and follow from its lastSeq"
    )
    return {"responseCode": 2, "message": message, "firstSeq": first, "lastSeq": last, "epoch": epoch}


async def get_snapshot(request: web.Request) -> web.StreamResponse:
    authority = await operator_only(request)
    replication = request.app[REPLICATION]
    feed = replication.feed
    cursor = request.query.get("after_key", "")
    packed = choose_media_type(request.headers.get("Accept")) == MSGPACK

    def frame(key: str, blob: bytes) -> bytes:
        if packed:  # the stored bytes, never decoded here
            return encode({"key": key, "values": blob}, MSGPACK)
        return encode({"key": key, "values": [value_to_wire(v) for v in unpack_values(blob)]}, JSON) + b"\n"

    def message(obj: dict[str, Any]) -> bytes:
        return encode(obj, MSGPACK) if packed else encode(obj, JSON) + b"\n"

    store = authority.store
    last = await store.last_seq()  # before the first page: see the module docstring
    response = web.StreamResponse(headers={"Content-Type": MSGPACK if packed else NDJSON})
    await response.prepare(request)
    count = 0
    try:
        head = {"responseCode": 1, "lastSeq": last, "epoch": replication.epoch, "node": authority.spec.name}
        await response.write(message(head))
        while True:
            if feed.closing:
                return response  # no trailer: the mirror resumes after the last key it got
            # Every stored record, whatever its prefix, so that equal data gives equal digests. A page
            # at a time by key cursor: only one page sits in memory, and a key that exists throughout is
            # sent whatever is written meanwhile (keys never move; offset paging could skip one).
            page = await store.records_after(cursor, SNAPSHOT_PAGE)
            if not page:
                break
            await response.write(b"".join(frame(key, blob) for key, blob in page))
            count += len(page)
            cursor = page[-1][0]
        await response.write(message({"responseCode": 1, "done": True, "count": count}))
    except ConnectionError:
        return response  # the mirror went away; it will ask again
    except HandleError as exc:
        log.warning("snapshot for %s failed after %d records: %s", request.remote, count, exc.message)
        await response.write(message({"responseCode": exc.response_code, "message": exc.message}))
    return response


async def get_status(request: web.Request) -> web.Response:
    authority, replication = request.app[AUTHORITY], request.app[REPLICATION]
    store = authority.store
    last = await store.last_seq()
    body: dict[str, Any] = {
        "responseCode": 1,
        "role": replication.role,
        "node": authority.spec.name,
        "epoch": replication.epoch,
        "writable": not authority.read_only,
        "roleSource": replication.role_source,
        "lastSeq": last,
        "firstSeq": await store.first_seq(),
    }
    note = replication.note()
    if note:
        body["note"] = note
    if authority.read_only:
        body["message"] = authority.read_only_message
    if query_bool(request, "digest", default=True) and await may_read_digest(request):
        body["records"], body["digest"] = await store.digest()
    state = replication.mirror
    if replication.role == "primary":
        now = time.monotonic()
        body["syncMirrors"] = replication.sync
        body["mirrors"] = {
            name: {"appliedSeq": seq, "lagSeq": max(last - seq, 0), "seenSecondsAgo": round(now - seen, 3)}
            for name, (seq, seen) in sorted(replication.acks.applied.items())
        }
    elif state is not None:
        applied = await meta_int(store, APPLIED_SEQ)
        body.update(
            appliedSeq=applied,
            snapshotSeq=await meta_int(store, SNAPSHOT_SEQ),
            primary=state.primary,
            primaryNode=state.name,
            primaryEpoch=state.primary_epoch,
            connected=state.connected,
            state=state.state,
            lagSeq=None if state.primary_seq is None else max(state.primary_seq - (applied or 0), 0),
            lagSeconds=state.lag_seconds(applied),
            lastError=state.last_error,
        )
    return respond(request, 200, body)


async def post_promote(request: web.Request) -> web.Response:
    """Make this node the writable primary (see ``nodes.replication.roles``); the operator only."""
    await operator_only(request)
    done = await request.app[REPLICATION].promote()
    body = {"responseCode": 1, "role": "primary", "epoch": done.epoch, "fenced": done.fenced, "message": done.message}
    return respond(request, 200, body)


async def post_fence(request: web.Request) -> web.Response:
    """A peer is being promoted: stop taking writes and answer the last seq; the operator only."""
    authority = await operator_only(request)
    node, epoch = request.query.get("node", ""), query_int(request, "epoch")
    if not node or epoch is None or epoch < 1:
        raise ProtocolError("fence needs node=NAME (the peer being promoted) and epoch=E (its new epoch, >= 1)")
    replication = request.app[REPLICATION]
    last = await replication.fence(node, epoch)
    body = {"responseCode": 1, "node": authority.spec.name, "role": replication.role, "lastSeq": last}
    return respond(request, 200, body)


# -- wiring ----------------------------------------------------------------------------------------


async def _wake_long_polls(app: web.Application) -> None:
    replication = app.get(REPLICATION)
    if replication is not None:  # None: the node failed before replication started
        replication.feed.close()


def setup_replication(app: web.Application) -> None:
    """Add the replication endpoints. Replication itself runs in the node's start-up context
    (``nodes.authoritative.app``), which puts it under ``REPLICATION`` once it observes the authority."""
    app.router.add_get("/api/replication/changes", get_changes)
    app.router.add_get("/api/replication/snapshot", get_snapshot)
    app.router.add_get("/api/replication/status", get_status)
    app.router.add_get("/api/replication/digest", get_digest)
    app.router.add_post("/api/replication/promote", post_promote)
    app.router.add_post("/api/replication/fence", post_fence)
    # on_shutdown runs before aiohttp waits for open requests: a 30 s long-poll must not hold it up.
    app.on_shutdown.append(_wake_long_polls)
