"""The loop that drives a resolution over a transport, and an uncached walk of the tree built on it.

``drive`` is the only place where a :class:`~resolver.resolution.Resolution` is awaited: the
recursive node's driver runs it behind its cache, and ``walk`` runs it from the given roots with no
cache at all, for ``idres resolve`` and for an authoritative node verifying an identity held
elsewhere. Everything that decides lives in ``resolver.resolution``; this module only awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from resolver.errors import FailureKind, UpstreamError
from resolver.names import Handle
from resolver.resolution import Failure, Resolution, classify
from resolver.sites import SiteServer
from resolver.upstream import UpstreamConfig, Upstreams

__all__ = ["WALK_UPSTREAM", "QueryHook", "Transport", "drive", "walk"]

QueryHook = Callable[[str, float, bool], None]  # (server url, seconds, succeeded), for metrics

# An uncached walk has a person waiting on it (a login, a command), not a stream of clients: each
# node gets as long as a client exchange (5 s: one busy with a bulk import may be slow), the whole
# walk enough for a few levels and one failover. The recursive node keeps its own, tighter budget.
WALK_UPSTREAM = UpstreamConfig(try_timeout=5.0, deadline=15.0)


class Transport(Protocol):
    """One query to one server: the only I/O a resolution needs (``resolver.client.HttpTransport``).

    Both methods raise ``UpstreamError`` (one ``Attempt`` with its ``FailureKind``) when the server
    cannot be asked; ``query`` returns the HTTP status and the decoded body of any answer."""

    async def query(self, url: str, handle: str, timeout: float) -> tuple[int, Mapping[str, Any]]: ...

    async def probe(self, url: str, timeout: float) -> bool: ...


async def drive(resolution: Resolution, transport: Transport, on_query: QueryHook | None = None) -> None:
    """Ask what ``resolution`` says to ask until it is finished (``result`` or ``failed`` is then set)."""
    while (query := resolution.next_query()) is not None:
        started = time.perf_counter()
        try:
            # The transport should honour the timeout; this makes sure of it.
            async with asyncio.timeout(query.timeout):
                status, body = await transport.query(query.server.url, query.handle, query.timeout)
            outcome = classify(status, body)
        except UpstreamError as exc:
            outcome = Failure.of(exc)
        except TimeoutError:
            outcome = Failure(FailureKind.TIMEOUT, "timed out")
        rtt = time.perf_counter() - started
        resolution.on_outcome(query, outcome, rtt)
        if on_query is not None:
            on_query(query.server.url, rtt, not isinstance(outcome, Failure))


async def walk(
    handle: Handle,
    roots: Sequence[SiteServer],
    transport: Transport,
    upstreams: Upstreams,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Resolution:
    """Resolve ``handle`` from ``roots`` down the tree, with no cache: the finished resolution, whose
    ``hops`` say who was asked and whose ``result`` or ``failed`` says how it ended."""
    resolution = Resolution(handle, roots, upstreams, clock=clock)
    await drive(resolution, transport)
    return resolution
