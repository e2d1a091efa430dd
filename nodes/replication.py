"""Pull replication: every node serves its change log and a snapshot; a mirror copies, then follows.

Endpoints (changes and snapshot are operator-only, ``300:0.NA/<prefix>``, as they carry non-public
values such as hashed HS_SECKEY; status is public):

- ``GET /api/replication/changes?after=SEQ&limit=N&wait=SECONDS`` -> ``{"responseCode": 1, "lastSeq": L,
  "changes": [{"seq", "key", "op": "put"|"delete", "values"}]}``, seq > after in order (limit 1000 by
  default, at most 10000; ``lastSeq`` >= every seq in the page). With ``wait`` (at most 30 s) and
  nothing new it long-polls until a write commits or the wait ends.
- ``GET /api/replication/snapshot[?after_key=KEY]`` -> a stream of maps (msgpack objects back to back,
  or NDJSON lines): ``{"responseCode": 1, "lastSeq": L, "node"}``, then ``{"key", "values"}`` per record
  in (prefix, key) order after ``after_key`` (to resume a cut stream), then ``{"responseCode": 1,
  "done": true, "count": N}``; no trailer means cut short, ``{"responseCode": 2, "message"}`` failed.
  L is read before any key is listed, so replaying the changes after L converges: puts and deletes
  carry whole records, so they are idempotent and the last one for a key wins.
- ``GET /api/replication/status`` -> role, node, lastSeq (of this node's own log); on a mirror also
  appliedSeq (the primary's seq applied), snapshotSeq, primary, connected, lagSeconds (0 while
  connected and caught up, else seconds since it last was, null if never) and lastError.

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
from bisect import bisect_right
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import msgpack
from aiohttp import web

from nodes.http import query_int, respond
from nodes.keys import AUTHORITY, CONFIG, REPLICATION
from resolver.client import HandleClient, basic_auth
from resolver.codec import JSON, MSGPACK, NDJSON, choose_media_type, encode, pack_values, unpack_values
from resolver.errors import AuthenticationNeeded, HandleError, PermissionDenied, ProtocolError
from resolver.names import PREFIX_NA, prefix_handle
from resolver.storage import Change, Storage, Write
from resolver.values import HandleValue, value_to_wire

if TYPE_CHECKING:
    from nodes.authority import Authority

__all__ = ["ChangeFeed", "MirrorState", "Replication", "setup_replication"]

log = logging.getLogger("idres.replication")

DEFAULT_LIMIT = 1_000
MAX_LIMIT = 10_000
MAX_WAIT = 30.0
# A long-poll also rereads the log this often, so writes that bypass this process's store object
# (another process on the same database file) are still seen within a second.
RECHECK_SECONDS = 1.0
POLL_WAIT = 20  # what a mirror asks for: long enough to idle cheaply, well under MAX_WAIT
POLL_PAGE = 1_000  # a page is unpacked and repacked on the primary's event loop: keep it short
SNAPSHOT_CHUNK = 500  # records per get_many on the primary and per apply_replicated on the mirror
SNAPSHOT_READ_TIMEOUT = 60.0  # silence mid-stream longer than this means the primary is gone
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
APPLIED_SEQ = "applied_seq"  # meta: the primary's last seq this mirror has applied
SNAPSHOT_SEQ = "snapshot_seq"  # meta: lastSeq of the first snapshot attempt; replay starts there


class ReplicationError(Exception):
    """The primary's answer cannot be used; the mirror logs it and tries again later."""


class ChangeFeed:
    """Wakes long-polls when a write commits: each write sets the current event and starts a new one."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.closing = False

    def notify(self) -> None:
        self.event.set()
        self.event = asyncio.Event()

    def close(self) -> None:
        """The node is shutting down: answer every long-poll now rather than hold up the shutdown."""
        self.closing = True
        self.notify()


class _NotifyingStorage:
    """The node's ``Storage`` with one addition: every write, whoever makes it, wakes the feed."""

    def __init__(self, inner: Storage, feed: ChangeFeed) -> None:
        self._inner = inner
        self._feed = feed

    async def write(self, writes: Sequence[Write]) -> int:
        try:
            return await self._inner.write(writes)
        finally:
            # Even when the caller was cancelled: the shielded transaction may still have committed.
            self._feed.notify()

    def __getattr__(self, name: str) -> Any:
        # Everything else goes straight through, including methods Storage gains later.
        return getattr(self._inner, name)


@dataclass(slots=True)
class MirrorState:
    """What a mirror's puller knows about its link to the primary, for the status endpoint."""

    primary: str  # URL
    connected: bool = False
    caught_up: bool = False
    synced_at: float | None = None  # time.monotonic() when it last knew it had everything
    last_error: str | None = None

    def lag_seconds(self) -> float | None:
        if self.connected and self.caught_up:
            return 0.0
        return None if self.synced_at is None else round(time.monotonic() - self.synced_at, 3)


@dataclass(slots=True)
class Replication:
    """Per-app replication state (room for epochs, acknowledgements and digests later)."""

    feed: ChangeFeed = field(default_factory=ChangeFeed)
    mirror: MirrorState | None = None


# -- serving: every authoritative node ---------------------------------------------------------


async def _operator(request: web.Request) -> Authority:
    authority = request.app[AUTHORITY]
    identity = await authority.authenticate(request.headers.get("Authorization"))
    if identity is None:
        raise AuthenticationNeeded(f"replication needs the operator's credentials ({authority.operator})")
    operator = authority.operator
    if (identity.index, identity.key) != (operator.index, operator.key):
        raise PermissionDenied(f"{identity} may not replicate: only the node's operator {operator} may")
    return authority


def _wire_values(values: Sequence[HandleValue] | None, packed: bool) -> Any:
    if values is None:
        return None
    return pack_values(values) if packed else [value_to_wire(v) for v in values]


def _change_body(change: Change, packed: bool) -> dict[str, Any]:
    values = None if change.op == "delete" else change.values
    return {"seq": change.seq, "key": change.key, "op": change.op, "values": _wire_values(values, packed)}


async def get_changes(request: web.Request) -> web.Response:
    authority = await _operator(request)
    after, limit = query_int(request, "after") or 0, query_int(request, "limit") or DEFAULT_LIMIT
    try:
        wait = float(request.query.get("wait") or 0)
    except ValueError:
        raise ProtocolError(f"parameter wait={request.query['wait']!r} is not a number of seconds") from None
    if after < 0 or limit < 0 or not 0 <= wait < math.inf:
        raise ProtocolError("after, limit and wait must not be negative")
    limit, wait = min(limit, MAX_LIMIT), min(wait, MAX_WAIT)
    feed = request.app[REPLICATION].feed
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        # Take the event before reading: a write committing after the read sets this very event,
        # so it cannot slip in between the read and the wait unnoticed.
        woken = feed.event
        found = await authority.store.changes(after, limit)
        remaining = deadline - loop.time()
        if found or remaining <= 0 or feed.closing:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), min(remaining, RECHECK_SECONDS))
    last = max(await authority.store.last_seq(), found[-1].seq if found else 0)
    packed = choose_media_type(request.headers.get("Accept")) == MSGPACK
    body = {"responseCode": 1, "lastSeq": last, "changes": [_change_body(c, packed) for c in found]}
    return respond(request, 200, body)


async def _prefixes(authority: Authority) -> list[str]:
    """Every prefix under which this node can hold records, sorted (the snapshot's order).

    A record can only be written under a prefix this node serves: its own, a hosted one (configured,
    or a prefix handle without HS_SITE), and 0.NA itself. Delegated ones are added for records left
    from before a delegation. Records under a prefix whose prefix handle was deleted are unreachable
    and are not copied (Storage has no listing across prefixes).
    """
    _, na_keys = await authority.store.list_keys(PREFIX_NA)
    zone = authority.zone
    found = {PREFIX_NA, zone.own, *authority.spec.hosts, *zone.hosted, *zone.delegated}
    found.update(key.partition("/")[2] for key in na_keys)
    return sorted(found)


async def get_snapshot(request: web.Request) -> web.StreamResponse:
    authority = await _operator(request)
    feed = request.app[REPLICATION].feed
    after_key = request.query.get("after_key", "")
    after_prefix = after_key.partition("/")[0]
    packed = choose_media_type(request.headers.get("Accept")) == MSGPACK

    def frame(obj: dict[str, Any]) -> bytes:
        return encode(obj, MSGPACK) if packed else encode(obj, JSON) + b"\n"

    store = authority.store
    last = await store.last_seq()  # before listing: see the module docstring
    prefixes = await _prefixes(authority)
    response = web.StreamResponse(headers={"Content-Type": MSGPACK if packed else NDJSON})
    await response.prepare(request)
    count = 0
    try:
        await response.write(frame({"responseCode": 1, "lastSeq": last, "node": authority.spec.name}))
        for prefix in prefixes:
            if after_key and prefix < after_prefix:
                continue
            # One statement per prefix: a consistent view, so no key is skipped by concurrent writes
            # (offset paging could skip one); only the keys sit in memory, records go by chunks.
            _, keys = await store.list_keys(prefix)
            start = bisect_right(keys, after_key) if after_key and prefix == after_prefix else 0
            for i in range(start, len(keys), SNAPSHOT_CHUNK):
                if feed.closing:
                    return response  # no trailer: the mirror resumes after the last key it got
                batch = keys[i : i + SNAPSHOT_CHUNK]
                records = await store.get_many(batch)
                # A listed key missing now was deleted after `last`; replaying that delete covers it.
                frames = [
                    frame({"key": k, "values": _wire_values(records[k].values, packed)}) for k in batch if k in records
                ]
                count += len(frames)
                await response.write(b"".join(frames))
        await response.write(frame({"responseCode": 1, "done": True, "count": count}))
    except ConnectionError:
        return response  # the mirror went away; it will ask again
    except HandleError as exc:
        log.warning("snapshot for %s failed after %d records: %s", request.remote, count, exc.message)
        await response.write(frame({"responseCode": exc.response_code, "message": exc.message}))
    return response


async def get_status(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    spec = authority.spec
    body: dict[str, Any] = {
        "responseCode": 1,
        "role": "mirror" if spec.is_mirror else "primary",
        "node": spec.name,
        "lastSeq": await authority.store.last_seq(),
    }
    state = request.app[REPLICATION].mirror
    if state is not None:
        applied = await authority.store.get_meta(APPLIED_SEQ)
        snapshot = await authority.store.get_meta(SNAPSHOT_SEQ)
        body.update(
            appliedSeq=None if applied is None else int(applied),
            snapshotSeq=None if snapshot is None else int(snapshot),
            primary=state.primary,
            connected=state.connected,
            lagSeconds=state.lag_seconds(),
            lastError=state.last_error,
        )
    return respond(request, 200, body)


# -- pulling: a mirror -----------------------------------------------------------------------------


def _write_of(item: dict[str, Any]) -> Write:
    """The Write a replicated ``{"key", "values"[, "op"]}`` item stands for (values: a pack_values blob)."""
    key, values = item.get("key"), item.get("values")
    if not isinstance(key, str):
        raise ReplicationError(f"replicated item without a key: {str(item)[:200]}")
    if item.get("op") == "delete":
        return Write(key, None)
    if not isinstance(values, bytes):
        raise ReplicationError(f"replicated put of {key!r} carries no packed values")
    return Write(key, unpack_values(values))


async def _stream_items(resp: aiohttp.ClientResponse) -> AsyncGenerator[dict[str, Any], None]:
    """The msgpack maps of a streamed body, decoded as the bytes arrive."""
    unpacker = msgpack.Unpacker(raw=False)
    async for chunk in resp.content.iter_chunked(65_536):
        unpacker.feed(chunk)
        for item in unpacker:
            if not isinstance(item, dict):
                raise ReplicationError(f"snapshot: unexpected item {str(item)[:200]}")
            yield item


class Mirror:
    """A mirror's background puller: copy a snapshot once, then follow the primary's change log."""

    def __init__(self, authority: Authority, state: MirrorState, session: aiohttp.ClientSession, auth: str) -> None:
        self._authority = authority
        self._state = state
        self._session = session
        self._auth = auth
        # The long-poll holds the request open for POLL_WAIT; allow for that plus a slow answer.
        self._client = HandleClient(session, timeout=POLL_WAIT + 10)
        self._resume_key = ""  # the last snapshot key applied, so a cut stream resumes after it
        self._delay = BACKOFF_MIN

    async def run(self) -> None:
        store = self._authority.store
        while True:
            try:
                if await store.get_meta(APPLIED_SEQ) is None:
                    await self._copy_snapshot()
                await self._follow()
            except Exception as exc:  # keep replicating whatever went wrong; reads never stop
                message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if message != self._state.last_error:  # once per new problem, not once per retry
                    expected = isinstance(exc, ReplicationError | HandleError | aiohttp.ClientError | OSError)
                    log.warning("replication from %s: %s", self._state.primary, message, exc_info=not expected)
                self._state.connected = self._state.caught_up = False
                self._state.last_error = message
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, BACKOFF_MAX)

    def _reached(self, *, caught_up: bool) -> None:
        """The primary answered: reset the backoff and note whether this mirror has everything."""
        self._delay = BACKOFF_MIN
        self._state.connected, self._state.caught_up, self._state.last_error = True, caught_up, None
        if caught_up:
            self._state.synced_at = time.monotonic()

    async def _copy_snapshot(self) -> None:
        store = self._authority.store
        params = {"after_key": self._resume_key} if self._resume_key else {}
        headers = {"Accept": MSGPACK, "Authorization": self._auth}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=SNAPSHOT_READ_TIMEOUT)
        url = self._state.primary + "/api/replication/snapshot"
        stream = self._session.get(url, params=params, headers=headers, timeout=timeout)
        async with stream as resp, contextlib.aclosing(_stream_items(resp)) as items:
            if resp.status != 200 or resp.content_type != MSGPACK:
                raise ReplicationError(f"snapshot: HTTP {resp.status}: {(await resp.read())[:300]!r}")
            header = await anext(items, None)
            last = header.get("lastSeq") if header else None
            if header is None or header.get("responseCode") != 1 or not isinstance(last, int):
                raise ReplicationError(f"snapshot: bad header {str(header)[:200]}")
            base_text = await store.get_meta(SNAPSHOT_SEQ)
            if base_text is None:
                # Replay starts at the first attempt's lastSeq even if this one is cut and retried:
                # a record copied then and deleted since is only removed by replaying that delete.
                await store.set_meta(SNAPSHOT_SEQ, str(last))
            base = last if base_text is None else min(int(base_text), last)
            self._reached(caught_up=False)
            batch: list[Write] = []
            received = 0
            cut = "the stream ended before its end marker"
            try:
                async for item in items:
                    if "key" in item:
                        batch.append(_write_of(item))
                        received += 1
                        if len(batch) >= SNAPSHOT_CHUNK:
                            await self._apply_snapshot(batch)
                            batch = []
                    elif item.get("done") is True and item.get("count") == received:
                        await self._apply_snapshot(batch)
                        await store.set_meta(APPLIED_SEQ, str(base))
                        self._resume_key = ""
                        log.info("copied a snapshot of %d records from %s", received, self._state.primary)
                        return
                    else:
                        cut = f"the primary reported {str(item)[:200]}"
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                cut = f"{type(exc).__name__}: {exc}"
            # Cut short: the records that did arrive are whole, so keep them and resume after the last.
            await self._apply_snapshot(batch)
        raise ReplicationError(f"snapshot after {received} records: {cut}")

    async def _apply_snapshot(self, batch: list[Write]) -> None:
        if batch:
            await self._authority.apply_replicated(batch)
            self._resume_key = batch[-1].key

    async def _follow(self) -> None:
        store = self._authority.store
        applied = int(await store.get_meta(APPLIED_SEQ) or 0)
        while True:
            params = {"after": str(applied), "limit": str(POLL_PAGE), "wait": str(POLL_WAIT)}
            reply = await self._client.request(
                "GET", self._state.primary, "/api/replication/changes", params=params, authorization=self._auth
            )
            if reply.status != 200 or reply.response_code != 1:
                raise ReplicationError(f"changes: HTTP {reply.status}: {reply.body.get('message', reply.body)}")
            last, items = reply.body.get("lastSeq"), reply.body.get("changes")
            if not isinstance(last, int) or not isinstance(items, list):
                raise ReplicationError(f"changes: malformed answer {str(reply.body)[:200]}")
            writes: list[Write] = []
            seq = applied
            for item in items:
                ok = isinstance(item, dict) and item.get("op") in ("put", "delete") and isinstance(item.get("seq"), int)
                if not ok or item["seq"] <= seq:
                    raise ReplicationError(f"changes: bad or out-of-order item after seq {seq}: {str(item)[:200]}")
                writes.append(_write_of(item))
                seq = item["seq"]
            if writes:
                await self._authority.apply_replicated(writes)
                # A crash here, before applied_seq moves, makes the next start fetch and apply this
                # page again: harmless, since whole-record puts and deletes replayed in order end in
                # the same state.
                await store.set_meta(APPLIED_SEQ, str(seq))
                applied = seq
            if last < applied:
                # The primary's log is behind ours (restored from an old backup?): epochs will settle
                # this; until then keep the data and say so.
                raise ReplicationError(f"the primary's lastSeq {last} is behind the applied seq {applied}")
            self._reached(caught_up=applied >= last)


# -- wiring ----------------------------------------------------------------------------------------


async def _replication_ctx(app: web.Application) -> AsyncIterator[None]:
    authority, config, replication = app[AUTHORITY], app[CONFIG], app[REPLICATION]
    authority.store = _NotifyingStorage(authority.store, replication.feed)
    task: asyncio.Task[None] | None = None
    session: aiohttp.ClientSession | None = None
    if config.spec.mirror_of is not None:
        primary = config.topology.node(config.spec.mirror_of)
        replication.mirror = state = MirrorState(primary.url)
        auth = basic_auth(f"300:{prefix_handle(config.spec.prefix or '')}", config.operator_secret)
        session = aiohttp.ClientSession()
        task = asyncio.create_task(Mirror(authority, state, session, auth).run(), name=f"replicate-{primary.name}")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if session is not None:
            await session.close()


async def _wake_long_polls(app: web.Application) -> None:
    app[REPLICATION].feed.close()


def setup_replication(app: web.Application) -> None:
    """Add the replication endpoints and, on a mirror, the task that pulls from the primary."""
    app[REPLICATION] = Replication()
    app.router.add_get("/api/replication/changes", get_changes)
    app.router.add_get("/api/replication/snapshot", get_snapshot)
    app.router.add_get("/api/replication/status", get_status)
    # on_shutdown runs before aiohttp waits for open requests: a 30 s long-poll must not hold it up.
    app.on_shutdown.append(_wake_long_polls)
    # After _storage_ctx (create_app calls this last), so the store and authority exist here.
    app.cleanup_ctx.append(_replication_ctx)
