"""The authoritative node's service: resolve, write, delete and list records it is responsible for.

HTTP lives in ``nodes.authoritative.app``; this module holds the service over a ``Storage``:
authentication, HS_ADMIN authorisation up the prefix chain (``may``), resolution and listing, and the
steps of a write. What a write does (HANDLE.NET semantics for ``overwrite``, ``index``, 201 vs 200,
409/101) is decided by ``nodes.authoritative.writes``, for single writes and batches alike. All
writes go through one lock: a read-modify-write of a record is never interleaved.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from nodes.authoritative.login_limits import LoginLimits
from nodes.authoritative.write_ops import Kind, WriteOp, delete_kind, put_kind
from nodes.authoritative.writes import Decided, WriteDecider, needs_credentials, refuse_write
from nodes.shared.http_api import credentials
from resolver.auth import Identity, Perm, admin_grants, hash_secret_values, parse_basic, verify_secret
from resolver.config import Limits, NodeSpec
from resolver.errors import (
    AuthenticationFailed,
    AuthenticationNeeded,
    HandleError,
    NotResponsible,
    PermissionDenied,
    ProtocolError,
    ReadOnly,
)
from resolver.names import PREFIX_NA, Handle, ancestors, parse_handle, parse_prefix, prefix_handle
from resolver.records import Record, filter_values, public_values
from resolver.storage import Storage, Write
from resolver.values import HandleValue
from resolver.zone import NotHere, Refer, Serve, Zone

__all__ = ["AUTHORITY", "MAX_LIST_PAGE", "Answer", "Authority", "Listing", "WriteObserver", "WriteResult"]

# Successful credential checks are remembered this long, so PBKDF2 is paid once per client, not per
# request; a change to any HS_SECKEY value forgets them all at once.
CREDENTIAL_CACHE_SECONDS = 300.0
CREDENTIAL_CACHE_SIZE = 4096

# The most handles one listing answer carries, whatever pageSize asks (or with no page at all): a
# page of 10,000 is read and encoded in ~10 ms, while "every handle" of a 10-million prefix would be
# ~400 MB. The answer says where to go on ("next"), so nothing is lost, only paged.
MAX_LIST_PAGE = 10_000


def _cut_message(shown: int, total: int, asked: int | None) -> str:
    """What a listing answer cut to ``MAX_LIST_PAGE`` says: how many it holds and how to ask for the rest."""
    held = f"{MAX_LIST_PAGE:,} an answer holds"
    why = f"no pageSize: at most the {held}" if asked is None else f"pageSize {asked:,} is more than the {held}"
    return f"{shown:,} of {total:,} handles ({why}); ask for the rest with after=<next>, the next of this answer"


# (identity, Authorization header, URL of the node asking, which the verifier must never call):
# whether the identity's home node accepts the credentials (``nodes.authoritative.identity``).
RemoteVerifier = Callable[[Identity, str, str], Awaitable[bool]]


class WriteObserver(Protocol):
    """What sees every write of an ``Authority`` (replication: ``nodes.replication.roles``), attached
    once with ``Authority.observe`` before the node serves anything."""

    async def before_write(self) -> None:
        """Awaited before a client write is considered (a restarted primary checking its peers)."""

    def committed(self) -> None:
        """Called after every write to the store, even a failed or cancelled one (a shielded
        transaction may still commit): wake replication long-polls."""

    async def before_ack(self, seq: int) -> None:
        """Awaited with the seq of each client write after it committed and before it is acknowledged,
        outside the write lock (waiting for a mirror); an exception fails the request instead."""


class _Unobserved:
    """The observer of a node without replication: nothing to wait for, nobody to wake."""

    async def before_write(self) -> None:
        return None

    def committed(self) -> None:
        return None

    async def before_ack(self, seq: int) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Answer:
    """A resolution this node answers itself: ``record`` is None when the handle does not exist."""

    values: tuple[HandleValue, ...] | None
    filtered: bool  # type= or index= was given (an empty selection is then "values not found")


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of a prefix's handles (``Authority.list_handles``)."""

    prefix: str
    total: int  # every handle of the prefix, not only this page's
    handles: list[str]
    next: str | None  # the cursor (``after=``) of the following page; None when none follows
    # Why the answer holds fewer handles than were asked for, and how to get the rest (the node's
    # bound cut it); None when it holds what was asked.
    message: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    handle: str  # as the client wrote it (or as minted)
    created: bool  # the handle or some value did not exist before
    seq: int  # change-log sequence number of the write, 0 if nothing changed


class Authority:
    """One authoritative node's records and rules. Build it, then ``await start()``."""

    def __init__(
        self,
        spec: NodeSpec,
        store: Storage,
        limits: Limits,
        *,
        read_only: bool = False,
        remote_verifier: RemoteVerifier | None = None,
        login_limits: LoginLimits | None = None,
        proxies: frozenset[str] = frozenset(),
    ) -> None:
        assert spec.prefix is not None, "an authoritative node owns a prefix"
        self.spec = spec
        self.store = store
        self.limits = limits
        self.read_only = read_only
        self.read_only_message: str | None = None  # why writes are refused, when it is not "a mirror"
        self._observer: WriteObserver = _Unobserved()
        self.zone = Zone(own=spec.prefix)
        self.operator = Identity(300, prefix_handle(spec.prefix), prefix_handle(spec.prefix))
        self.login_limits = login_limits or LoginLimits()
        # Addresses of the topology's recursive nodes: every client they forward arrives from one of
        # them, so a per-address limit there would let one guesser lock every client of the
        # recursive node out. Their clients are limited per identity only.
        self.proxies = proxies
        self._remote_verifier = remote_verifier
        self._write_lock = asyncio.Lock()
        self._verified: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self._checking: dict[bytes, asyncio.Future[Identity]] = {}  # header digest -> its check in flight

    def observe(self, observer: WriteObserver) -> None:
        """Let ``observer`` see every write from now on; one observer per node, attached before it serves."""
        if not isinstance(self._observer, _Unobserved):
            raise RuntimeError("this Authority already has a write observer")
        self._observer = observer

    async def start(self) -> None:
        """Learn the hosted and delegated prefixes from the stored prefix handles."""
        records = await self.store.get_many(await self.store.list_keys(PREFIX_NA))
        self.zone.load({key.partition("/")[2]: rec.values for key, rec in records.items()}, self.spec.hosts)

    # -- authentication and authorisation -------------------------------------------------------

    async def identify(self, request: web.Request) -> Identity | None:
        """The identity ``request``'s credentials prove (``authenticate``), None without any; credentials
        over plain HTTP from another machine are refused first (``http_api.credentials``)."""
        header = credentials(request, self.spec.allow_plain_credentials)
        return await self.authenticate(header, client=request.remote)

    async def authenticate(self, header: str | None, *, client: str | None = None) -> Identity | None:
        """The identity proven by an ``Authorization`` header, None without one; 401 when it is wrong,
        429 after too many wrong tries for the identity or from ``client`` (its address, when known)."""
        if not header:
            return None
        digest = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        cached = self._verified.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            self._verified.move_to_end(digest)
            return cached[0]
        # Requests carrying the same header while it is being checked share the one check: a client
        # that opens several connections at once pays one PBKDF2 and one try, not one each.
        checking = self._checking.get(digest)
        if checking is None:
            client = None if client in self.proxies else client
            checking = self._checking[digest] = asyncio.ensure_future(self._verify(header, digest, client))
            checking.add_done_callback(lambda done: self._end_check(digest, done))
        return await asyncio.shield(checking)

    def _end_check(self, digest: bytes, check: asyncio.Future[Identity]) -> None:
        if self._checking.get(digest) is check:
            del self._checking[digest]
        if not check.cancelled():
            check.exception()  # retrieved: a check nobody waits for any more must not warn

    async def _verify(self, header: str, digest: bytes, client: str | None) -> Identity:
        """Check the credentials of ``header`` (not cached), counting a wrong secret against the limits."""
        now = time.monotonic()
        identity, secret = parse_basic(header)
        # The try is taken before the check (concurrent guesses cannot all slip through), and stays
        # spent on a wrong secret and on cancellation (PBKDF2 goes on in its thread all the same).
        tries = self.login_limits.admit(identity.key, str(identity), client)
        try:
            ok = await self._check_secret(identity, secret, header)
        except AuthenticationFailed:
            raise  # a failure: the try stays spent
        except HandleError:
            self.login_limits.give_back(tries)  # the check could not be made (upstream): not a failure
            raise
        if not ok:
            raise AuthenticationFailed(f"authentication failed for {identity}: wrong secret")
        self.login_limits.give_back(tries)
        self._verified[digest] = (identity, now + CREDENTIAL_CACHE_SECONDS)
        if len(self._verified) > CREDENTIAL_CACHE_SIZE:
            self._verified.popitem(last=False)
        return identity

    async def _check_secret(self, identity: Identity, secret: str, header: str) -> bool:
        """Whether ``secret`` is ``identity``'s. A handle this node serves is decided here alone, never
        by asking the tree (which leads back here: issue 11, finding 4); only a handle served elsewhere,
        or a prefix handle delegated to another node (its secret is there), is checked remotely."""
        handle = parse_handle(identity.text)
        decision = self.zone.route(handle)
        local = isinstance(decision, Serve)
        record = await self.store.get(identity.key) if local else None
        keys = [
            v
            for v in (record.values if record else ())
            if v.type.upper() == "HS_SECKEY" and identity.index in (0, v.index)
        ]
        if keys:
            return await asyncio.to_thread(lambda: any(verify_secret(secret, k.value) for k in keys))
        if local and not (handle.is_prefix_handle and handle.zone in self.zone.delegated):
            if record is None:
                raise AuthenticationFailed(f"{identity} does not exist, so it cannot be authenticated")
            where = f" at index {identity.index}" if identity.index else ""
            raise AuthenticationFailed(f"{identity} has no HS_SECKEY value{where}, so it cannot be authenticated")
        if self._remote_verifier is None:
            raise AuthenticationFailed(f"{identity} has no HS_SECKEY value on this node")
        return await self._remote_verifier(identity, header, self.spec.url)

    async def _admin_chain(
        self, handle: Handle, current: Record | None, pending: Mapping[str, Record | None]
    ) -> list[HandleValue]:
        """HS_ADMIN values that govern ``handle``: its own, then its prefix handle's and each parent's."""
        chain = list(current.values) if current else []
        zones = ancestors(handle.zone)
        if handle.is_prefix_handle:
            zones = zones[1:]  # a prefix handle is administered from its parent prefix up
        keys = [prefix_handle(p) for p in zones]
        prefix_records = await self.store.get_many([k for k in keys if k not in pending])
        for key in keys:
            record = pending[key] if key in pending else prefix_records.get(key)
            if record is not None:
                chain.extend(record.values)
        return chain

    async def may(
        self,
        identity: Identity,
        permission: int,
        handle: Handle,
        current: Record | None,
        *,
        pending: Mapping[str, Record | None] | None = None,
    ) -> bool:
        """Whether ``identity`` holds ``permission`` on ``handle`` (whose record is ``current``).

        ``pending``: records as a batch in progress has already changed them (None: deleted), seen
        instead of the stored ones."""
        if identity == self.operator:
            return True  # the node's operator, like a HANDLE.NET server administrator
        overlay = pending or {}

        async def lookup(key: str) -> Record | None:
            return overlay[key] if key in overlay else await self.store.get(key)

        chain = await self._admin_chain(handle, current, overlay)
        return await admin_grants(identity, permission, chain, lookup)

    # -- reads -----------------------------------------------------------------------------------

    async def resolve(
        self,
        handle: Handle,
        *,
        types: Sequence[str] = (),
        indexes: Sequence[int] = (),
        identity: Identity | None = None,
    ) -> Answer | Refer:
        decision = self.zone.route(handle)
        if isinstance(decision, NotHere):
            raise NotResponsible(decision.reason, handle=handle.text)
        if isinstance(decision, Refer):
            return decision  # the prefix is delegated: its sites answer
        record = await self.store.get(handle.key)
        if record is None:
            return Answer(None, False)
        values = record.values
        if identity is None or not await self.may(identity, Perm.READ_VALUE, handle, record):
            values = public_values(values)
        filtered = bool(types or indexes)
        return Answer(filter_values(values, types, indexes), filtered)

    async def list_handles(
        self,
        prefix_text: str,
        *,
        page: int | None,
        page_size: int | None,
        identity: Identity | None,
        after: str | None = None,
    ) -> Listing:
        """A page of the handles under a prefix, in key order. ``page``/``pageSize`` as HANDLE.NET
        (counted from 0; without them, every handle), counted from the cursor ``after`` (the ``next``
        of an earlier page) when given; at most ``MAX_LIST_PAGE`` handles, ``next`` saying where
        the rest continue (and ``message`` saying so when that bound cut what was asked). A page at
        a cursor costs its own size, a ``page=N`` a few ms more at any depth (the storage finds where
        the page starts from its rank index, ``resolver.storage.ranks``)."""
        prefix = parse_prefix(prefix_text)
        handle = parse_handle(prefix_handle(prefix))
        # Listing a prefix answers for handles *under* it, so route an ordinary handle of that prefix.
        refuse_write(self.zone, parse_handle(f"{prefix}/x"))
        record = await self.store.get(handle.key)
        if identity is None:
            raise AuthenticationNeeded(f"listing {prefix} needs credentials", handle=prefix_text)
        if not await self.may(identity, Perm.LIST_HANDLES, handle, record):
            raise PermissionDenied(f"{identity} may not list handles under {prefix}", handle=prefix_text)
        total = await self.store.count_prefix(prefix)
        if page_size == 0:
            return Listing(prefix, total, [], None)
        paged = (page is not None and page >= 0) or (page is None and after is not None)
        if paged and page_size is not None and page_size > 0:
            # A page starting past 2^63-1 is past the end all the same; SQLite cannot bind a larger OFFSET.
            offset, limit = min((page or 0) * page_size, 2**63 - 1), min(page_size, MAX_LIST_PAGE)
        else:  # HANDLE.NET's "every handle" (no page, or negative values): paged all the same
            offset, limit = 0, MAX_LIST_PAGE
        if after is None and offset >= total:
            return Listing(prefix, total, [], None)  # past the end: nothing to read
        # One key more than the page: whether another page follows, known without a count.
        keys = await self.store.list_keys(prefix, after=after, offset=offset, limit=limit + 1)
        if len(keys) <= limit:
            return Listing(prefix, total, keys, None)
        asked = page_size if paged and page_size is not None and page_size > 0 else None  # None: every handle
        cut = None if asked is not None and asked <= limit else _cut_message(limit, total, asked)
        return Listing(prefix, total, keys[:limit], keys[limit - 1], cut)

    # -- writes ----------------------------------------------------------------------------------

    def _refuse_if_read_only(self, handle: Handle | None) -> None:
        if self.read_only:
            default = f"{self.spec.name} is a mirror and refuses writes; send them to its primary"
            raise ReadOnly(self.read_only_message or default, handle=handle.text if handle else None)

    # The steps of a client write, public for bulk registration (nodes.authoritative.batch.endpoint),
    # which takes them in the same order as put() and delete(): admit_write(), then under write_lock
    # refuse_if_read_only(), the decision (nodes.authoritative.writes), commit() and learn(), then
    # acknowledge() outside the lock.

    async def admit_write(self, handle: Handle | None = None) -> None:
        """Wait for the observer's gate, then refuse (503/7) if this node takes no writes."""
        await self._observer.before_write()
        self._refuse_if_read_only(handle)

    @property
    def write_lock(self) -> asyncio.Lock:
        return self._write_lock

    def refuse_if_read_only(self) -> None:
        self._refuse_if_read_only(None)

    def learn(self, decided: Decided) -> None:
        """After committing ``decided``'s writes: route by the prefix handles written, and forget
        cached credentials if a secret changed (a changed or removed secret must stop working at once)."""
        for prefix, values in decided.prefixes:
            self.zone.learn(prefix, values)
        if decided.secrets:
            self._verified.clear()

    async def set_read_only(self, message: str | None) -> None:
        """Refuse writes from now on, saying ``message``, or accept them again (None).

        Waits for a write in progress, so none commits after this returns under the old setting."""
        async with self._write_lock:
            self.read_only, self.read_only_message = message is not None, message

    async def commit(self, writes: Sequence[Write], *, created: bool = False) -> int:
        """Write ``writes`` in one transaction (under ``write_lock``); the last change's seq.
        ``created``: every key was checked, under the lock, to have no record (``Storage.write``)."""
        try:
            return await self.store.write(writes, created=created)
        finally:
            self._observer.committed()

    async def _acknowledge(self, result: WriteResult) -> WriteResult:
        await self.acknowledge(result.seq)
        return result

    async def acknowledge(self, seq: int) -> None:
        """The observer's ``before_ack`` for a write committed at ``seq`` (nothing if 0: nothing changed)."""
        if seq:
            await self._observer.before_ack(seq)

    async def put(
        self,
        handle: Handle,
        values: tuple[HandleValue, ...],
        *,
        overwrite: bool,
        indexes: Sequence[int] | None,
        identity: Identity | None,
    ) -> WriteResult:
        """PUT /api/handles/...: create or replace the record, or add/replace only ``indexes``."""
        kind = put_kind(overwrite=overwrite, indexes=indexes)
        writer = await self._admit_client_write(kind, handle, identity)
        if indexes is not None and set(indexes) != {v.index for v in values}:
            raise ProtocolError(
                f"Mismatched indexes in PUT request: the query names {sorted(set(indexes))}, the body has "
                f"{sorted(v.index for v in values)}",
                handle=handle.text,
            )
        values = await asyncio.to_thread(hash_secret_values, values)
        return await self._write(WriteOp.single(kind, handle, values, indexes), writer)

    async def mint(self, prefix_text: str, values: tuple[HandleValue, ...], identity: Identity | None) -> WriteResult:
        """PUT with ``mintNewSuffix=true``: create a handle whose suffix ends in a fresh random UUID."""
        handle = parse_handle(prefix_text + uuid.uuid4().hex.upper())
        return await self.put(handle, values, overwrite=False, indexes=None, identity=identity)

    async def delete(self, handle: Handle, *, indexes: Sequence[int] | None, identity: Identity | None) -> WriteResult:
        """DELETE /api/handles/...: the whole record, or only ``indexes``."""
        kind = delete_kind(indexes)
        writer = await self._admit_client_write(kind, handle, identity)
        return await self._write(WriteOp.single(kind, handle, indexes=indexes), writer)

    async def _admit_client_write(self, kind: Kind, handle: Handle, identity: Identity | None) -> Identity:
        """Refuse, in this order: a node that takes no writes (503/7), a handle not written here (301),
        a client without credentials (401/402)."""
        await self.admit_write(handle)
        refuse_write(self.zone, handle)
        if identity is None:
            raise needs_credentials(kind, handle.text)
        return identity

    async def _write(self, op: WriteOp, identity: Identity) -> WriteResult:
        """Decide ``op`` under the write lock, commit and learn what it wrote, then acknowledge it."""
        async with self._write_lock:
            self._refuse_if_read_only(op.handle)  # again: the node may have been demoted meanwhile
            decider = WriteDecider(self, identity, [op])
            await decider.load()
            created = await decider.decide(op)
            decided = decider.decided()
            if not decided.writes:
                return WriteResult(op.text, created, 0)  # nothing changed: nothing to log
            seq = await self.commit(decided.writes)
            self.learn(decided)
        return await self._acknowledge(WriteResult(op.text, created, seq))

    async def apply_replicated(self, writes: Sequence[Write], *, created: bool = False) -> int:
        """Apply writes copied from this node's primary (a mirror's only way to change); ``created``
        as for ``commit``: the caller knows none of the keys has a record."""
        async with self._write_lock:
            seq = await self.commit(writes, created=created)
            for w in writes:
                if w.key.startswith(PREFIX_NA + "/"):
                    self.zone.learn(w.key.partition("/")[2], w.values)
            self._forget_credentials(w.key for w in writes)
        return seq

    def _forget_credentials(self, keys: Iterable[str]) -> None:
        """Forget the verified credentials of the identities whose record is among ``keys`` (their
        secret may have changed). Only those: a mirror applies its primary's writes a page at a time,
        and clearing every entry each time made each operator request pay PBKDF2 again (~30% of a
        mirror's CPU while it copied a snapshot under a status poll every 200 ms)."""
        if not self._verified:
            return
        written = set(keys)
        for digest, (identity, _) in list(self._verified.items()):
            if identity.key in written:
                del self._verified[digest]


AUTHORITY: web.AppKey[Authority] = web.AppKey("authority")
