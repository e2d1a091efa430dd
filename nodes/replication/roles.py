"""Roles and epochs: which node of a replication group takes writes, promotion, demotion, sync acks.

A replication group is a primary of the topology and its mirrors (``mirror_of``); every other member
is a node's *peer*. Each node keeps in its meta table:

- ``role``: "primary" or "mirror" once a promotion or a demotion decided it. It wins over the
  topology, so a promoted mirror stays primary after a restart although the topology still says
  ``mirror_of`` (the status endpoint says so). Absent: the topology decides.
- ``epoch``: 0 for a fresh primary. A promotion sets it to one more than any epoch the node has seen
  (its own, its upstream's, any reachable peer's). A mirror adopts a higher epoch from the node it
  follows, and refuses data from one whose epoch is below its own (that node was superseded).
- ``following``: the peer a demoted node follows.

**Where the role is decided.** ``starting_role`` reads those entries once, at start, and its answer
builds both the ``Authority`` (read-only on a mirror) and the ``Replication``; from then on
``Replication.role`` is the node's role (healthz, ``/api/replication/status``), changed only by a
promotion or a demotion. ``replicating`` is the only way to run replication: it needs the authority
it observes, so the node's start-up (``nodes.authoritative.app``) cannot order them otherwise.

**When a primary checks for a promoted peer.** A primary with peers asks each one for
``/api/replication/status`` at start (before it serves anything, one second at most per peer), then
every ``PEER_CHECK_SECONDS`` (every ``RECHECK_SECONDS`` while it has not heard from all of them). A
peer that reports role primary with a higher epoch was promoted: this node demotes itself (read-only,
503/7 naming the new primary), stores role mirror and follows that peer, copying a fresh snapshot and
deleting whatever it held that the new primary does not (its data may have diverged). A peer that is
primary at the *same* epoch (two mirrors promoted at once) stops writes on both until an operator
promotes one of them again. Checking before each write instead would add a round trip to every
write and still leave a window (the peer may be promoted right after the check), so it is periodic.

A *restarted* primary (one that stored an epoch before) with peers accepts no write until every peer
has answered once: a peer that cannot be reached may be the promoted one. A write arriving meanwhile
waits up to ``CHECK_WAIT`` seconds for the check, then gets 503/7 "checking for a promoted mirror".
``POST /api/replication/promote`` on such a node ends the wait (the operator vouches for it, and it
raises the epoch above any seen). A fresh database skips the wait: it holds nothing a promotion could
have superseded. Once it has heard from every peer, a primary keeps taking writes when a peer goes
away (that is what a mirror outage must not stop). Without a quorum, an old primary cut off from the
others keeps accepting writes until its next successful check; those are dropped when it rejoins as
a mirror. ``sync_mirrors`` closes that gap: no write is acknowledged that a mirror does not hold.

**Promotion** (``POST /api/replication/promote``, the operator only): on a mirror, fence the peers,
stop following, raise the epoch, store role and epoch, take writes. On a primary already taking writes
it changes nothing and answers 200 with its epoch (idempotent, so a retried promotion is harmless).

**Fencing** (``POST /api/replication/fence?node=N&epoch=E``, the operator only). Without it, writes the
old primary acknowledged after the mirror's last pull and before its next peer check (up to
``PEER_CHECK_SECONDS``) were lost when it demoted itself. A promotion first fences every peer it can
reach (``PEER_TIMEOUT`` each): a primary stops taking writes at once (after a write in progress),
remembers that N is being promoted (it stays read-only, whatever its peer checks say, until it sees N
as primary and demotes itself, or an operator promotes it back) and answers its last seq, which covers
every write it acknowledged. The promoted mirror waits until it has applied that seq from it, at most
``FENCE_WAIT`` seconds (else the promotion fails with 503 and the old primary stays fenced, so a retry
is safe), and only then takes writes. If the node it follows cannot be reached, it is promoted anyway
(the operator vouches) and says so (``fenced: false``): writes that node acknowledged since this
mirror's last pull are lost when it rejoins, the one window left.

**Synchronous acknowledgement** (``sync_mirrors = true`` on a primary in the topology): a mirror's
long-poll carries ``after`` (exactly the seq it has applied), its name and epoch; the primary keeps
the highest ``after`` per mirror at its own epoch. A client write, once committed, waits until some
mirror has reported its seq, at most ``SYNC_ACK_TIMEOUT`` seconds; then it fails with HTTP 503
(responseCode 2) saying the write was committed on this node but not confirmed by a mirror. It is
not rolled back (other clients may have read it) and it is not acknowledged either: acknowledging
would break the promise that an acknowledged write survives the loss of the primary. The setting
belongs to the node that carries it: a promoted mirror acknowledges alone (its primary is presumably
down, and waiting for it would fail every write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import web

from nodes.authoritative.authority import Authority
from nodes.authoritative.config import AuthoritativeConfig
from nodes.replication.acks import AckTracker, ChangeFeed
from nodes.replication.follower import APPLIED_SEQ, RESYNC, SNAPSHOT_SEQ, Mirror, MirrorState, meta_int
from nodes.replication.retention import Retention
from resolver.client import HandleClient, basic_auth
from resolver.config import NodeSpec
from resolver.errors import NotReplicated, ProtocolError, ReplicationError, ServerBusy, UpstreamError
from resolver.names import prefix_handle
from resolver.storage import Storage
from resolver.tls import node_session

__all__ = [
    "REPLICATION",
    "Promotion",
    "Replication",
    "Role",
    "RoleSource",
    "StartingRole",
    "replicating",
    "starting_role",
]

log = logging.getLogger("idres.replication")

ROLE, EPOCH, FOLLOWING = "role", "epoch", "following"
PEER_CHECK_SECONDS = 2.0  # a primary asks its peers this often whether one of them was promoted
RECHECK_SECONDS = 0.25  # ...and this often while it has not heard from every peer
PEER_TIMEOUT = 1.0
CHECK_WAIT = 3.0  # a write to a primary still checking its peers waits this long for the answer
SYNC_ACK_TIMEOUT = 2.0  # with sync_mirrors, a write fails if no mirror has applied it by then
FENCE_WAIT = 10.0  # a promotion waits this long to apply what the fenced old primary acknowledged

Role = Literal["primary", "mirror"]
RoleSource = Literal["topology", "promoted", "demoted"]


@dataclass(frozen=True, slots=True)
class Promotion:
    """What ``POST /api/replication/promote`` did: the new epoch, and whether the old primary was fenced."""

    epoch: int
    fenced: bool  # the node this one followed (or, on a primary, every peer) was fenced first
    message: str


@dataclass(frozen=True, slots=True)
class StartingRole:
    """The role a node starts in: the stored role if a promotion or demotion left one, else the topology's."""

    role: Role
    source: RoleSource  # "topology", or the stored role: "promoted" (primary) / "demoted" (mirror)
    following: str  # the node a mirror follows ("" on a primary)
    epoch: int | None  # the stored epoch; None on a fresh database
    # The topology's primary, still primary, writes its own prefix handle at start; a promoted mirror
    # holds its primary's copy already, and a mirror gets it by replication.
    writes_own_prefix_handle: bool

    @property
    def is_mirror(self) -> bool:
        return self.role == "mirror"


async def starting_role(store: Storage, spec: NodeSpec) -> StartingRole:
    """Decide the role of the node ``spec`` over ``store``: the one place it is decided at start."""
    stored = await store.get_meta(ROLE) or None
    epoch = await meta_int(store, EPOCH)
    if stored == "mirror" or (stored is None and spec.is_mirror):
        following = (await store.get_meta(FOLLOWING) if stored else None) or spec.mirror_of or ""
        source: RoleSource = "demoted" if stored else "topology"
        return StartingRole("mirror", source, following, epoch, writes_own_prefix_handle=False)
    source = "promoted" if stored else "topology"
    return StartingRole("primary", source, "", epoch, writes_own_prefix_handle=not spec.is_mirror)


@contextlib.asynccontextmanager
async def replicating(
    authority: Authority, config: AuthoritativeConfig, start: StartingRole
) -> AsyncIterator[Replication]:
    """Replication of ``authority``'s node, observing its writes, from ``start`` until the block ends.

    Entered once the authority is built (and, on a primary, its own prefix handle written): only
    then does a mirror start copying or a primary answer its peers."""
    async with node_session(config.topology.tls_ca) as session:
        replication = Replication(authority, config, start, session)
        try:
            await replication.start()
            yield replication
        finally:
            await replication.stop()


class Replication:
    """One node's replication state: role, epoch, the puller when it mirrors, the peer checks.

    Build it with ``replicating``; it observes the authority's writes (``WriteObserver``)."""

    def __init__(
        self,
        authority: Authority,
        config: AuthoritativeConfig,
        start: StartingRole,
        session: aiohttp.ClientSession,
    ) -> None:
        spec = config.spec
        self.authority, self.spec, self.topology = authority, spec, config.topology
        self.feed = ChangeFeed()
        self.acks = AckTracker()
        self.role: Role = start.role
        self.role_source: RoleSource = start.source
        self.epoch = start.epoch or 0
        self.mirror: MirrorState | None = None  # while this node follows another
        self.peers = [n for n in config.topology.sites_of(spec.mirror_of or spec.name) if n.name != spec.name]
        self.checked = False  # a primary: every peer answered since the start (or it was promoted)
        self.conflict: str | None = None
        self.fenced_by: tuple[str, int] | None = None  # (peer, epoch): that peer is being promoted
        self.sync = spec.sync_mirrors
        self._start = start
        self._checked_event = asyncio.Event()
        self._seen_epoch = 0  # the highest epoch a peer reported
        self._lock = asyncio.Lock()  # one role change at a time
        self._mirror_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._trim_task: asyncio.Task[None] | None = None
        self._session = session
        self._auth = basic_auth(f"300:{prefix_handle(spec.prefix or '')}", config.operator_secret)

    # -- start and stop --------------------------------------------------------------------------

    async def start(self) -> None:
        """Observe the authority's writes, start trimming the change log (``retention``), then follow the
        upstream (a mirror) or check the peers."""
        authority, spec, start = self.authority, self.spec, self._start
        authority.observe(self)
        retention = Retention(authority.store, [p.name for p in self.peers], self.acks, spec.change_log_max_age)
        self._trim_task = asyncio.create_task(retention.run(), name=f"trim-log-of-{spec.name}")
        if start.is_mirror:
            upstream = self.topology.nodes.get(start.following)
            if upstream is None:  # the topology changed under a demoted node: wait for an operator
                name = start.following
                self.mirror = MirrorState("", name, last_error=f"{name!r} is not a node of the topology")
                await authority.set_read_only(f"{spec.name} is a mirror of {name!r}, which the topology lacks")
            else:
                await self._follow(upstream)
            return
        if start.epoch is None:
            await authority.store.set_meta(EPOCH, "0")
        if not self.peers or start.epoch is None:
            self._settled()  # nothing to ask, or a fresh database nothing can have superseded
            await authority.set_read_only(None)
        else:
            names = ", ".join(p.name for p in self.peers)
            await authority.set_read_only(
                f"{spec.name} restarted as a primary and refuses writes until each of its peers ({names}) has "
                f"answered: checking for a promoted mirror (POST /api/replication/promote ends the wait)"
            )
            log.info("%s restarted as a primary: no writes until its peers (%s) have answered", spec.name, names)
            await self._check_peers()  # before serving: usually settles it at once
        if self.peers:
            self._watch_task = asyncio.create_task(self._watch_peers(), name=f"peers-of-{spec.name}")

    async def stop(self) -> None:
        """Cancel the puller and the peer checks and wait for them (the session is the caller's)."""
        for task in (self._mirror_task, self._watch_task, self._trim_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def note(self) -> str | None:
        """Why the role differs from the topology's, if it does (for the status endpoint)."""
        spec = self.spec
        if self.role == "primary" and spec.is_mirror:
            return (
                f"promoted (epoch {self.epoch}): primary although the topology says mirror_of "
                f"{spec.mirror_of}; the stored role wins"
            )
        following = self.mirror.name if self.mirror else None
        if self.role == "mirror" and following != spec.mirror_of:
            said = f"mirror_of {spec.mirror_of}" if spec.is_mirror else "it is a primary"
            return f"demoted: follows {following}, which was promoted, although the topology says {said}"
        return None

    # -- following --------------------------------------------------------------------------------

    def _refusal(self, upstream: NodeSpec) -> str:
        spec = self.spec
        if upstream.name == spec.mirror_of:
            return f"{spec.name} is a mirror of {upstream.name} and refuses writes; send them to {upstream.url}"
        return (
            f"{spec.name} is no longer the primary: {upstream.name} ({upstream.url}) was promoted and takes the "
            f"writes; send them there"
        )

    async def _follow(self, upstream: NodeSpec) -> None:
        await self.authority.set_read_only(self._refusal(upstream))
        self.mirror = state = MirrorState(upstream.url, upstream.name)
        puller = Mirror(
            self.authority, state, self._session, self._auth, check_epoch=self._check_epoch, epoch=lambda: self.epoch
        )
        self._mirror_task = asyncio.create_task(puller.run(), name=f"replicate-{upstream.name}")

    async def _check_epoch(self, upstream: int) -> None:
        if upstream < self.epoch:
            source = self.mirror.name if self.mirror else "the upstream"
            raise ReplicationError(
                f"{source} is at epoch {upstream}, below this node's {self.epoch}: a promotion superseded it, "
                f"so nothing it sends is applied"
            )
        if upstream > self.epoch:
            await self.authority.store.set_meta(EPOCH, str(upstream))
            self.epoch = upstream

    # -- checking the peers (a primary) -----------------------------------------------------------

    def _settled(self) -> None:
        self.checked = True
        self._checked_event.set()

    async def before_write(self) -> None:
        """WriteObserver: a write to a primary still checking its peers waits for the answer."""
        if self.role == "primary" and not self.checked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checked_event.wait(), CHECK_WAIT)

    async def _peer_status(self, peer: NodeSpec) -> tuple[NodeSpec, str, int] | None:
        try:
            reply = await HandleClient(self._session, timeout=PEER_TIMEOUT).request(
                "GET", peer.url, "/api/replication/status", params={"digest": "false"}
            )
        except UpstreamError:
            return None
        role, epoch = reply.body.get("role"), reply.body.get("epoch")
        if reply.status != 200 or role not in ("primary", "mirror") or not isinstance(epoch, int):
            return None
        self._seen_epoch = max(self._seen_epoch, epoch)
        return peer, role, epoch

    async def _watch_peers(self) -> None:
        while True:
            await asyncio.sleep(PEER_CHECK_SECONDS if self.checked else RECHECK_SECONDS)
            if self.role != "primary":
                continue  # a mirror follows; it starts checking again if it is promoted
            try:
                await self._check_peers()
            except Exception:  # keep checking whatever went wrong
                log.exception("checking the peers of %s", self.spec.name)

    async def _check_peers(self) -> None:
        epoch = self.epoch
        answers = [a for a in await asyncio.gather(*(self._peer_status(p) for p in self.peers)) if a is not None]
        async with self._lock:
            if self.role != "primary" or self.epoch != epoch:
                return  # promoted or demoted meanwhile: this round's answers are stale
            higher = [(e, p) for p, role, e in answers if role == "primary" and e > self.epoch]
            if higher:
                new_epoch, peer = max(higher, key=lambda item: item[0])
                await self._demote(peer, new_epoch)
                return
            if self.fenced_by is not None:
                return  # fenced: read-only until the promoted peer shows up (or an operator promotes this node)
            rivals = [p.name for p, role, e in answers if role == "primary" and e == self.epoch]
            ahead = [f"{p.name} (epoch {e})" for p, role, e in answers if e > self.epoch]
            if rivals or ahead:
                conflict = (
                    f"{self.spec.name} and {', '.join(rivals)} all claim to be the primary at epoch {self.epoch}"
                    if rivals
                    else f"{', '.join(ahead)} followed a primary promoted after epoch {self.epoch}, which "
                    f"{self.spec.name} missed"
                ) + ": no writes until an operator promotes a node (POST /api/replication/promote)"
                if conflict != self.conflict:
                    log.error("%s", conflict)  # once per conflict, not at every check
                self.conflict = conflict
                self._checked_event.set()  # decided: waiting writes get the refusal now
                await self.authority.set_read_only(self.conflict)
                return
            if self.checked or len(answers) == len(self.peers):
                if not self.checked or self.conflict:
                    log.info("%s: no peer was promoted; taking writes at epoch %d", self.spec.name, self.epoch)
                self.conflict = None
                self._settled()
                if self.authority.read_only:
                    await self.authority.set_read_only(None)

    async def _demote(self, peer: NodeSpec, epoch: int) -> None:
        """A peer was promoted past this node's epoch: stop writes, store role mirror, resync from it."""
        log.warning("%s: %s was promoted (epoch %d); demoting to a mirror of it", self.spec.name, peer.name, epoch)
        await self.authority.set_read_only(self._refusal(peer))
        store = self.authority.store
        for name, value in ((ROLE, "mirror"), (FOLLOWING, peer.name), (RESYNC, "1")):
            await store.set_meta(name, value)
        for name in (SNAPSHOT_SEQ, APPLIED_SEQ):  # applied_seq last: a fresh snapshot only once both are unset
            await store.set_meta(name, "")  # "": unset, so the puller copies a fresh snapshot
        self.role, self.role_source, self.conflict, self.fenced_by = "mirror", "demoted", None, None
        self._checked_event.set()
        await self._follow(peer)

    # -- promotion --------------------------------------------------------------------------------

    async def fence(self, node: str, epoch: int) -> int:
        """``node`` is being promoted to ``epoch``: a primary stops taking writes now; the last seq.

        Once this returns, no write commits here, so the seq covers every write this node acknowledged."""
        if not any(peer.name == node for peer in self.peers):
            raise ProtocolError(f"{node!r} is not a peer of {self.spec.name}: only a peer's promotion fences it")
        if self.role == "primary":
            self.fenced_by = (node, epoch)
            await self.authority.set_read_only(
                f"{self.spec.name} refuses writes: {node} is being promoted to primary (epoch {epoch}); send "
                f"writes there once it is (POST /api/replication/promote on {self.spec.name} takes them back)"
            )
            log.warning("%s fenced: %s is being promoted (epoch %d)", self.spec.name, node, epoch)
        return await self.authority.store.last_seq()

    async def _fence_one(self, peer: NodeSpec, epoch: int) -> int | None:
        """Fence ``peer``; its last seq, or None if it could not be reached or refused."""
        try:
            reply = await HandleClient(self._session, timeout=PEER_TIMEOUT).request(
                "POST",
                peer.url,
                "/api/replication/fence",
                params={"node": self.spec.name, "epoch": str(epoch)},
                authorization=self._auth,
            )
        except UpstreamError:
            return None
        last = reply.body.get("lastSeq")
        if reply.status != 200 or not isinstance(last, int):
            log.warning("fencing %s: HTTP %d: %s", peer.name, reply.status, reply.body.get("message", reply.body))
            return None
        return last

    async def _fence_peers(self, epoch: int) -> tuple[bool, str]:
        """Fence every reachable peer and apply what the one this node follows acknowledged: (fenced, message)."""
        seqs = await asyncio.gather(*(self._fence_one(p, epoch) for p in self.peers))
        reached = {p.name: seq for p, seq in zip(self.peers, seqs, strict=True) if seq is not None}
        name, store = self.spec.name, self.authority.store
        if self.mirror is None:  # a primary (checking, or in conflict): nothing to apply
            missing = [p.name for p in self.peers if p.name not in reached]
            if missing:
                return False, f"not fenced (unreachable): {', '.join(missing)}"
            return True, "every peer was fenced"
        upstream, seq = self.mirror.name, reached.get(self.mirror.name)
        if seq is None:
            applied = await meta_int(store, APPLIED_SEQ)
            return False, (
                f"{upstream} could not be reached to fence it: writes it acknowledged after {name} last "
                f"applied its changes (its seq {applied or 0}) are lost if it still takes writes"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FENCE_WAIT
        while (applied := await meta_int(store, APPLIED_SEQ) or 0) < seq:
            if loop.time() >= deadline:
                raise ServerBusy(
                    f"{upstream} was fenced (read-only) at seq {seq}, but {name} applied only up to seq {applied} "
                    f"within {FENCE_WAIT:g} s, so {name} was not promoted: retry the promotion (POST "
                    f"/api/replication/promote), or promote {upstream} to take writes there again"
                )
            await asyncio.sleep(0.02)
        return True, f"{upstream} was fenced (read-only); everything it acknowledged, up to its seq {seq}, is applied"

    async def promote(self) -> Promotion:
        """Make this node the writable primary at a new epoch (unless it already is), fencing the old one."""
        async with self._lock:
            authority = self.authority
            if self.role == "primary" and not authority.read_only:
                return Promotion(self.epoch, True, f"{self.spec.name} is the primary already")
            answers = await asyncio.gather(*(self._peer_status(p) for p in self.peers))
            seen = [self.epoch, self._seen_epoch, *(a[2] for a in answers if a is not None)]
            if self.mirror is not None and self.mirror.primary_epoch is not None:
                seen.append(self.mirror.primary_epoch)
            fenced, message = await self._fence_peers(max(seen) + 1)
            seen.append(self.epoch)  # adopted from the upstream while this node caught up, if it moved
            if self._mirror_task is not None:
                self._mirror_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._mirror_task
                self._mirror_task = None
            epoch = max(seen) + 1
            store = authority.store
            # Stored before the first write is accepted: a crash now restarts as a primary at this epoch.
            for name, value in ((EPOCH, str(epoch)), (ROLE, "primary"), (FOLLOWING, "")):
                await store.set_meta(name, value)
            self.epoch, self.role, self.role_source = epoch, "primary", "promoted"
            self.mirror, self.conflict, self.fenced_by = None, None, None
            self._settled()
            await authority.set_read_only(None)
            if self.peers and (self._watch_task is None or self._watch_task.done()):
                self._watch_task = asyncio.create_task(self._watch_peers(), name=f"peers-of-{self.spec.name}")
            log.warning("%s promoted to primary at epoch %d: %s", self.spec.name, epoch, message)
            return Promotion(epoch, fenced, message)

    # -- synchronous acknowledgement ---------------------------------------------------------------

    def committed(self) -> None:
        """WriteObserver: a write committed (or may have): wake the long-polls."""
        self.feed.notify()

    async def before_ack(self, seq: int) -> None:
        """WriteObserver: with sync_mirrors, return once a mirror has applied ``seq``."""
        if not self.sync or self.role != "primary":
            return
        timeout = SYNC_ACK_TIMEOUT
        if await self.acks.wait(seq, timeout):
            return
        raise NotReplicated(
            f"the write was committed on {self.spec.name} (seq {seq}) but no mirror confirmed it within "
            f"{timeout:g} s (sync_mirrors): it may be applied, and reaches the mirrors when they reconnect, "
            f"unless this node is superseded first; read it back before retrying"
        )


REPLICATION: web.AppKey[Replication] = web.AppKey("replication")
