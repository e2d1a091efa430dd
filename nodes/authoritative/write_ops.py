"""What a write asks of an authoritative node: one operation (``WriteOp``) of a closed set of kinds, and
the operator's plain creates of a bulk load as columns (``PlainCreates``); no I/O.

The kinds, and what each does to the record it names (``nodes.authoritative.writes`` decides them)::

    kind      made by                          record exists                 record missing
    create    batch create                     101 already exists            created
    put-new   PUT overwrite=false, mint        101 already exists            created (201)
    upsert    batch upsert                     replaced, timestamps kept     created
    put       PUT overwrite=true               replaced, timestamps kept;    created
                                               nothing logged if unchanged
    add       PUT ?index= overwrite=false      values added (409 if one is)  100 not found
    set       PUT ?index= overwrite=true       values added or replaced      100 not found
    delete    batch delete, DELETE             deleted                       100 not found
    remove    DELETE ?index=                   values removed (200/... if    100 not found
                                               an index is missing)

Batches build their operations from the wire (``nodes.authoritative.batch.prep``), in the event loop
or in a worker process: this module stays light enough for a worker to import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from resolver.codec import pack_rows, row_value, unpack_rows, value_row
from resolver.names import Handle, parse_handle
from resolver.values import HandleValue

__all__ = [
    "ADD",
    "BATCH_KINDS",
    "CREATE",
    "DELETE",
    "PUT",
    "PUT_NEW",
    "REMOVE",
    "SET",
    "UPSERT",
    "Kind",
    "PlainCreates",
    "WireOp",
    "WriteOp",
    "delete_kind",
    "failure",
    "put_kind",
]

Kind = Literal["create", "put-new", "upsert", "put", "add", "set", "delete", "remove"]
CREATE: Kind = "create"
PUT_NEW: Kind = "put-new"
UPSERT: Kind = "upsert"
PUT: Kind = "put"
ADD: Kind = "add"
SET: Kind = "set"
DELETE: Kind = "delete"
REMOVE: Kind = "remove"
# What a batch operation's "op" may say.
BATCH_KINDS: tuple[Kind, ...] = (CREATE, UPSERT, DELETE)

# Flags of WriteOp.to_wire.
_PREFIX_HANDLE, _SIMPLE, _SECRET = 1, 2, 4
# WriteOp.to_wire(): kind, text, key, zone, flags, packed values.
WireOp = tuple[Kind, str, str, str, int, "bytes | None"]


def put_kind(*, overwrite: bool, indexes: Sequence[int] | None) -> Kind:
    """The kind of a ``PUT /api/handles/...`` with these query parameters."""
    if indexes is None:
        return PUT if overwrite else PUT_NEW
    return SET if overwrite else ADD


def delete_kind(indexes: Sequence[int] | None) -> Kind:
    """The kind of a ``DELETE /api/handles/...``: some values (``?index=``) or the whole record."""
    return REMOVE if indexes else DELETE


class WriteOp:
    """One valid operation, waiting for the decision under the write lock."""

    __slots__ = (
        "blob", "handle", "indexes", "key", "kind", "position", "prefix_handle", "rows", "secret", "simple", "text",
        "values", "zone",
    )  # fmt: skip

    def __init__(self, position: int, kind: Kind, text: str, key: str, zone: str, handle: Handle | None) -> None:
        self.position, self.kind, self.text, self.key, self.zone = position, kind, text, key, zone
        # Batches parse a prefix handle only, building the others when needed (handle_of).
        self.handle = handle
        self.prefix_handle = handle is not None and handle.is_prefix_handle  # 0.NA/...: takes the slow paths
        # A put's values: rows in the stored layout, HandleValues, the packed blob. Once packed, the
        # rows of the common kind are dropped (fewer live objects for the garbage collector to
        # walk) and come back from the blob if a later operation of the batch needs them.
        self.rows: list[list[Any]] | None = None
        self.values: tuple[HandleValue, ...] | None = None
        self.blob: bytes | None = None
        self.secret = False  # holds an HS_SECKEY value
        self.simple = False  # values of the common kind only (simple_value_rows): no HS_ADMIN, HS_VLIST...
        self.indexes: Sequence[int] | None = None  # add, set, remove: the indexes named

    @classmethod
    def single(
        cls, kind: Kind, handle: Handle, values: tuple[HandleValue, ...] = (), indexes: Sequence[int] | None = None
    ) -> WriteOp:
        """A single write (PUT or DELETE of one handle) as an operation."""
        op = cls(0, kind, handle.text, handle.key, handle.zone, handle)
        op.values, op.indexes = values, indexes
        return op

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

    def to_wire(self) -> WireOp:
        """What another process needs to rebuild it (``from_wire``); the values as their packed blob
        (still clear text for a secret: the node hashes those itself)."""
        if self.blob is None and self.kind != DELETE:
            self.blob = pack_rows(self.rows_of())
        flags = (_PREFIX_HANDLE if self.prefix_handle else 0) | (_SIMPLE if self.simple else 0)
        return self.kind, self.text, self.key, self.zone, flags | (_SECRET if self.secret else 0), self.blob

    @classmethod
    def from_wire(cls, position: int, wire: WireOp) -> WriteOp:
        kind, text, key, zone, flags, blob = wire
        op = cls(position, kind, text, key, zone, parse_handle(text) if flags & _PREFIX_HANDLE else None)
        op.simple, op.secret, op.blob = bool(flags & _SIMPLE), bool(flags & _SECRET), blob
        return op


class PlainCreates(NamedTuple):
    """Creates of ordinary handles with values of the common kind, packed (what bulk loads are made
    of), as columns: sent between processes and decided without a ``WriteOp`` each."""

    positions: list[int]
    texts: list[str]
    keys: list[str]
    zones: list[str]
    blobs: list[bytes]

    @classmethod
    def empty(cls) -> PlainCreates:
        return cls([], [], [], [], [])

    def ops(self) -> list[WriteOp]:
        """Each as a ``WriteOp``, for the decider's general path."""
        out = []
        for position, text, key, zone, blob in zip(
            self.positions, self.texts, self.keys, self.zones, self.blobs, strict=True
        ):
            op = WriteOp(position, CREATE, text, key, zone, None)
            op.simple, op.blob = True, blob
            out.append(op)
        return out


def failure(code: int, text: str, message: str) -> dict[str, Any]:
    """A batch operation's result when it failed (one that applied is ``{"responseCode": 1, "handle": text}``)."""
    return {"responseCode": code, "handle": text, "message": message}
