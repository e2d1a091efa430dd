"""The write rules of an authoritative node, decided once for single writes and batches.

A ``WriteDecider`` applies operations (``nodes.authoritative.write_ops``) in order to an overlay of
the stored records, as HANDLE.NET decides a write: routing (301, per ``Zone``), existence (101, 100),
authorisation (401/402, HS_ADMIN up the prefix chain; for a write naming values, some right on the
record before anything is said of which values exist), the values (``merge_values``,
``remove_values``), timestamps of unchanged values kept. A later operation sees the earlier ones:
records written or deleted, rights changed, prefix handles learnt on a copy of the zone. What passes
is a ``Write`` to commit in one transaction; what the node must learn afterwards (prefix handles,
changed secrets) is in ``Decided``. ``Authority.put``/``delete`` decide one operation this way, and
``POST /api/batch`` (``BatchDecider``) many; the operator's plain creates of a bulk load take a
shorter path that decides the same (``_decide_plain_creates``). Every refusal's words are here.

Nothing here takes the write lock: callers hold it around deciding and committing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from nodes.authoritative.write_ops import (
    ADD,
    CREATE,
    DELETE,
    PUT,
    PUT_NEW,
    REMOVE,
    SET,
    UPSERT,
    Kind,
    PlainCreates,
    WriteOp,
    failure,
)
from resolver.auth import Identity, Perm
from resolver.codec import pack_rows, row_value, value_row
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
from resolver.records import Record, keep_row_timestamps, merge_values, remove_values
from resolver.sites import site_servers
from resolver.storage import Storage, Write
from resolver.values import HandleValue
from resolver.zone import NotHere, Refer, Zone

__all__ = [
    "BatchDecider",
    "Decided",
    "WriteDecider",
    "WriteRules",
    "changes_needed",
    "needs_credentials",
    "refuse_write",
]

_position = attrgetter("position")
# Operations decided between two yields to the event loop (a batch holds the write lock meanwhile).
CHUNK = 250
# Types whose values decide who may do what: a batch writing one re-reads authorisation afterwards.
_ADMIN_TYPES = frozenset({"HS_ADMIN", "HS_VLIST", "HS_SECKEY"})
_WHOLE = frozenset({CREATE, PUT_NEW, PUT, UPSERT})  # the kinds that write a whole record
_NEW_ONLY = frozenset({CREATE, PUT_NEW})  # the kinds refused when the record exists
_UNCHANGED_IS_NOTHING = frozenset({PUT, ADD, SET})  # single PUTs: a write that changes nothing is not logged
# The kinds that name values (?index=), and the rights of which a writer needs at least one before it
# is told anything about those values: which exist is none of the business of a principal without
# rights on the record (issue 11, finding 11). The first is the one a refusal names.
_SOME_VALUES: dict[Kind, tuple[int, ...]] = {
    ADD: (Perm.ADD_VALUE, Perm.ADD_ADMIN),
    SET: (Perm.ADD_VALUE, Perm.MODIFY_VALUE, Perm.ADD_ADMIN, Perm.MODIFY_ADMIN),
    REMOVE: (Perm.REMOVE_VALUE, Perm.REMOVE_ADMIN),
}


class WriteRules(Protocol):
    """What deciding needs of the node (``Authority``)."""

    @property
    def store(self) -> Storage: ...

    @property
    def zone(self) -> Zone: ...

    @property
    def operator(self) -> Identity: ...

    @property
    def limits(self) -> Limits: ...

    async def may(
        self,
        identity: Identity,
        permission: int,
        handle: Handle,
        current: Record | None,
        *,
        pending: Mapping[str, Record | None] | None = None,
    ) -> bool: ...


class Decided(NamedTuple):
    """What the decided operations write, and what the node learns once that committed."""

    writes: list[Write]
    created: bool  # every write puts a key checked, under the lock, to have no record (Storage.write)
    prefixes: list[tuple[str, tuple[HandleValue, ...] | None]]  # prefix handles written, in order (None: deleted)
    secrets: bool  # some HS_SECKEY value written or removed: cached credentials must go


# -- the words of every refusal ---------------------------------------------------------------------------


def needs_credentials(kind: Kind | None, text: str) -> AuthenticationNeeded:
    """401/402 for a write without credentials (``kind`` None: a whole batch)."""
    if kind is None:
        return AuthenticationNeeded("bulk registration needs credentials (Basic INDEX%3AHANDLE:secret)")
    if kind in (DELETE, REMOVE):
        return AuthenticationNeeded(f"deleting {text} needs credentials", handle=text)
    return AuthenticationNeeded(f"writing {text} needs credentials (Basic INDEX%3AHANDLE:secret)", handle=text)


def _exists_message(kind: Kind, text: str) -> str:
    # Each says how to replace instead, in the words of the request that was refused.
    how = "create; upsert replaces a record" if kind == CREATE else "overwrite=false"
    return f"{text} already exists ({how})"


def _already_exists(kind: Kind, text: str) -> HandleAlreadyExists:
    return HandleAlreadyExists(_exists_message(kind, text), handle=text)


def _not_found(kind: Kind, text: str) -> HandleNotFound:
    if kind in (ADD, SET):
        return HandleNotFound(f"{text} does not exist, so values cannot be added to it", handle=text)
    return HandleNotFound(f"{text} does not exist", handle=text)


def _denied(identity: Identity, permission: int, text: str) -> PermissionDenied:
    return PermissionDenied(
        f"{identity} may not {Perm.NAMES[permission]} on {text}: no HS_ADMIN value of the handle or its prefixes "
        f"grants it",
        handle=text,
    )


def _own_prefix_handle(text: str) -> PermissionDenied:
    return PermissionDenied(f"{text} is this node's own prefix handle and cannot be deleted", handle=text)


def refuse_write(zone: Zone, handle: Handle) -> None:
    """Raise NotResponsible (301) unless ``handle`` may be written here per ``zone`` (a delegated
    prefix names the primary servers to send writes to)."""
    decision = zone.route(handle)
    if isinstance(decision, NotHere):
        raise NotResponsible(decision.reason, handle=handle.text)
    if isinstance(decision, Refer):
        where = ", ".join(s.url for s in site_servers(decision.sites) if s.primary) or "its node"
        raise NotResponsible(f"prefix {decision.prefix} is delegated to {where}: send writes there", handle=handle.text)


# -- authorisation ------------------------------------------------------------------------------------------


def _admin_perm(v: HandleValue, plain: int, admin: int) -> int:
    return admin if v.type.upper() == "HS_ADMIN" else plain


def changes_needed(old: Sequence[HandleValue], new: Sequence[HandleValue]) -> set[int]:
    """The HS_ADMIN permission bits a change from ``old`` to ``new`` values needs."""
    before = {v.index: v for v in old}
    after = {v.index: v for v in new}
    needed: set[int] = set()
    for index, v in after.items():
        if index not in before:
            needed.add(_admin_perm(v, Perm.ADD_VALUE, Perm.ADD_ADMIN))
        elif not before[index].same_content(v):
            needed.add(_admin_perm(v, Perm.MODIFY_VALUE, Perm.MODIFY_ADMIN))
    for index, v in before.items():
        if index not in after:
            needed.add(_admin_perm(v, Perm.REMOVE_VALUE, Perm.REMOVE_ADMIN))
    return needed


def _touches_admin(rows: list[list[Any]]) -> bool:
    return any(str(row[1]).upper() in _ADMIN_TYPES for row in rows)


def _same_record(old: Sequence[HandleValue], new: Sequence[HandleValue]) -> bool:
    return len(old) == len(new) and all(a.same_content(b) for a, b in zip(new, old, strict=True))


# -- the decider ----------------------------------------------------------------------------------------------


class WriteDecider:
    """Decides operations in order against an overlay of the stored records; ``load`` first."""

    def __init__(self, rules: WriteRules, identity: Identity, ops: Sequence[WriteOp]) -> None:
        self.rules, self.identity, self.ops = rules, identity, ops
        self.check = identity != rules.operator  # the node's operator may do anything, like a HANDLE.NET admin
        own = rules.zone
        self.own = own.own
        # Prefix handles change routing for the operations after them: route on a copy.
        self.zone = Zone(own.own, set(own.hosted), dict(own.delegated)) if any(op.prefix_handle for op in ops) else own
        self.overlay: dict[str, WriteOp | None] = {}  # key -> the last put of it decided (None: deleted)
        self.pending: dict[str, Record | None] = {}  # the same, for the records authorisation reads
        self.routes: dict[str, NotResponsible | None] = {}  # zone -> refusal, for ordinary handles
        self.grants: dict[tuple[str, bool, int], bool] = {}  # (zone, prefix handle?, permission) -> allowed
        self.existing: set[str] = set()
        self.stored: dict[str, Record] = {}
        self.writes: list[Write] = []
        self.prefixes: list[tuple[str, tuple[HandleValue, ...] | None]] = []
        self.secrets = False

    async def load(self) -> None:
        """Read what the operations need: which keys exist, and the records of those that change one."""
        store = self.rules.store
        wanted = [op.key for op in self.ops if op.kind not in _NEW_ONLY]
        self.stored = await store.get_many(wanted) if wanted else {}
        if len(wanted) == len(self.ops):
            self.existing = set(self.stored)
        else:
            self.existing = await store.existing([op.key for op in self.ops])

    def decided(self) -> Decided:
        return Decided(self.writes, False, self.prefixes, self.secrets)

    def _exists(self, key: str) -> bool:
        return self.overlay[key] is not None if key in self.overlay else key in self.existing

    def _current(self, key: str) -> list[list[Any]]:
        if key in self.overlay:
            put = self.overlay[key]
            return [] if put is None else put.rows_of()
        record = self.stored.get(key)
        return [] if record is None else [value_row(v) for v in record.values]

    def _current_values(self, key: str) -> tuple[HandleValue, ...]:
        if key in self.overlay:
            put = self.overlay[key]
            return () if put is None else put.values_of()
        record = self.stored.get(key)
        return () if record is None else record.values

    def _route(self, op: WriteOp) -> None:
        if op.prefix_handle:
            refuse_write(self.zone, op.handle_of())
            return
        zone = op.zone
        if zone not in self.routes:
            try:
                refuse_write(self.zone, op.handle_of())
                self.routes[zone] = None
            except NotResponsible as exc:
                self.routes[zone] = exc
        refused = self.routes[zone]
        if refused is not None:
            raise NotResponsible(refused.message, handle=op.text)

    async def _require(self, op: WriteOp, permissions: set[int], current: Record | None) -> None:
        """Raise PermissionDenied unless the identity holds ``permissions`` on ``op``'s handle, whose
        record is ``current`` (None: it has none)."""
        for permission in sorted(permissions):
            # Without a record of its own, a handle's rights come from its prefix chain alone.
            memo = (op.zone, op.prefix_handle, permission) if current is None else None
            allowed = self.grants.get(memo) if memo else None
            if allowed is None:
                allowed = await self.rules.may(self.identity, permission, op.handle_of(), current, pending=self.pending)
                if memo:
                    self.grants[memo] = allowed
            if not allowed:
                raise _denied(self.identity, permission, op.text)

    async def _require_any(self, op: WriteOp, permissions: tuple[int, ...], current: Record) -> None:
        """Raise PermissionDenied unless the identity holds at least one of ``permissions`` on ``op``'s
        handle: checked before the values it names are looked at, so the refusal is the same whether
        they exist or not."""
        for permission in permissions:
            if await self.rules.may(self.identity, permission, op.handle_of(), current, pending=self.pending):
                return
        raise _denied(self.identity, permissions[0], op.text)

    async def decide(self, op: WriteOp) -> bool:
        """Decide ``op`` after the operations before it: whether it created the handle or a value.
        A HandleError if it is refused (then nothing of it applies)."""
        self._route(op)
        kind, key = op.kind, op.key
        if kind == DELETE and op.prefix_handle and op.zone == self.own:
            raise _own_prefix_handle(op.text)
        if not self._exists(key):
            if kind not in _WHOLE:
                raise _not_found(kind, op.text)
            if self.check:
                await self._require(op, {Perm.ADD_DERIVED_PREFIX if op.prefix_handle else Perm.ADD_HANDLE}, None)
            self._apply(op, None)
            return True
        if kind in _NEW_ONLY:
            raise _already_exists(kind, op.text)
        if kind == DELETE:
            if self.check:
                current = Record(key, self._current_values(key))
                await self._require(
                    op, {Perm.DELETE_DERIVED_PREFIX if op.prefix_handle else Perm.DELETE_HANDLE}, current
                )
            self._apply(op, self._current(key), delete=True)
            return False
        if self.check and kind in _SOME_VALUES:
            await self._require_any(op, _SOME_VALUES[kind], Record(key, self._current_values(key)))
        old = self._current(key)
        before: tuple[HandleValue, ...] | None = None
        if kind in _WHOLE:  # a whole record replaced: unchanged values keep their timestamps
            kept = keep_row_timestamps(old, op.rows_of())
            if kept is not None:
                op.rows, op.values = kept, None
                if op.blob is not None:
                    op.blob = pack_rows(kept)
            created = False
        else:  # some values added, replaced or removed
            before = self._current_values(key)
            if kind == REMOVE:
                new = remove_values(before, op.indexes or (), handle_text=op.text)
            else:
                new = merge_values(
                    before, op.values_of(), overwrite=kind == SET, handle_text=op.text, limits=self.rules.limits
                )
            op.rows, op.values, op.blob = None, new, None
            created = len(new) > len(before)
        if self.check or kind in _UNCHANGED_IS_NOTHING:
            if before is None:
                before = tuple(map(row_value, old))
            if self.check:
                await self._require(op, changes_needed(before, op.values_of()), Record(key, before))
            if kind in _UNCHANGED_IS_NOTHING and _same_record(before, op.values_of()):
                return created  # nothing changed: nothing to log
        self._apply(op, old)
        return created

    def _apply(self, op: WriteOp, old: list[list[Any]] | None, *, delete: bool = False) -> None:
        """``op`` passed: it is written, and later operations see its result."""
        key = op.key
        if delete:
            self.writes.append(Write(key, None))
        elif op.blob is not None:
            self.writes.append(Write.packed(key, op.blob))
        else:
            self.writes.append(Write(key, op.values_of()))
        self.overlay[key] = None if delete else op
        new = op.rows_of() if not delete and not op.simple else None  # common values: no admin types
        prefix_handle = op.prefix_handle
        if prefix_handle or (old is not None and _touches_admin(old)) or (new is not None and _touches_admin(new)):
            # Rights, groups or secrets changed: what was decided about them before may not hold now.
            for row in (*(old or ()), *(new or ())):
                self.secrets = self.secrets or str(row[1]).upper() == "HS_SECKEY"
            if self.check:
                self.pending[key] = None if delete else Record(key, op.values_of())
            self.grants.clear()
        if prefix_handle:
            values = None if delete else op.values_of()
            self.zone.learn(op.zone, values)
            self.prefixes.append((op.zone, values))
            self.routes.clear()


# -- batches ------------------------------------------------------------------------------------------------------


class BatchDecider:
    """Decides a batch: its plain creates (columns) and its other operations, in the order of their
    positions, each result set in ``results``. Built outside the write lock, it chooses its path
    there: the operator's batch of plain creates only takes ``_decide_plain_creates``, anything else
    is made of ``WriteOp``s (built here, not under the lock) for a ``WriteDecider``.

    ``loading`` and ``deciding``: seconds spent reading the store and deciding (not the pauses in between)."""

    def __init__(self, rules: WriteRules, identity: Identity, creates: PlainCreates, others: list[WriteOp]) -> None:
        self.rules, self.identity = rules, identity
        self.plain: PlainCreates | None = None
        self.ops: list[WriteOp] = []
        if identity == rules.operator and not others:
            self.plain = creates
        elif not creates.positions:
            self.ops = others
        else:
            self.ops = sorted([*creates.ops(), *others], key=_position)  # two sorted runs: merged in O(n)
        self.loading = self.deciding = 0.0

    async def decide(self, results: list[dict[str, Any]]) -> Decided:
        clock = time.perf_counter
        t0 = clock()
        if self.plain is not None:
            decided = await _decide_plain_creates(self.rules, self.plain, results)
            self.deciding += clock() - t0
            return decided
        decider = WriteDecider(self.rules, self.identity, self.ops)
        await decider.load()
        self.loading += clock() - t0
        decide = decider.decide
        ops = self.ops
        for start in range(0, len(ops), CHUNK):
            t = clock()
            for op in ops[start : start + CHUNK]:
                try:
                    await decide(op)
                except HandleError as exc:
                    results[op.position] = failure(exc.response_code, op.text, exc.message)
                    continue
                results[op.position] = {"responseCode": 1, "handle": op.text}
            self.deciding += clock() - t
            await asyncio.sleep(0)  # let other requests in between chunks
        return decider.decided()


async def _decide_plain_creates(rules: WriteRules, creates: PlainCreates, results: list[dict[str, Any]]) -> Decided:
    """``WriteDecider`` for the operator's plain creates, at a fraction of the cost: no ``WriteOp``
    each, routing once per prefix, then only existence decides (in the store or earlier in the batch)."""
    existing = await rules.store.existing(creates.keys)
    zone = rules.zone
    routes: dict[str, NotResponsible | None] = {}
    writes: list[Write] = []
    packed = Write.packed
    for position, text, key, prefix, blob in zip(
        creates.positions, creates.texts, creates.keys, creates.zones, creates.blobs, strict=True
    ):
        if prefix not in routes:
            try:
                refuse_write(zone, Handle(text, prefix, key[len(prefix) + 1 :]))
                routes[prefix] = None
            except NotResponsible as exc:
                routes[prefix] = exc
        refused = routes[prefix]
        if refused is not None:
            results[position] = failure(refused.response_code, text, refused.message)
        elif key in existing:
            results[position] = failure(HandleAlreadyExists.response_code, text, _exists_message(CREATE, text))
        else:
            existing.add(key)
            writes.append(packed(key, blob))
            results[position] = {"responseCode": 1, "handle": text}  # inline: this line runs per identifier
    return Decided(writes, True, [], False)
