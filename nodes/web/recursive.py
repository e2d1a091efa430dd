"""The front door on the recursive node: its lookup and topology view, over the node's cache and driver.

A page resolves exactly as ``GET /api/handles/{handle}`` does on a cache miss (``nodes.recursive.hotpath``
``_get_slow``): ``Cache.lookup`` then ``RecursiveResolver.resolve_after_lookup``, so a page costs one
resolution through the cache (a dict lookup when hot), shares single-flight, prefetch and serve-stale
with the API, and is counted in the same resolution metrics. ``?auth`` walks to the owning node
(``RecursiveResolver.locate``, cached referrals) and asks its primary with ``auth=true``, as the API's
authoritative reads do; the answer is read by ``resolution.classify``, never passed through.
"""

from __future__ import annotations

import time

from aiohttp import web

from nodes.recursive.config import CLIENT, RECURSIVE, RECURSIVE_CONFIG
from nodes.shared.access_log import CACHE, HOPS
from nodes.shared.metrics import METRICS
from nodes.web.lookup import Looked, Lookup, ServerState, Step, TopologyView
from resolver.driver import Resolved
from resolver.errors import Attempt, FailureKind, UpstreamError
from resolver.names import Handle
from resolver.resolution import (
    Answer,
    Failure,
    Hop,
    NotFound,
    Outcome,
    Referral,
    ResolutionFailed,
    classify,
    prefix_unregistered,
)

__all__ = ["recursive_lookup", "recursive_topology"]

_AUTH_PARAMS = (("auth", "true"),)
_TIERS = {"top": 0, "secondary": 1, "enterprise": 2}  # the panel lists the tree top down


def recursive_lookup(app: web.Application) -> Lookup:
    """The lookup of the recursive node ``app`` (its driver is read per request: the cleanup context
    sets it at start-up). The request's access-log fields (cache use, hops) are set as the API sets them."""

    async def lookup(handle: Handle, auth: bool, request: web.Request) -> Looked:
        if auth:
            return await _at_primary(app, handle, request)
        resolver = app[RECURSIVE]
        outcomes = app[METRICS].resolutions
        try:
            resolved = await resolver.resolve_after_lookup(handle, resolver.cache.lookup(handle.key))
        except UpstreamError as exc:
            outcomes.labels("error").inc()
            request[CACHE] = "miss"
            request[HOPS] = len(exc.hops if isinstance(exc, ResolutionFailed) else exc.attempts)
            raise
        values = resolved.entry.values
        outcomes.labels("stale" if resolved.cache == "stale" else "answer" if values is not None else "not_found").inc()
        request[CACHE], request[HOPS] = resolved.cache, len(resolved.hops)
        return Looked(handle, values, _trace(app, resolved))

    return lookup


def _step(hop: Hop, cache: str = "miss") -> Step:
    return Step(hop.description or hop.url, hop.url, round(hop.ms, 3), cache, hop.outcome, hop.detail)


def _trace(app: web.Application, resolved: Resolved) -> tuple[Step, ...]:
    """As the API's ``trace=true``: this node for a hit, every server asked for a miss, both when stale."""
    spec = app[RECURSIVE_CONFIG].spec
    outcome = "answer" if resolved.entry.exists else "not found"
    own = Step(spec.description or spec.name, spec.url, 0.0, resolved.cache, outcome)
    if resolved.cache == "hit":
        return (own,)
    hops = tuple(_step(hop) for hop in resolved.hops)
    return hops if resolved.cache == "miss" else (own, *hops)


async def _at_primary(app: web.Application, handle: Handle, request: web.Request) -> Looked:
    """``?auth``: the owning node's primary answers, bypassing every cache (as ``auth=true`` does)."""
    request[CACHE] = "bypass"
    try:
        located = await app[RECURSIVE].locate(handle)
    except ResolutionFailed as exc:
        if not prefix_unregistered(exc):
            raise
        # No node holds the prefix: "no such identifier", as the cached path answers it.
        return Looked(handle, None, tuple(_step(hop, "bypass") for hop in exc.hops))
    steps = [_step(hop, "bypass") for hop in located.hops]
    attempts: list[Attempt] = []
    for server in located.primary_servers:
        started = time.perf_counter()
        try:
            reply = await app[CLIENT].get(server.url, handle, params=_AUTH_PARAMS)
        except UpstreamError as exc:
            outcome: Outcome = Failure.of(exc)
        else:
            outcome = classify(reply.status, reply.body)
        if isinstance(outcome, Referral):  # the tree named it the owner, yet it delegates: a lame delegation
            outcome = Failure(FailureKind.NOT_RESPONSIBLE, f"referred to prefix {outcome.prefix}: not the owning node")
        ms = round((time.perf_counter() - started) * 1000, 3)
        name = server.description or server.url
        request[HOPS] = len(steps) + 1
        if isinstance(outcome, Answer):
            steps.append(Step(name, server.url, ms, "bypass", "answer"))
            return Looked(handle, outcome.values, tuple(steps))
        if isinstance(outcome, NotFound):
            steps.append(Step(name, server.url, ms, "bypass", "not found"))
            return Looked(handle, None, tuple(steps))
        steps.append(Step(name, server.url, ms, "bypass", "failure", outcome.reason))
        attempts.append(Attempt(server.url, outcome.kind, outcome.reason))
    raise UpstreamError(f"the primary for {handle.text} could not be reached", handle=handle.text, attempts=attempts)


def recursive_topology(app: web.Application) -> TopologyView:
    """The servers the node knows: its topology's authoritative nodes (the top nodes and mirrors
    first, where every walk starts), then any other server the tree named, with the health the
    driver keeps (down or up, smoothed RTT)."""

    def view() -> list[ServerState]:
        config = app[RECURSIVE_CONFIG]
        resolver = app.get(RECURSIVE)
        health = resolver.upstreams.snapshot() if resolver is not None else {}
        roots = {node.url for node in config.topology.roots()}
        known = [n for n in config.topology.nodes.values() if n.prefix is not None]
        known.sort(key=lambda n: (n.url not in roots, _TIERS.get(n.role, 3), n.is_mirror, n.name))
        states = []
        for node in known:
            seen = health.pop(node.url, None)
            role = f"{node.role} mirror" if node.is_mirror else node.role
            states.append(
                ServerState(
                    node.description or node.name,
                    node.url,
                    role,
                    None if seen is None or (seen.successes == 0 and seen.failures == 0) else seen.down,
                    None if seen is None or seen.successes == 0 else seen.srtt * 1000,
                    seen.last_error if seen is not None and seen.down else "",
                )
            )
        for url, seen in sorted(health.items()):
            states.append(
                ServerState(
                    url, url, "upstream", seen.down, seen.srtt * 1000 if seen.successes else None, seen.last_error
                )
            )
        return states

    return view
