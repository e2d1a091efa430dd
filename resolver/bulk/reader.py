"""Reading bulk-registration files (CSV, JSON Lines) into msgpack batches for ``POST /api/batch``.

Sans-IO: a ``BatchReader`` iterates the byte lines it is given and yields ``Batch`` objects whose body
is ready to send. The CSV fast path builds a whole batch from per-column byte templates with C-level
operations only (split, slice, ``map``, ``zip``, ``join``): the msgpack of a cell is a prebuilt prefix
(its value's index and type, then the string header for its length) followed by its bytes, and an
empty cell's prefix is ``b""``, so it vanishes with its template. A chunk the fast path cannot take
verbatim (quotes, blank lines, a wrong number of cells, a stray carriage return, invalid UTF-8) goes
through the csv module row by row, which also finds the exact line of every row it rejects.
"""

from __future__ import annotations

import csv
import json
import operator
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice, repeat
from typing import Any

import msgpack

from resolver.errors import InputError

__all__ = [
    "FORMATS",
    "MAX_BATCH_BYTES",
    "MAX_OPERATIONS",
    "Batch",
    "BatchReader",
    "Column",
    "InputError",
    "Item",
    "Rejected",
    "format_for",
    "parse_header",
]

FORMATS = ("csv", "jsonl")
MAX_OPERATIONS = 10_000  # the server's limit on operations per batch
# The server takes bodies up to 64 MiB; a chunk is cut where an upper bound of its encoded size passes
# half of that, which leaves room for a multi-line CSV record that runs past the chunk.
MAX_BATCH_BYTES = 32 * 1024 * 1024
MALFORMED = 4  # responseCode of an operation that cannot be read (here: a row that is never sent)
_MAX_TYPE_LENGTH = 128  # as the server's limit (resolver.limits)
_MAX_INDEX = 2**31 - 1
_EXPLICIT_INDEX = re.compile(r"([0-9]+):(.*)")
_BLANK = object()  # a blank JSON Lines line: no record
# A CSV cell is string data. It goes out bare (``"data": "..."``, HANDLE.NET's short form, a third
# smaller and one map less for the node to decode), except for the types whose bare data a node reads
# as structured (resolver.values); those get the explicit ``{"format": "string", "value": ...}``.
_STRUCTURED = frozenset({"HS_ADMIN", "HS_VLIST", "HS_SITE", "HS_SITE.6", "HS_SITE.PREFIX"})

Item = tuple[int, str, list[dict[str, Any]]]
"""One operation of a batch as it was read: (line number, handle, values in HANDLE.NET wire form)."""


@dataclass(frozen=True, slots=True)
class Column:
    index: int
    type: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input record that was not registered, and why (one line of the report file)."""

    line: int
    handle: str
    response_code: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "handle": self.handle, "responseCode": self.response_code, "message": self.message}


@dataclass(slots=True)
class Batch:
    number: int  # 0, 1, 2... in file order
    first_line: int  # the physical line it starts at (1-based; the CSV header is line 1)
    end_line: int  # its last physical line: the next batch starts at end_line + 1
    records: int  # input records in it: operations plus the rows rejected while reading
    count: int  # operations in ``body``
    body: bytes  # msgpack {"operations": [...]}; b"" when count is 0
    rejected: list[Rejected]  # refused while reading, never sent
    item: Callable[[int], Item]  # operation i as it was read (for reports and for verification)


def format_for(path: str) -> str | None:
    """The input format a file name implies: .csv -> csv, .jsonl/.ndjson -> jsonl."""
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return None


def parse_header(cells: Sequence[str]) -> tuple[Column, ...]:
    """The value columns of a CSV header ``handle,URL,2:MODEL,...``: each header is a value type,
    optionally ``INDEX:TYPE``; the others get 1, 2, 3... in order, skipping the explicit indexes."""
    if not cells or cells[0].strip().lower() != "handle":
        first = cells[0] if cells else ""
        raise InputError(f'line 1: the first column of the header must be "handle", not {first!r}')
    parsed: list[tuple[int | None, str]] = []
    for number, raw in enumerate(cells[1:], start=2):
        text = raw.strip()
        match = _EXPLICIT_INDEX.fullmatch(text)
        index = int(match.group(1)) if match else None
        vtype = match.group(2).strip() if match else text
        where = f"line 1, column {number} ({raw!r})"
        if not vtype:
            raise InputError(f"{where}: the header names no value type")
        if len(vtype) > _MAX_TYPE_LENGTH or not vtype.isprintable():
            raise InputError(f"{where}: a value type is 1 to {_MAX_TYPE_LENGTH} printable characters")
        if index is not None and not 1 <= index <= _MAX_INDEX:
            raise InputError(f"{where}: value indexes are 1 to {_MAX_INDEX}")
        parsed.append((index, vtype))
    explicit = [i for i, _ in parsed if i is not None]
    if len(set(explicit)) != len(explicit):
        raise InputError(f"line 1: an explicit index appears twice in the header: {sorted(explicit)}")
    taken, columns, next_index = set(explicit), [], 1
    for index, vtype in parsed:
        if index is None:
            while next_index in taken:
                next_index += 1
            index = next_index
            taken.add(index)
        columns.append(Column(index, vtype))
    return tuple(columns)


# -- msgpack building blocks ------------------------------------------------------------------------

_packer = msgpack.Packer()


def _pack(obj: Any) -> bytes:
    packed: bytes = _packer.pack(obj)
    return packed


def _str_header(n: int) -> bytes:
    if n < 32:
        return bytes((0xA0 | n,))
    if n < 256:
        return bytes((0xD9, n))
    if n < 65536:
        return b"\xda" + n.to_bytes(2, "big")
    return b"\xdb" + n.to_bytes(4, "big")


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _body(count: int, operations: bytes) -> bytes:
    return b"\x81" + _pack("operations") + _array_header(count) + operations if count else b""


class _Prefixed(dict[int, bytes]):
    """``table[n]``: a fixed prefix, then the msgpack header of an n-byte string; built once per length.
    With ``omit_empty``, ``table[0]`` is ``b""``: an empty cell disappears together with its prefix."""

    __slots__ = ("_prefix",)

    def __init__(self, prefix: bytes, *, omit_empty: bool) -> None:
        super().__init__((n, prefix + _str_header(n)) for n in range(256))
        self._prefix = prefix
        if omit_empty:
            self[0] = b""

    def __missing__(self, n: int) -> bytes:
        self[n] = built = self._prefix + _str_header(n)
        return built


def _wire(column: Column, value: str) -> dict[str, Any]:
    if column.type.upper() in _STRUCTURED:
        return {"index": column.index, "type": column.type, "data": {"format": "string", "value": value}}
    return {"index": column.index, "type": column.type, "data": value}


def _value_prefix(column: Column) -> bytes:
    """The msgpack of ``_wire(column, cell)`` up to the cell's string header."""
    head = b"\x83" + _pack("index") + _pack(column.index) + _pack("type") + _pack(column.type) + _pack("data")
    if column.type.upper() in _STRUCTURED:
        return head + b"\x82" + _pack("format") + _pack("string") + _pack("value")
    return head


class _CsvEncoder:
    def __init__(self, columns: tuple[Column, ...], op: str) -> None:
        self.columns = columns
        self.width = len(columns) + 1
        # Values go out in index order whatever the column order: the order a node's fast path takes.
        self._order = sorted(range(len(columns)), key=lambda k: columns[k].index)
        self._cells = [_Prefixed(_value_prefix(columns[k]), omit_empty=True) for k in self._order]
        # {"op": op, "handle": <handle>, "values": [...]}: the handle is appended, then _values[missing].
        self._handle = _Prefixed(b"\x83" + _pack("op") + _pack(op) + _pack("handle"), omit_empty=False)
        k = len(columns)
        self._values = [_pack("values") + _array_header(k - missing) for missing in range(k + 1)]
        # Upper bounds of what the templates add, for the size estimate of a chunk.
        self.cell_overhead = max((len(t[0xFFFF]) for t in self._cells), default=0)
        self.row_overhead = len(self._handle[0xFFFF]) + len(self._values[0])

    def fast(self, lines: list[bytes], block: bytes) -> tuple[bytes, list[bytes]] | None:
        """The operations of a chunk where every line is one plain row, or None if any is not."""
        width = self.width
        if width == 1 or b'"' in block or b"\x00" in block:
            return None
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
            if b"\r" in block:
                return None
        if not block.isascii():
            try:
                block.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if set(map(bytes.count, lines, repeat(b","))) != {width - 1}:
            return None  # also catches blank lines
        flat = (block if block.endswith(b"\n") else block + b"\n").replace(b"\n", b",").split(b",")
        flat.pop()  # after the last newline
        handles = flat[0::width]
        data = [flat[1 + k :: width] for k in self._order]
        sparse = [column for column in data if b"" in column]
        if sparse:
            missing = map(sum, zip(*(map(operator.not_, column) for column in sparse), strict=True))
            counts: Iterator[bytes] = map(self._values.__getitem__, missing)
        else:
            counts = repeat(self._values[0], len(lines))
        parts: list[Iterable[bytes]] = [map(self._handle.__getitem__, map(len, handles)), handles, counts]
        for table, column in zip(self._cells, data, strict=True):
            parts.append(map(table.__getitem__, map(len, column)))
            parts.append(column)
        return b"".join(chain.from_iterable(zip(*parts, strict=True))), flat

    def row(self, row: Sequence[str]) -> bytes:
        """One operation, for the slow path."""
        handle = row[0].encode("utf-8")
        cells: list[bytes] = []
        for table, k in zip(self._cells, self._order, strict=True):
            if cell := row[1 + k]:
                raw = cell.encode("utf-8")
                cells += (table[len(raw)], raw)
        return b"".join((self._handle[len(handle)], handle, self._values[len(self.columns) - len(cells) // 2], *cells))

    def values(self, cells: Sequence[str]) -> list[dict[str, Any]]:
        return [_wire(c, v) for c, v in zip(self.columns, cells, strict=True) if v]


# -- reading ----------------------------------------------------------------------------------------


class _Lines:
    """The file's lines, with lines a cut chunk gave back read again first."""

    def __init__(self, source: Iterable[bytes]) -> None:
        self._source = iter(source)
        self._back: deque[bytes] = deque()

    def take(self, n: int) -> list[bytes]:
        if not self._back:
            return list(islice(self._source, n))
        out = [self._back.popleft() for _ in range(min(n, len(self._back)))]
        return out + list(islice(self._source, n - len(out)))

    def give_back(self, lines: list[bytes]) -> None:
        self._back.extendleft(reversed(lines))

    def skip(self, n: int) -> int:
        back = min(n, len(self._back))
        for _ in range(back):
            self._back.popleft()
        return back + sum(1 for _ in islice(self._source, n - back))

    def __iter__(self) -> Iterator[bytes]:
        while True:
            if self._back:
                yield self._back.popleft()
                continue
            line = next(self._source, None)
            if line is None:
                return
            yield line


def _decoded(lines: Iterable[bytes]) -> Iterator[str]:
    # Invalid UTF-8 survives as lone surrogates, so the row holding it can be rejected by itself.
    return (line.decode("utf-8", "surrogateescape") for line in lines)


class BatchReader:
    """Batches of at most ``batch_size`` input lines (and at most about MAX_BATCH_BYTES of body).

    ``skip_lines`` physical lines (the CSV header included) are skipped first: a checkpoint's position.
    """

    def __init__(
        self,
        source: Iterable[bytes],
        *,
        fmt: str,
        op: str,
        batch_size: int = 5000,
        skip_lines: int = 0,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if fmt not in FORMATS:
            raise InputError(f"unknown input format {fmt!r} (known: {', '.join(FORMATS)})")
        if not 1 <= batch_size <= MAX_OPERATIONS:
            raise InputError(f"the batch size must be 1 to {MAX_OPERATIONS}")
        self.fmt = fmt
        self._op = op
        self._batch_size = batch_size
        self._max_bytes = max_bytes
        self._lines = _Lines(source)
        self._csv: _CsvEncoder | None = None
        self.consumed = 0  # physical lines read so far
        if fmt == "csv":
            header = self._lines.take(1)
            if not header:
                raise InputError("the file is empty: a CSV file starts with a header line")
            text = header[0].removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
            try:
                cells = next(csv.reader([text]), [])
            except csv.Error as exc:
                raise InputError(f"line 1: the header is not valid CSV: {exc}") from exc
            self._csv = _CsvEncoder(parse_header(cells), op)
            self.consumed = 1
        if skip_lines > self.consumed:
            self.consumed += self._lines.skip(skip_lines - self.consumed)
        self._number = 0

    @property
    def columns(self) -> tuple[Column, ...]:
        return self._csv.columns if self._csv else ()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            lines = self._lines.take(self._batch_size)
            if not lines:
                return
            block = self._fit(lines)
            first = self.consumed + 1
            batch = self._csv_batch(lines, block, first) if self._csv else self._jsonl_batch(lines, first)
            self.consumed = batch.end_line
            self._number += 1
            yield batch

    def _fit(self, lines: list[bytes]) -> bytes:
        """Cut ``lines`` (in place) where an upper bound of the body passes max_bytes; the rest goes back."""
        block = b"".join(lines)
        per_cell, per_row = (self._csv.cell_overhead, self._csv.row_overhead) if self._csv else (0, 40)
        scale = 1 if self._csv else 3  # JSON to msgpack: a short float grows from 3 bytes to 9
        bound = scale * len(block) + per_cell * (block.count(b",") + len(lines)) + per_row * len(lines)
        if bound <= self._max_bytes:
            return block
        total = 0
        for cut, line in enumerate(lines):
            total += scale * len(line) + per_cell * (line.count(b",") + 1) + per_row
            if total > self._max_bytes and cut > 0:
                self._lines.give_back(lines[cut:])
                del lines[cut:]
                break
        return b"".join(lines)

    def _csv_batch(self, lines: list[bytes], block: bytes, first: int) -> Batch:
        encoder = self._csv
        assert encoder is not None
        fast = encoder.fast(lines, block)
        if fast is not None:
            operations, flat = fast
            width = encoder.width

            def item(i: int) -> Item:
                cells = [c.decode("utf-8") for c in flat[i * width : (i + 1) * width]]
                return first + i, cells[0], encoder.values(cells[1:])

            n = len(lines)
            return Batch(self._number, first, first + n - 1, n, n, _body(n, operations), [], item)
        return self._csv_slow(encoder, lines, first)

    def _csv_slow(self, encoder: _CsvEncoder, lines: list[bytes], first: int) -> Batch:
        # The reader pulls further lines from the file when a quoted field runs past the chunk.
        reader = csv.reader(chain(_decoded(lines), _decoded(self._lines)))
        rows: list[tuple[int, list[str]]] = []
        rejected: list[Rejected] = []
        records = 0
        while reader.line_num < len(lines):
            line = first + reader.line_num
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                records += 1
                rejected.append(Rejected(line, "", MALFORMED, f"not valid CSV: {exc}"))
                continue
            if not row:
                continue  # a blank line is no record
            records += 1
            if len(row) != encoder.width:
                message = f"the row has {len(row)} cells, but the header has {encoder.width} columns"
                rejected.append(Rejected(line, row[0], MALFORMED, message))
                continue
            try:
                ",".join(row).encode("utf-8")
            except UnicodeEncodeError:
                handle = row[0].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                rejected.append(Rejected(line, handle, MALFORMED, "the row is not valid UTF-8"))
                continue
            rows.append((line, row))
        operations = b"".join(map(encoder.row, (row for _, row in rows)))

        def item(i: int) -> Item:
            line, row = rows[i]
            return line, row[0], encoder.values(row[1:])

        end = first + reader.line_num - 1
        return Batch(self._number, first, end, records, len(rows), _body(len(rows), operations), rejected, item)

    def _jsonl_batch(self, lines: list[bytes], first: int) -> Batch:
        # One json.loads for the whole chunk when every line is one JSON value (a blank or broken line
        # makes the list invalid, and a line with two values makes it too long): the common case.
        try:
            parsed: list[Any] | None = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            parsed = None
        if parsed is None or len(parsed) != len(lines):
            parsed = [self._json_line(raw) for raw in lines]
        items: list[Item] = []
        operations: list[dict[str, Any]] = []
        rejected: list[Rejected] = []
        records = 0
        for number, record in enumerate(parsed, start=first):
            if record is _BLANK:
                continue
            records += 1
            if isinstance(record, Rejected):
                rejected.append(Rejected(number, "", MALFORMED, record.message))
                continue
            handle = record.get("handle") if isinstance(record, dict) else None
            if not isinstance(handle, str):
                message = 'each line must be a JSON object {"handle": "...", "values": [...]}'
                rejected.append(Rejected(number, "", MALFORMED, message))
                continue
            values = record.get("values")
            if not isinstance(values, list):
                rejected.append(Rejected(number, handle, MALFORMED, '"values" must be a list of values'))
                continue
            items.append((number, handle, values))
            operations.append({"op": self._op, "handle": handle, "values": values})
        try:
            body = _pack({"operations": operations}) if operations else b""
        except (OverflowError, ValueError, TypeError):  # an integer msgpack cannot carry: find it
            body, kept = self._pack_each(items, operations, rejected)
            items = kept
        rejected.sort(key=lambda r: r.line)
        end = first + len(lines) - 1
        return Batch(self._number, first, end, records, len(items), body, rejected, items.__getitem__)

    @staticmethod
    def _json_line(raw: bytes) -> Any:
        if not raw.strip():
            return _BLANK
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return Rejected(0, "", MALFORMED, "the line is not valid UTF-8")
        except ValueError as exc:
            return Rejected(0, "", MALFORMED, f"not valid JSON: {exc}")

    @staticmethod
    def _pack_each(
        items: list[Item], operations: list[dict[str, Any]], rejected: list[Rejected]
    ) -> tuple[bytes, list[Item]]:
        parts, kept = [], []
        for item, operation in zip(items, operations, strict=True):
            try:
                parts.append(_pack(operation))
            except (OverflowError, ValueError, TypeError) as exc:
                rejected.append(Rejected(item[0], item[1], MALFORMED, f"cannot be encoded: {exc}"))
                continue
            kept.append(item)
        return _body(len(kept), b"".join(parts)), kept
