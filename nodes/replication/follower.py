"""A mirror's puller: copy a snapshot of the node it follows, then follow that node's change log.

The wire format is described in ``nodes.replication.endpoints``. What the puller keeps in the meta table:

- ``applied_seq``: the upstream's last seq this mirror has applied; absent or "" means "copy a snapshot
  first" ("" is how a demotion resets it, as Storage has no way to delete a meta entry).
- ``snapshot_seq``: lastSeq of the first snapshot attempt; the change log is replayed from there.
- ``snapshot_key``: the last key of the snapshot applied so far, so a cut stream (or a restart)
  resumes after it rather than from the start.
- ``resync``: "1" after a demotion, or when the upstream answered 410 (its log was trimmed past what
  this mirror applied). The local records may then hold what the upstream no longer does, so the
  snapshot is merged in: it comes in key order, and with each page the local keys between the
  previous page's last key and this page's last key that the page lacks are deleted, and at the end
  every local key after the last one sent. Only one page is held in memory, and the walk resumes
  from ``snapshot_key`` like the copy.

Every answer carries the upstream's epoch; ``check_epoch`` refuses one below this node's own (the
upstream was superseded by a promotion) and adopts a higher one.

What the puller reports (``MirrorState``, shown by ``/api/replication/status``): ``state`` is
"connecting" until the upstream first answers (and again after the link fails), "copying" while a
snapshot streams in, "following" once it follows the change log, and "failing" while ``lastError``
names a problem. A failure to reach the upstream (refused, cut, timed out) is a restart in progress
until it has lasted ``CONNECT_GRACE`` seconds: until then the mirror says "connecting" and names no
error. Anything else the upstream answers wrong (a bad page, a lower epoch, a refused snapshot) is
named at once. The first poll after each (re)connection does not wait, so the mirror knows within
one round trip that it is connected and whether it is caught up, rather than once a long-poll ends
(up to ``POLL_WAIT`` seconds later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import msgpack

from resolver.backoff import backoff_delay
from resolver.client import HandleClient
from resolver.codec import MSGPACK
from resolver.errors import FailureKind, HandleError, ReplicationError, UpstreamError
from resolver.limits import DEFAULT_LIMITS
from resolver.storage import Storage, Write

if TYPE_CHECKING:
    from nodes.authoritative.authority import Authority

__all__ = [
    "APPLIED_SEQ",
    "CONNECT_GRACE",
    "RESYNC",
    "SNAPSHOT_KEY",
    "SNAPSHOT_SEQ",
    "Mirror",
    "MirrorPhase",
    "MirrorState",
    "is_transient",
    "meta_int",
]

log = logging.getLogger("idres.replication")

POLL_WAIT = 20  # what a mirror asks for: long enough to idle cheaply, well under the primary's maximum
POLL_PAGE = 5_000  # changes per request; values travel as stored, so a page costs little CPU on either side
# A primary stops a page of changes once its values pass this many bytes (it always sends at least one
# change): 5,000 bulk-loaded records are about 2 MB, so pages stay whole for them, while 5,000 records
# near the 256 KiB record limit could not make one answer a mirror will read. The mirror reads up to
# this plus one record and the page's framing (ANSWER_BYTES), its client's cap on a changes answer.
PAGE_BYTES = 8 * 1_048_576
ANSWER_BYTES = PAGE_BYTES + 2 * DEFAULT_LIMITS.max_record_bytes + 1_048_576
# Records per apply_replicated on the mirror (one transaction), or fewer once their values pass the
# byte bound: 5,000 bulk-loaded records are ~2 MB, while 5,000 near the record limit would be 1.3 GB.
# A transaction's digest buckets cost as much as its records when it has few (500 records touched
# ~400 of the 1,024 buckets): at 5,000 a copy spends its time on records.
SNAPSHOT_CHUNK = 5_000
SNAPSHOT_CHUNK_BYTES = 4 * 1_048_576
RECONCILE_PAGE = 1_000  # local keys read at a time while a resync looks for what to delete
SNAPSHOT_READ_TIMEOUT = 60.0  # silence mid-stream longer than this means the primary is gone
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
# Seconds an upstream may stay unreachable before the mirror reports an error rather than "connecting":
# a restarted node is back within a few (start-up, then its peer check of PEER_TIMEOUT per peer), and
# the backoff above has retried five times by then (0.2 + 0.4 + 0.8 + 1.6 s).
CONNECT_GRACE = 5.0
APPLIED_SEQ = "applied_seq"
SNAPSHOT_SEQ = "snapshot_seq"
SNAPSHOT_KEY = "snapshot_key"
RESYNC = "resync"


async def meta_int(store: Storage, name: str) -> int | None:
    """A numeric meta entry; None when absent or reset to ""."""
    text = await store.get_meta(name)
    return int(text) if text else None


MirrorPhase = Literal["connecting", "copying", "following", "failing"]
_TRANSIENT_KINDS = frozenset({FailureKind.CANNOT_CONNECT, FailureKind.CONNECTION_LOST, FailureKind.TIMEOUT})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` only says the upstream could not be reached (it may be restarting), as opposed
    to an answer this mirror refuses."""
    if isinstance(exc, UpstreamError):
        return bool(exc.attempts) and all(a.kind in _TRANSIENT_KINDS for a in exc.attempts)
    return isinstance(exc, aiohttp.ClientConnectionError | OSError | TimeoutError)


@dataclass(slots=True)
class MirrorState:
    """What a mirror's puller knows about its link to the node it follows, for the status endpoint.

    Plain bookkeeping: the puller calls ``answered`` and ``failed``, passing the time, and the status
    endpoint reads ``state`` and ``lag_seconds``."""

    primary: str  # URL
    name: str = ""  # the node's name in the topology
    connected: bool = False  # the last exchange with the upstream succeeded
    caught_up: bool = False
    copying: bool = False  # a snapshot is streaming in
    synced_at: float | None = None  # time.monotonic() when it last knew it had everything
    last_error: str | None = None  # a problem worth an operator's eye; None while connecting
    primary_epoch: int | None = None  # as it last answered
    primary_seq: int | None = None  # its lastSeq as it last answered
    failing_since: float | None = None  # time.monotonic() of the first failure since it last answered
    retrying: str | None = None  # the latest failure to reach it, within CONNECT_GRACE (not yet an error)

    @property
    def state(self) -> MirrorPhase:
        if self.connected:
            return "copying" if self.copying else "following"
        return "failing" if self.last_error else "connecting"

    def answered(self, *, caught_up: bool, now: float) -> None:
        """The upstream answered: connected, no error, and synced now if it has everything."""
        self.connected, self.caught_up, self.last_error = True, caught_up, None
        self.failing_since = self.retrying = None
        if caught_up:
            self.synced_at = now

    def failed(self, message: str, *, transient: bool, now: float) -> bool:
        """A round failed saying ``message``; whether that is now a reported error it was not before.

        A ``transient`` failure (the upstream unreachable) is held back while the streak of failures
        is younger than ``CONNECT_GRACE``: a restart of either node looks like that."""
        self.connected = self.caught_up = False
        if self.failing_since is None:
            self.failing_since = now
        if transient and now - self.failing_since < CONNECT_GRACE:
            self.retrying = message
            return False
        self.retrying = None
        new = message != self.last_error
        self.last_error = message
        return new

    def lag_seconds(self, applied: int | None = None, now: float | None = None) -> float | None:
        """0 while connected and caught up (by its last answer, or with ``applied``, the seq this mirror
        has applied, at the upstream's last seq), else seconds since it last was; None if never."""
        if self.connected and not self.copying:
            reached = applied is not None and self.primary_seq is not None and applied >= self.primary_seq
            if self.caught_up or reached:
                return 0.0
        if self.synced_at is None:
            return None
        return round((time.monotonic() if now is None else now) - self.synced_at, 3)


def _write_of(item: dict[str, Any]) -> Write:
    """The Write a replicated ``{"key", "values"[, "op"]}`` item stands for (values: a pack_values blob)."""
    key, values = item.get("key"), item.get("values")
    if not isinstance(key, str):
        raise ReplicationError(f"replicated item without a key: {str(item)[:200]}")
    if item.get("op") == "delete":
        return Write(key, None)
    if not isinstance(values, bytes):
        raise ReplicationError(f"replicated put of {key!r} carries no packed values")
    return Write.packed(key, values)  # stored bit for bit as the primary holds it, not decoded


async def _stream_items(resp: aiohttp.ClientResponse) -> AsyncGenerator[dict[str, Any], None]:
    """The msgpack maps of a streamed body, decoded as the bytes arrive."""
    unpacker = msgpack.Unpacker(raw=False)
    async for chunk in resp.content.iter_chunked(65_536):
        unpacker.feed(chunk)
        for item in unpacker:
            if not isinstance(item, dict):
                raise ReplicationError(f"snapshot: unexpected item {str(item)[:200]}")
            yield item


def _epoch_of(body: dict[str, Any]) -> int:
    epoch = body.get("epoch", 0)  # a node from before epochs is at epoch 0
    if not isinstance(epoch, int) or epoch < 0:
        raise ReplicationError(f"the upstream sent a bad epoch {epoch!r}")
    return epoch


class _Pipeline:
    """Applies a snapshot's pages in order, each while the next one is read and decoded: the write's
    SQLite work runs in a thread, so the two overlap. At most one page is being applied and one
    filled, so memory stays two pages."""

    def __init__(self, apply: Callable[[list[Write]], Awaitable[None]]) -> None:
        self._apply = apply
        self._pending: asyncio.Future[None] | None = None

    async def put(self, page: list[Write]) -> None:
        """Start applying ``page`` once the previous one is applied (raising what that raised)."""
        await self.drain()
        if page:
            self._pending = asyncio.ensure_future(self._apply(page))

    async def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def close(self) -> None:
        """On the way out of a failed copy: let the page being applied finish (it is whole and valid)."""
        with contextlib.suppress(Exception):
            await self.drain()


class Mirror:
    """A mirror's background puller: copy a snapshot once, then follow the upstream's change log."""

    def __init__(
        self,
        authority: Authority,
        state: MirrorState,
        session: aiohttp.ClientSession,
        auth: str,
        *,
        check_epoch: Callable[[int], Awaitable[None]],
        epoch: Callable[[], int],
    ) -> None:
        self._authority = authority
        self._state = state
        self._session = session
        self._auth = auth
        self._check_epoch = check_epoch
        self._epoch = epoch  # this node's current epoch, sent with each poll
        # The long-poll holds the request open for POLL_WAIT; allow for that plus a slow answer.
        self._client = HandleClient(session, timeout=POLL_WAIT + 10, max_answer_bytes=ANSWER_BYTES)
        self._cursor = ""  # the last snapshot key applied (and, in a resync, reconciled)
        self._resumed = ""  # the cursor a resumption was last logged at
        self._purged = 0
        self._retries = 0  # failed rounds since the upstream last answered

    async def run(self) -> None:
        store = self._authority.store
        while True:
            try:
                if await meta_int(store, APPLIED_SEQ) is None:
                    await self._copy_snapshot()
                await self._follow()
            except Exception as exc:  # keep replicating whatever went wrong; reads never stop
                message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                transient = is_transient(exc)
                quiet = self._state.retrying is not None  # already retrying in silence
                if self._state.failed(message, transient=transient, now=time.monotonic()):
                    # Once per new problem, not once per retry. ReplicationError and UpstreamError are
                    # HandleErrors; a traceback only for the unforeseen.
                    expected = isinstance(exc, HandleError | aiohttp.ClientError | OSError)
                    log.warning("replication from %s: %s", self._state.primary, message, exc_info=not expected)
                elif transient and not quiet and self._state.retrying is not None:
                    log.info("replication from %s: %s; reconnecting", self._state.primary, message)
            self._retries += 1
            await asyncio.sleep(backoff_delay(self._retries, first=BACKOFF_MIN, cap=BACKOFF_MAX))

    def _reached(self, *, caught_up: bool) -> None:
        """The upstream answered: reset the backoff and note whether this mirror has everything."""
        self._retries = 0
        self._state.answered(caught_up=caught_up, now=time.monotonic())

    async def _answered(self, body: dict[str, Any]) -> None:
        epoch = _epoch_of(body)
        await self._check_epoch(epoch)  # raises before anything of a superseded node is applied
        self._state.primary_epoch = epoch

    async def _copy_snapshot(self) -> None:
        store = self._authority.store
        base = await meta_int(store, SNAPSHOT_SEQ)
        # A retry (or a restart) resumes after the last key applied; a first attempt starts at the start.
        self._cursor = (await store.get_meta(SNAPSHOT_KEY) or "") if base is not None else ""
        params = {"after_key": self._cursor} if self._cursor else {}
        if self._cursor and self._cursor != self._resumed:  # once per place, not once per retry
            log.info("resuming the snapshot from %s after %r", self._state.primary, self._cursor)
            self._resumed = self._cursor
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
            await self._answered(header)
            self._state.primary_seq = last
            resync = await store.get_meta(RESYNC) == "1"
            if base is None:
                # Replay starts at the first attempt's lastSeq even if this one is cut and retried:
                # a record copied then and deleted since is only removed by replaying that delete.
                await store.set_meta(SNAPSHOT_KEY, "")
                await store.set_meta(SNAPSHOT_SEQ, str(last))
            base = last if base is None else min(base, last)
            self._reached(caught_up=False)
            self._state.copying = True
            self._purged = 0  # this attempt's deletions of what the upstream lacks (a resync)
            batch: list[Write] = []
            size = received = 0
            last_key = self._cursor
            pages = _Pipeline(lambda page: self._apply_snapshot(page, resync))
            cut = "the stream ended before its end marker"
            try:
                try:
                    async for item in items:
                        if "key" in item:
                            write = _write_of(item)
                            if write.key <= last_key:  # the merge walk and the resumption rely on the order
                                raise ReplicationError(f"snapshot: key {write.key!r} out of order")
                            batch.append(write)
                            last_key, received, size = write.key, received + 1, size + len(write.blob or b"")
                            if len(batch) >= SNAPSHOT_CHUNK or size >= SNAPSHOT_CHUNK_BYTES:
                                await pages.put(batch)
                                batch, size = [], 0
                        elif item.get("done") is True and item.get("count") == received:
                            await pages.put(batch)
                            await pages.drain()
                            await self._finish(base, resync, received)
                            self._state.copying = False
                            # Replayed from base: with base at the header's lastSeq it held everything then.
                            self._reached(caught_up=base >= last)
                            return
                        else:
                            cut = f"the upstream reported {str(item)[:200]}"
                            break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    cut = f"{type(exc).__name__}: {exc}"
                # Cut short: the records that did arrive are whole, so keep them and resume after the last.
                await pages.put(batch)
                await pages.drain()
            finally:
                self._state.copying = False
                await pages.close()
        raise ReplicationError(f"snapshot after {received} records: {cut}")

    async def _finish(self, base: int, resync: bool, received: int) -> None:
        """The whole snapshot is applied: in a resync delete what lies past its last key, then follow from ``base``."""
        store = self._authority.store
        if resync:
            self._purged += await self._reconcile(None, set())  # nothing upstream after the last key
            await store.set_meta(RESYNC, "")
            if self._purged:  # counted since this stream began (a resumed one counts its part)
                log.warning("resync: deleted %d records that %s does not hold", self._purged, self._state.primary)
        await store.set_meta(APPLIED_SEQ, str(base))
        await store.set_meta(SNAPSHOT_KEY, "")
        log.info("copied a snapshot of %d records from %s", received, self._state.primary)

    async def _apply_snapshot(self, batch: list[Write], resync: bool) -> None:
        """Apply one page of the snapshot, then remember its last key (stored: a restart resumes there).

        In a resync, first delete the local keys between the previous page and the end of this one
        that the page does not hold: the snapshot comes in key order, so such a key is not held
        upstream (a merge walk; nothing but one page is kept in memory)."""
        if not batch:
            return
        if resync:
            await self._reconcile(batch[-1].key, {w.key for w in batch})
            fresh = False
        else:
            # A first copy holds nothing past its cursor, unless a page was applied and the cursor
            # not stored after it (a crash): then that page goes the way of any write. Otherwise
            # the page is written as new records, without reading or comparing what is stored
            # (a third of the copy's time at 10M).
            fresh = not await self._authority.store.keys_between(self._cursor, None, 1)
        await self._authority.apply_replicated(batch, created=fresh)
        # Stored after the page is applied: a crash in between applies the page again, harmlessly.
        self._cursor = batch[-1].key
        await self._authority.store.set_meta(SNAPSHOT_KEY, self._cursor)

    async def _reconcile(self, upto: str | None, sent: set[str]) -> int:
        """Delete the local keys after the cursor, up to ``upto`` (None: to the end), not in ``sent``;
        how many.

        Correct with writes going on upstream: a key missing from the stream was missing upstream
        when its page was read, after the snapshot's lastSeq; a later put of it is replayed."""
        store, after, deleted = self._authority.store, self._cursor, 0
        while True:
            keys = await store.keys_between(after, upto, RECONCILE_PAGE)
            stale = [Write(key, None) for key in keys if key not in sent]
            if stale:
                await self._authority.apply_replicated(stale)
                deleted += len(stale)
            if len(keys) < RECONCILE_PAGE:
                break
            after = keys[-1]
        return deleted

    async def _follow(self) -> None:
        store = self._authority.store
        applied = await meta_int(store, APPLIED_SEQ) or 0
        wait = 0  # the first poll of a (re)connection answers at once: connected, and caught up or not
        while True:
            # `after` is exactly what this mirror has applied: a primary waiting for acknowledgements
            # (sync_mirrors) counts it, for this node's name, if the epochs agree.
            params = {
                "after": str(applied),
                "limit": str(POLL_PAGE),
                "wait": str(wait),
                "node": self._authority.spec.name,
                "epoch": str(self._epoch()),
            }
            reply = await self._client.request(
                "GET", self._state.primary, "/api/replication/changes", params=params, authorization=self._auth
            )
            if reply.status == 410:
                await self._answered(reply.body)  # a superseded node's word is not taken either
                await self._start_over(applied, reply.body)
                return
            if reply.status != 200 or reply.response_code != 1:
                raise ReplicationError(f"changes: HTTP {reply.status}: {reply.body.get('message', reply.body)}")
            last, items = reply.body.get("lastSeq"), reply.body.get("changes")
            if not isinstance(last, int) or not isinstance(items, list):
                raise ReplicationError(f"changes: malformed answer {str(reply.body)[:200]}")
            await self._answered(reply.body)
            self._state.primary_seq = last
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
                # The upstream's log is behind ours (restored from an old backup?): keep the data and
                # say so; an operator can promote this node or wipe it to copy a fresh snapshot.
                raise ReplicationError(f"the upstream's lastSeq {last} is behind the applied seq {applied}")
            self._reached(caught_up=applied >= last)
            wait = POLL_WAIT

    async def _start_over(self, applied: int, body: dict[str, Any]) -> None:
        """The upstream trimmed its log past what this mirror applied: copy a snapshot again.

        A resync, as records deleted upstream meanwhile are in no snapshot: the merge walk removes
        them. Stored in this order so that a crash midway leaves either the old state (the next poll
        gets 410 again) or a clean start: ``applied_seq`` is reset last."""
        store = self._authority.store
        log.warning(
            "replication from %s: the log no longer holds the changes after seq %d (%s); copying a snapshot",
            self._state.primary,
            applied,
            body.get("message", body),
        )
        await store.set_meta(RESYNC, "1")
        await store.set_meta(SNAPSHOT_SEQ, "")
        await store.set_meta(APPLIED_SEQ, "")
        self._state.caught_up = False
        self._state.last_error = f"the upstream's log was trimmed past seq {applied}: copying a snapshot"
