"""Preparing ``POST /api/batch`` operations: decoding, validating and packing, with no I/O.

Each raw operation becomes a ``WriteOp`` (valid so far: what it does is decided later, under the
write lock, by ``nodes.authoritative.writes``) or its failure result. This is the part of a batch that costs CPU per
identifier, so it runs either in the node's event loop, a chunk at a time, or whole in a worker
process (``nodes.authoritative.batch.workers``): ``prepare_body`` is the worker's entry point. Either way the result is
a ``Prepared``: failures, the plain creates bulk loads are made of as columns (``PlainCreates``,
decided without a ``WriteOp`` each), and the rest as tuples (``WriteOp.to_wire``/``from_wire``); all
of it plain lists, cheap to send between processes.

*validate*: identifiers through a memo of valid prefixes (``parse_handle`` decides the rest), values
of the common kind through ``values.simple_value_rows`` straight into the stored layout (no
``HandleValue``), anything else through ``parse_put_body``. *pack*: once per record, into exactly
what the store keeps (``Write.packed``); HS_SECKEY values are hashed first (``hash_secrets``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

import msgpack

from nodes.authoritative.write_ops import BATCH_KINDS, PlainCreates, WireOp, WriteOp, failure
from resolver.auth import hash_secret_values
from resolver.codec import Malformed, batch_operations, pack_rows, row_packer
from resolver.errors import HandleError, InvalidHandle
from resolver.limits import Limits
from resolver.names import MAX_HANDLE_LENGTH, Handle, parse_handle
from resolver.records import parse_put_body
from resolver.values import describe, simple_value_rows

__all__ = [
    "CHUNK",
    "Prepared",
    "hash_secrets",
    "pack_op",
    "prepare_body",
    "prepare_chunk",
    "prepare_steps",
]

# Operations decoded and validated between two yields to the event loop: ~3 ms of work here.
CHUNK = 250


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


def prepare(raw: Any, position: int, now: int, limits: Limits) -> WriteOp | dict[str, Any]:
    """Validate one raw operation: a ``WriteOp`` (values not yet packed), or its failure result."""
    if type(raw) is not dict:
        if isinstance(raw, Malformed):
            return failure(4, "", raw.message)
        return failure(4, "", f"operation {position + 1} is not a map of op, handle and values: {describe(raw)}")
    text = raw.get("handle")
    if type(text) is not str:
        return failure(4, "", f'operation {position + 1} has no "handle" string')
    kind = raw.get("op")
    if kind not in BATCH_KINDS:
        return failure(4, text, f'unknown op {describe(kind)}: "op" must be "create", "upsert" or "delete"')
    try:
        key, zone, handle = _parse(text)
    except InvalidHandle as exc:
        return failure(exc.response_code, text, exc.message)
    op = WriteOp(position, kind, text, key, zone, handle)
    if kind == "delete":
        return op
    raw_values = raw.get("values")
    if handle is None:
        op.rows = simple_value_rows(raw_values, now, limits)
        if op.rows is not None:
            op.simple = True
            return op
    if type(raw_values) is not list:
        return failure(4, text, f'a {kind} needs "values", a list of values (may be empty)')
    try:
        op.values = parse_put_body(raw_values, handle_text=text, now=now, limits=limits)
    except HandleError as exc:
        return failure(exc.response_code, text, exc.message)
    op.secret = any(v.type.upper() == "HS_SECKEY" for v in op.values)
    return op


_UNPACKABLE = (TypeError, ValueError, OverflowError)  # what msgpack raises for values it cannot encode


def _unstorable(op: WriteOp, exc: Exception) -> dict[str, Any]:
    return failure(202, op.text, f"the values cannot be stored: {exc}")


def pack_op(op: WriteOp, packer: msgpack.Packer | None = None) -> dict[str, Any] | None:
    """Pack ``op``'s values (from its HandleValues if it has no rows yet); a failure result if they cannot be."""
    try:
        op.blob = pack_rows(op.rows_of(), packer)
    except _UNPACKABLE as exc:
        return _unstorable(op, exc)
    return None


def hash_secrets(ops: Iterable[WriteOp]) -> None:
    """Hash HS_SECKEY clear texts (PBKDF2, ~60 ms each: run it in a worker thread); repack with ``pack_op``."""
    for op in ops:
        op.values = hash_secret_values(op.values_of())
        op.rows = op.blob = None


def prepare_chunk(
    chunk: list[Any], base: int, now: int, limits: Limits, packer: msgpack.Packer
) -> list[WriteOp | dict[str, Any]]:
    """Validate and pack raw operations ``base``, ``base + 1``...: each a WriteOp or its failure result.

    Call it with the cyclic GC disabled: a chunk allocates many containers and frees them (reference
    counting) before it ends, all without cycles; the collector would only walk them, tripling the
    time. Secrets are left unpacked (``hash_secrets`` first)."""
    items = [prepare(raw, base + i, now, limits) for i, raw in enumerate(chunk)]
    for i, item in enumerate(items):
        if type(item) is WriteOp and item.kind != "delete" and not item.secret:
            failed = pack_op(item, packer)
            if failed is not None:
                items[i] = failed
            elif item.simple:
                item.rows = None
    return items


class Prepared(NamedTuple):
    """A prepared batch: every operation is in exactly one of the three, by its position."""

    size: int  # operations
    failures: list[tuple[int, dict[str, Any]]]
    creates: PlainCreates
    others: list[tuple[int, WireOp]]  # WriteOp.to_wire() of the rest

    @classmethod
    def empty(cls) -> Prepared:
        return cls(0, [], PlainCreates.empty(), [])

    def add(self, items: list[WriteOp | dict[str, Any]]) -> Prepared:
        """The next operations, as ``prepare_chunk`` made them, added."""
        creates, failures, others = self.creates, self.failures, self.others
        for position, item in enumerate(items, self.size):
            if not isinstance(item, WriteOp):
                failures.append((position, item))
            elif item.simple and item.kind == "create" and item.blob is not None:
                creates.positions.append(position)
                creates.texts.append(item.text)
                creates.keys.append(item.key)
                creates.zones.append(item.zone)
                creates.blobs.append(item.blob)
            else:
                try:
                    others.append((position, item.to_wire()))
                except _UNPACKABLE as exc:
                    failures.append((position, _unstorable(item, exc)))
        return self._replace(size=self.size + len(items))

    def others_ops(self) -> list[WriteOp]:
        """The operations that are not plain creates, in order, rebuilt (``WriteOp.from_wire``)."""
        return [WriteOp.from_wire(position, wire) for position, wire in self.others]


def prepare_steps(body: bytes, media: str, limits: Limits, now: int) -> Iterator[Prepared]:
    """The body prepared ``CHUNK`` operations at a time: after each chunk, all of it so far (the
    event loop serves other requests in between). A body that cannot be read raises ``ProtocolError``
    when the decoding reaches the damage."""
    _, raw_ops = batch_operations(body, media, limits.max_batch_operations)
    packer = row_packer()
    prepared = Prepared.empty()
    collecting = gc.isenabled()
    while True:
        gc.disable()  # see prepare_chunk
        try:
            chunk = list(islice(raw_ops, CHUNK))
            if not chunk:
                return
            prepared = prepared.add(prepare_chunk(chunk, prepared.size, now, limits, packer))
        finally:
            if collecting:
                gc.enable()
        yield prepared


def prepare_body(body: bytes, media: str, limits: Limits, now: int) -> Prepared:
    """A whole batch body, prepared: the worker process's entry point (its ProtocolError is pickled
    back to the node by the worker pool)."""
    prepared = Prepared.empty()
    for step in prepare_steps(body, media, limits, now):
        prepared = step  # the last step is the whole batch
    return prepared
