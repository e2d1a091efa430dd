"""The recursive resolver's async driver: cache first, then the resolution state machine over a transport.

Everything that decides lives in the sans-IO modules (``cache``, ``resolution``, ``upstream``); this
module only awaits. It adds what needs a loop: single-flight (concurrent misses for one key share
one walk), prefetch of hot entries in the background, serve-stale when every upstream fails,
background probes that bring a server marked down back as soon as it answers, and the loop watch
that tells ``Upstreams`` when this process itself was paused (so its pauses mark no server down).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, assert_never

from resolver.cache import Cache, Entry, Found, Refresh, Stale
from resolver.errors import UpstreamError
from resolver.names import Handle, parent_prefix
from resolver.resolution import Answer, Hop, Resolution, ResolutionFailed, prefix_unregistered
from resolver.sites import SiteServer, site_servers
from resolver.upstream import Upstreams
from resolver.walk import QueryHook, Transport, drive

__all__ = ["RecursiveResolver", "Resolved"]

CacheUse = Literal["hit", "miss", "stale"]


@dataclass(frozen=True, slots=True)
class Resolved:
    entry: Entry  # ``entry.values`` is None when the handle does not exist
    cache: CacheUse
    hops: tuple[Hop, ...] = ()
    """Every try made for this request (none for a hit): the answering walk's, a failed walk's before
    a stale answer, and both walks' when a retry from an expired referral followed a failed one."""


class RecursiveResolver:
    """Resolves identifiers through the tree behind a cache. The recursive node enters through
    ``resolve_after_lookup`` (its GET handler, after its own cache lookup), ``locate`` and
    ``invalidate`` (forwarded writes); other callers use ``resolve``."""

    def __init__(
        self,
        roots: Sequence[SiteServer],
        transport: Transport,
        *,
        cache: Cache,
        upstreams: Upstreams,
        clock: Callable[[], float] = time.monotonic,
        on_query: QueryHook | None = None,
    ) -> None:
        self.roots = tuple(roots)
        self.transport = transport
        self.cache = cache
        self.upstreams = upstreams
        self._clock = clock
        self._on_query = on_query
        self._inflight: dict[str, asyncio.Task[Resolved]] = {}
        # Bumped by invalidate(): a walk that began before a write must not cache its older answer.
        self._generation: dict[str, int] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # -- resolving ---------------------------------------------------------------------------------

    async def resolve(self, handle: Handle) -> Resolved:
        """The record for ``handle`` from the cache when fresh, else from upstream (stale if all fail)."""
        return await self.resolve_after_lookup(handle, self.cache.lookup(handle.key))

    async def resolve_after_lookup(self, handle: Handle, found: Found | None) -> Resolved:
        """:meth:`resolve`, given what ``cache.lookup(handle.key)`` just found: the recursive node's
        hot path looks in the cache itself and comes here only when it cannot answer from there."""
        match found:
            case Entry():
                return Resolved(found, "hit")
            case Refresh(entry):
                self._spawn(self._shared_walk(handle))  # answer now, refresh in the background
                return Resolved(entry, "hit")
            case Stale(entry):
                try:
                    return await self._shared_walk(handle)
                except UpstreamError as exc:
                    self.cache.served_stale()  # RFC 8767: an expired answer beats no answer
                    return Resolved(entry, "stale", exc.hops if isinstance(exc, ResolutionFailed) else ())
            case None:
                return await self._shared_walk(handle)
            case _:
                assert_never(found)

    async def locate(self, handle: Handle) -> Resolution:
        """Walk to the node that answers for ``handle`` (bypassing the answer cache, using cached
        referrals): its ``primary_servers`` take writes and authoritative reads."""
        resolution, _ = await self._run(handle)
        return resolution

    async def _run(self, handle: Handle) -> tuple[Resolution, tuple[Hop, ...]]:
        """Drive one resolution; if it fails, retry once from an expired but deeper referral
        (RFC 8767 applied to delegations: the enterprise node may well be up while the top is not).
        The resolution that answered, and every try of both (a trace lists each server asked);
        ResolutionFailed, with every try too, when neither answered."""
        resolution = self._resolution(handle)
        assert resolution is not None
        await self._drive(resolution)
        self._learn(resolution)
        if resolution.failed is None:
            return resolution, tuple(resolution.hops)
        left = resolution.time_left()
        retry = self._resolution(handle, allow_stale=True, deadline=left) if left > 0 else None
        if retry is None:
            raise resolution.failed
        await self._drive(retry)
        self._learn(retry)
        hops = (*resolution.hops, *retry.hops)
        if retry.failed is not None:
            raise resolution.failed.with_hops(hops)  # the first failure says what the tree said
        return retry, hops

    def _shared_walk(self, handle: Handle) -> asyncio.Future[Resolved]:
        """Single-flight: one walk per key however many clients miss on it at once."""
        key = handle.key
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.ensure_future(self._walk(handle))
            task.add_done_callback(lambda done: self._end_flight(key, done))
        # A client that goes away must not cancel the walk the others are waiting on.
        return asyncio.shield(task)

    def _end_flight(self, key: str, walk: asyncio.Future[Resolved]) -> None:
        # Only while it is still this walk's: after invalidate() a newer walk may hold the key, and
        # dropping that one would send the next client upstream again (issue 10).
        if self._inflight.get(key) is walk:
            del self._inflight[key]

    def _resolution(
        self, handle: Handle, *, allow_stale: bool = False, deadline: float | None = None
    ) -> Resolution | None:
        """A resolution starting at the closest cached referral; with ``allow_stale``, only one that
        starts from an expired referral deeper than the fresh one (else None: nothing new to try)."""
        # A prefix handle (0.NA/P) lives with the parent that delegates P, so start above P.
        zone = parent_prefix(handle.zone) if handle.is_prefix_handle else handle.zone
        start = self.cache.closest_referral(zone) if zone is not None else None
        if allow_stale:
            stale = self.cache.closest_referral(zone, allow_stale=True) if zone is not None else None
            if stale is None or (start is not None and len(stale[0]) <= len(start[0])):
                return None
            start = stale
        return Resolution(
            handle,
            self.roots,
            self.upstreams,
            start=None if start is None else (start[0], site_servers(start[1])),
            clock=self._clock,
            deadline=deadline,
        )

    async def _walk(self, handle: Handle) -> Resolved:
        generation = self._generation.get(handle.key, 0)
        try:
            resolution, hops = await self._run(handle)
        except ResolutionFailed as exc:
            if not prefix_unregistered(exc):
                raise
            # Every node that could hold it says the prefix is not theirs (an unregistered prefix):
            # for the client that is "no such handle", as the Handle proxy's "Prefix Not Found" 404;
            # its trace still names every node asked.
            return Resolved(self.cache.store_not_found(handle.key), "miss", exc.hops)
        values = resolution.result.values if isinstance(resolution.result, Answer) else None
        if self._generation.get(handle.key, 0) != generation:
            # A write was acknowledged while we walked: our answer may predate it. Give it to the
            # clients already waiting, but do not cache it.
            return Resolved(self.cache.detached_entry(handle.key, values), "miss", hops)
        if values is not None:
            entry = self.cache.store_answer(handle.key, values)
        else:
            entry = self.cache.store_not_found(handle.key)
        return Resolved(entry, "miss", hops)

    def invalidate(self, handle: Handle) -> None:
        """Forget ``handle`` after a write: its cached entry, any walk in flight, and (for a prefix
        handle) the cached referral for the prefix it names. Later reads go upstream."""
        self.cache.invalidate(handle.key)
        self._generation[handle.key] = self._generation.get(handle.key, 0) + 1
        if len(self._generation) > 100_000:
            self._generation.clear()  # bounded; a cleared counter only costs a possibly-stale cache fill
        obsolete = self._inflight.pop(handle.key, None)
        if obsolete is not None:
            # Its clients still get its answer, later ones start a new walk; close() still cancels it.
            self._background.add(obsolete)
            obsolete.add_done_callback(self._background.discard)
        if handle.is_prefix_handle:
            self.cache.forget_referral(handle.zone)

    def _learn(self, resolution: Resolution) -> None:
        for referral in resolution.referrals:
            self.cache.store_referral(referral.prefix, referral.sites)

    async def _drive(self, resolution: Resolution) -> None:
        await drive(resolution, self.transport, self._on_query)

    # -- background work ---------------------------------------------------------------------------

    def _spawn(self, awaitable: Any) -> None:
        async def quietly() -> None:
            with contextlib.suppress(UpstreamError):  # a failed prefetch just lets the entry expire
                await awaitable

        task = asyncio.ensure_future(quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def probe_forever(self) -> None:
        """The driver's background work for as long as the node runs: the loop watch
        (:meth:`watch_pauses`), and every server marked down asked for ``/healthz`` each probe
        interval until it answers (CoreDNS forward's health checks): recovery does not wait for
        client traffic. Only servers still tracked are probed: one no client asked for
        ``forget_after`` is dropped by ``down_servers``, and a probe's outcome neither keeps it nor
        brings it back."""
        watch = asyncio.ensure_future(self.watch_pauses())
        try:
            await self._probe_down_servers()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def watch_pauses(self) -> None:
        """Tick ``upstreams.pauses`` every ``PAUSE_TICK`` seconds: a late tick is a pause of this
        process, which ``Upstreams`` does not hold against the servers it was waiting for."""
        pauses = self.upstreams.pauses
        while True:
            pauses.tick()
            await asyncio.sleep(pauses.interval)

    async def _probe_down_servers(self) -> None:
        interval = self.upstreams.config.probe_interval
        while True:
            await asyncio.sleep(interval)
            for url in self.upstreams.down_servers():
                started = time.perf_counter()
                try:
                    healthy = await self.transport.probe(url, timeout=max(interval, 0.2))
                except Exception:  # a broken probe must not end probing for every server
                    healthy = False
                if healthy:
                    self.upstreams.success(url, time.perf_counter() - started, probe=True)
                else:
                    self.upstreams.failure(url, "health probe failed", probe=True)

    async def close(self) -> None:
        tasks = [*self._background, *self._inflight.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
