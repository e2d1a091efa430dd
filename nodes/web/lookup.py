"""The front door's seams: how a page gets an identifier's record and the node's view of its upstreams.

The pages and the proxy never reach into a node: they are given a :data:`Lookup` (one resolution,
with what it took) and a :data:`TopologyView` (the servers the node knows and their health), each a
plain callable. ``nodes.web.recursive`` backs both with the recursive node's cache and driver;
tests pass fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from resolver.names import Handle
from resolver.values import HandleValue

__all__ = ["Looked", "Lookup", "ServerState", "Step", "TopologyView"]


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a resolution's trace: a node that answered (or failed), how long it took."""

    node: str
    address: str
    ms: float
    cache: str
    """"hit" (this node's cache answered), "miss" (asked upstream), "stale" or "bypass" (``?auth``)."""
    outcome: str
    """"answer", "not found", "referral" or "failure" (this node's own cache: "answer" or "not found")."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Looked:
    """What one resolution found: the public values, or None when the identifier does not exist."""

    handle: Handle
    values: tuple[HandleValue, ...] | None
    trace: tuple[Step, ...] = ()


Lookup = Callable[[Handle, bool, web.Request], Awaitable[Looked]]
"""``lookup(handle, auth, request)``: resolve ``handle`` (at the owning primary when ``auth``).
Errors are raised as the node's ``HandleError`` tree (an ``UpstreamError`` when no server answered);
"not found" is an answer (``values`` None)."""


@dataclass(frozen=True, slots=True)
class ServerState:
    """One server of the topology panel."""

    name: str
    url: str
    role: str
    """"top", "mirror", "secondary", "enterprise" or "upstream" (a server the tree named)."""
    down: bool | None
    """None: not asked yet."""
    srtt_ms: float | None
    last_error: str = ""


TopologyView = Callable[[], Sequence[ServerState]]
