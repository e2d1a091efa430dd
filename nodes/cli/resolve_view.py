"""``idres resolve``: walk the tree from one server and show each hop, the values, or what went wrong."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from resolver.bodies import answer_body, not_found_body, values_not_found_body
from resolver.client import HandleClient, HttpTransport
from resolver.errors import UpstreamError
from resolver.names import parse_handle
from resolver.records import filter_values
from resolver.resolution import Answer, Hop, Resolution, prefix_unregistered
from resolver.sites import SiteServer
from resolver.tls import node_session
from resolver.upstream import Upstreams
from resolver.walk import WALK_UPSTREAM, walk

__all__ = ["Walked", "print_error", "print_walk", "walk_from"]


@dataclass(frozen=True, slots=True)
class Walked:
    """A finished walk, the body to show for it (None when it failed) and what its last node said."""

    resolution: Resolution
    error: UpstreamError | None
    """Why no node answered; None when one did, or when none serves the prefix (then "not found")."""
    body: dict[str, Any] | None
    """The answer as a node would send it, with the ``--type``/``--index`` filter applied."""
    last_reply: Mapping[str, Any]
    """The body of the last reply, which carries a recursive node's ``trace``."""

    @property
    def found(self) -> bool:
        return self.body is not None and self.body.get("responseCode") == 1


class _KeepLastReply:
    """The transport, keeping the body of the last reply (``trace`` is in it, not in the outcome)."""

    def __init__(self, inner: HttpTransport) -> None:
        self._inner = inner
        self.last: Mapping[str, Any] = {}

    async def query(self, url: str, handle: str, timeout: float) -> tuple[int, Mapping[str, Any]]:
        status, body = await self._inner.query(url, handle, timeout)
        self.last = body
        return status, body

    async def probe(self, url: str, timeout: float) -> bool:
        return await self._inner.probe(url, timeout)


async def walk_from(
    server: str,
    text: str,
    *,
    types: Sequence[str] = (),
    indexes: Sequence[int] = (),
    trace: bool = False,
    cafile: str | None = None,
) -> Walked:
    """Walk to ``text`` with ``server`` as the only root; ``trace`` asks a recursive node for its hops;
    HTTPS servers are verified against ``cafile`` (default: the system's CAs). InvalidHandle when
    ``text`` is not a handle."""
    handle = parse_handle(text)
    async with node_session(cafile) as session:
        transport = _KeepLastReply(HttpTransport(HandleClient(session), params=[("trace", "true")] if trace else []))
        resolution = await walk(handle, [SiteServer(server, True)], transport, Upstreams(WALK_UPSTREAM))
    result, failed = resolution.result, resolution.failed
    if failed is not None and not prefix_unregistered(failed):
        return Walked(resolution, failed, None, transport.last)
    if not isinstance(result, Answer):  # not found, or no node serves its prefix
        body = not_found_body(text)
    elif types or indexes:
        selected = filter_values(result.values, types, indexes)
        body = answer_body(text, selected) if selected else values_not_found_body(text)
    else:
        body = answer_body(text, result.values)
    return Walked(resolution, None, body, transport.last)


def _outcome(hop: Hop) -> str:
    if hop.outcome == "referral":
        return f"referral to {hop.detail}"
    if hop.outcome == "failure":
        return f"failure: {hop.detail}"
    return hop.outcome


def _data_text(value: Mapping[str, Any]) -> str:
    data = value.get("data", {})
    inner = data.get("value") if isinstance(data, dict) else data
    return inner if isinstance(inner, str) else json.dumps(inner, ensure_ascii=False)


def _fits(console: Console, table: Table) -> bool:
    """Whether ``table`` fits the console with no cell wrapped or folded (measured with room to
    spare: a measure within the console's width is clamped to it)."""
    return Measurement.get(console, console.options.update_width(1 << 16), table).maximum <= console.width


def _table(title: str | None, columns: Sequence[str], *, edge: bool = True) -> Table:
    # fold, never "…": a URL, port or identity cut short is worse than one on two lines (issue 13).
    # Without edges, columns are two spaces apart instead of three characters: 2 more for the data.
    table = Table(
        title=title,
        show_edge=edge,
        box=box.HEAVY_HEAD if edge else box.SIMPLE_HEAD,
        pad_edge=edge,
        padding=(0, 1) if edge else (0, 1, 0, 0),
    )
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column == "ms" else "left")
    return table


@dataclass(frozen=True, slots=True)
class _Row:
    """One row of the path: a hop of this walk, or (``via``) one of the recursive node's own."""

    via: bool
    url: str
    description: str
    answer: str
    ms: str


def _path_rows(walked: Walked) -> list[_Row]:
    rows = [_Row(False, hop.url, hop.description, _outcome(hop), f"{hop.ms:.1f}") for hop in walked.resolution.hops]
    # A recursive node reports the walk it made on our behalf (trace=true), for an error too: show it.
    trace = walked.last_reply.get("trace")
    for step in trace if isinstance(trace, list) else []:
        if isinstance(step, dict):
            outcome, detail = str(step.get("outcome") or ""), str(step.get("detail") or "")
            if outcome == "referral":
                said = f"referral to {detail}"
            else:
                said = ": ".join(part for part in (outcome, detail) if part)
            ms = step.get("ms", 0)
            rows.append(
                _Row(
                    True,
                    str(step.get("address", "")),
                    str(step.get("node", "")),
                    f"cache {step.get('cache', '')}" + (f", {said}" if said else ""),
                    f"{ms:.1f}" if isinstance(ms, int | float) else str(ms),
                )
            )
    return rows


def _print_path(console: Console, walked: Walked) -> None:
    """The hops, one row each, the recursive node's own indented under it ("via"); when a row would
    not fit the console, the node's description goes on a line of its own under its address, so
    that no address is broken."""
    rows = _path_rows(walked)
    for stacked in (False, True):
        table = _table("path", ("hop", "node", "answer", "ms"), edge=False)
        for i, row in enumerate(rows, 1):
            node = f"{row.url}\n{row.description}" if stacked and row.description else f"{row.url} {row.description}"
            cell = Text(f"via {node}".rstrip() if row.via else node.rstrip())
            table.add_row(str(i), Padding(cell, (0, 0, 0, 2)) if row.via else cell, Text(row.answer), row.ms)
        if stacked or _fits(console, table):
            break
    console.print(table)


def _print_values(console: Console, title: str, values: Sequence[Mapping[str, Any]]) -> None:
    """The values as a table with their ttl and timestamp; when that does not fit the console, a
    table of index, type and data, the ttl and timestamp said once under it when every value shares
    them (as values written together do), else under each value's data."""
    cells = [
        (str(v.get("index")), str(v.get("type")), _data_text(v), str(v.get("ttl", "")), str(v.get("timestamp", "")))
        for v in values
    ]
    table = _table(title, ("index", "type", "data", "ttl", "timestamp"))
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # Text: a value's "[...]" is no markup
    if _fits(console, table):
        console.print(table)
        return
    shared = {(ttl, stamp) for *_, ttl, stamp in cells}
    table = _table(title, ("index", "type", "data"), edge=False)
    for index, kind, data, ttl, stamp in cells:
        shown = Text(data) if len(shared) == 1 else Text.assemble(data, "\n", (f"ttl {ttl}, {stamp}", "dim"))
        table.add_row(index, Text(kind), shown)
    if len(shared) == 1:
        ttl, stamp = next(iter(shared))
        table.caption, table.caption_justify = Text(f"every value: ttl {ttl}, timestamp {stamp}"), "left"
    console.print(table)


def print_walk(console: Console, text: str, walked: Walked) -> None:
    """The path (each hop: node, outcome, ms; and a recursive node's own trace), then the values or
    what went wrong. Every cell is shown whole at any width: long ones are folded, never cut."""
    _print_path(console, walked)
    body = walked.body
    if body is None:
        return  # the caller reports the failure (print_error)
    if not walked.found:
        code = body.get("responseCode")
        message = f"{text}: {body.get('message', 'error')} (responseCode {code})"
        console.print(message, style="red", markup=False, highlight=False)
        return
    _print_values(console, body.get("handle", text), body.get("values", []))


def print_error(console: Console, message: str) -> None:
    """``Error: message``, wrapped at the console's width between words (no value in it is cut)."""
    console.print(f"Error: {message}", style="red", markup=False, highlight=False)
