"""``idres resolve``: walk the tree from one server and show each hop, the values, or what went wrong."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from resolver.bodies import answer_body, not_found_body, values_not_found_body
from resolver.client import HandleClient, HttpTransport
from resolver.errors import UpstreamError
from resolver.names import parse_handle
from resolver.records import filter_values
from resolver.resolution import Answer, Hop, Resolution, prefix_unregistered
from resolver.sites import SiteServer
from resolver.tls import client_connector
from resolver.upstream import Upstreams
from resolver.walk import WALK_UPSTREAM, walk

__all__ = ["Walked", "print_walk", "walk_from"]


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
    async with aiohttp.ClientSession(connector=client_connector(cafile)) as session:
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


def print_walk(console: Console, text: str, walked: Walked) -> None:
    """The path (each hop: node, outcome, ms; and a recursive node's own trace), then the values or
    what went wrong."""
    path = Table(title="path", show_edge=False)
    for column in ("hop", "node", "answer", "ms"):
        path.add_column(column)
    rows = [(f"{hop.url} {hop.description}".strip(), _outcome(hop), f"{hop.ms:.1f}") for hop in walked.resolution.hops]
    # A recursive node reports the walk it made on our behalf (trace=true): show those hops too.
    trace = walked.last_reply.get("trace") if walked.body is not None else None
    for step in trace if isinstance(trace, list) else []:
        if isinstance(step, dict):
            outcome = f", {step['outcome']}" if step.get("outcome") else ""
            detail = f" {step['detail']}" if step.get("detail") else ""
            rows.append(
                (
                    f"  via {step.get('address', '')} {step.get('node', '')}".rstrip(),
                    f"cache {step.get('cache', '')}{outcome}{detail}",
                    f"{step.get('ms', 0):.1f}",
                )
            )
    for i, (node, answer, ms) in enumerate(rows, 1):
        path.add_row(str(i), node, answer, ms)
    console.print(path)
    body = walked.body
    if body is None:
        return  # the caller reports the failure
    if not walked.found:
        code = body.get("responseCode")
        console.print(f"[red]{text}: {body.get('message', 'error')} (responseCode {code})[/red]")
        return
    table = Table(title=body.get("handle", text))
    for column in ("index", "type", "data", "ttl", "timestamp"):
        table.add_column(column)
    for value in body.get("values", []):
        table.add_row(
            str(value.get("index")),
            str(value.get("type")),
            _data_text(value),
            str(value.get("ttl", "")),
            str(value.get("timestamp", "")),
        )
    console.print(table)
