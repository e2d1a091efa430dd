"""The front door on an authoritative node, for its own identifiers: the lookup reads its store.

As a HANDLE.NET server acting as a proxy without ``allow_recursion`` (Technical Manual §5.4.1), it
answers only for the identifiers it holds: one it delegates, or of a prefix not its own, gets a
page saying which node to ask instead (via ``NotResponsible``), never a walk of the tree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiohttp import web

from nodes.authoritative.authority import AUTHORITY
from nodes.authoritative.config import CONFIG
from nodes.web.lookup import Looked, Lookup, ServerState, Step
from resolver.errors import NotResponsible
from resolver.names import Handle
from resolver.zone import Refer

__all__ = ["authority_lookup", "no_topology"]


def authority_lookup(app: web.Application) -> Lookup:
    """The lookup of authoritative node ``app``: its own records, public values only (``auth`` changes
    nothing: this node is the authority)."""

    async def lookup(handle: Handle, auth: bool, request: web.Request) -> Looked:
        del auth, request
        spec = app[CONFIG].spec
        started = time.perf_counter()
        answer = await app[AUTHORITY].resolve(handle)
        if isinstance(answer, Refer):
            raise NotResponsible(
                f"{spec.name} delegates prefix {answer.prefix}: resolve {handle.text} at a recursive node",
                handle=handle.text,
            )
        ms = round((time.perf_counter() - started) * 1000, 3)
        outcome = "answer" if answer.values is not None else "not found"
        return Looked(handle, answer.values, (Step(spec.description or spec.name, spec.url, ms, "store", outcome),))

    return lookup


def no_topology() -> Sequence[ServerState]:
    """An authoritative node walks no tree: its pages show no topology panel."""
    return ()
