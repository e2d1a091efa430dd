"""The recursive resolver's async driver: cache first, then the resolution state machine over a transport.

Everything that decides lives in the sans-IO modules (``cache``, ``resolution``, ``upstream``); this
module only awaits. It adds what needs a loop: single-flight (concurrent misses for one key share
one walk), prefetch of hot entries in the background, serve-stale when every upstream fails, and
background probes that bring a server marked down back as soon as it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

from resolver.cache import Cache, Entry, Freshness
from resolver.client import HandleClient
from resolver.errors import UpstreamError
from resolver.names import Handle, parent_prefix
from resolver.resolution import Answer, Failure, Hop, Resolution, classify
from resolver.sites import SiteServer, site_servers
from resolver.upstream import Upstreams

__all__ = ["HttpTransport", "RecursiveResolver", "Resolved", "Transport", "TransportError"]

# Module-level aliases: an enum member read through its class costs about 100 ns (see resolver.cache).
_FRESH, _PREFETCH = Freshness.FRESH, Freshness.PREFETCH

_SAFE = "/:@!$&'()*+,;=-._~"


class TransportError(Exception):
    """The server could not be asked: connection refused, reset, timed out."""


class Transport(Protocol):
    """One query to one server; the only I/O the resolver does."""

    async def query(self, url: str, handle: str, timeout: float) -> tuple[int, Mapping[str, Any]]: ...

    async def probe(self, url: str, timeout: float) -> bool: ...


class HttpTransport:
    """The HANDLE.NET REST API over aiohttp, msgpack between nodes."""

    def __init__(self, client: HandleClient) -> None:
        self._client = client

    async def query(self, url: str, handle: str, timeout: float) -> tuple[int, Mapping[str, Any]]:
        try:
            reply = await self._client.request("GET", url, "/api/handles/" + quote(handle, safe=_SAFE), timeout=timeout)
        except UpstreamError as exc:
            raise TransportError(exc.attempts[0][1] if exc.attempts else exc.message) from exc
        return reply.status, reply.body

    async def probe(self, url: str, timeout: float) -> bool:
        try:
            reply = await self._client.request("GET", url, "/healthz", timeout=timeout)
        except UpstreamError:
            return False
        return reply.status == 200


CacheUse = Literal["hit", "miss", "stale"]


@dataclass(frozen=True, slots=True)
class Resolved:
    entry: Entry  # ``entry.values`` is None when the handle does not exist
    cache: CacheUse
    hops: tuple[Hop, ...] = ()


QueryHook = Callable[[str, float, bool], None]  # (server url, seconds, succeeded) for metrics


class RecursiveResolver:
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
        entry, usable = self.lookup(handle)
        if usable:
            assert entry is not None
            return Resolved(entry, "hit")
        return await self.fetch(handle, entry)

    def lookup(self, handle: Handle, key: str | None = None) -> tuple[Entry | None, bool]:
        """The cache's half of :meth:`resolve`, without awaiting: ``(entry, True)`` when ``entry`` can be
        served now (a hot entry near expiry also starts its background refresh), else
        ``(stale entry or None, False)``, and the caller awaits :meth:`fetch` with that entry.

        The node's hot path calls this directly: a hit costs no coroutine and no ``Resolved``, and it
        passes ``key`` (``handle.key``, which builds a new string on every call) kept from before.
        """
        hit = self.cache.lookup(handle.key if key is None else key)
        if hit is None:
            return None, False
        entry, freshness = hit
        if freshness is _FRESH:
            return entry, True
        if freshness is _PREFETCH:
            self.prefetch(handle)
            return entry, True
        return entry, False

    def prefetch(self, handle: Handle) -> None:
        """Refresh ``handle`` in the background (its cached entry is near expiry and hot); answer now."""
        self._spawn(self._shared_walk(handle))

    async def fetch(self, handle: Handle, stale: Entry | None) -> Resolved:
        """Resolve upstream after :meth:`lookup` found nothing servable; ``stale`` (an expired entry
        within the stale window) is served if every upstream fails (RFC 8767)."""
        if stale is None:
            return await self._shared_walk(handle)
        try:
            return await self._shared_walk(handle)
        except UpstreamError:
            self.cache.served_stale()  # RFC 8767: an expired answer beats no answer
            return Resolved(stale, "stale")

    async def locate(self, handle: Handle) -> Resolution:
        """Walk to the node that answers for ``handle`` (bypassing the answer cache, using cached
        referrals): its ``primary_servers`` take writes and authoritative reads."""
        return await self._run(handle)

    async def _run(self, handle: Handle) -> Resolution:
        """Drive one resolution; if it fails, retry once from an expired but deeper referral
        (RFC 8767 applied to delegations: the enterprise node may well be up while the top is not)."""
        resolution = self._resolution(handle)
        assert resolution is not None
        await self._drive(resolution)
        self._learn(resolution)
        if resolution.failed is not None:
            left = resolution.time_left()
            retry = self._resolution(handle, allow_stale=True, deadline=left) if left > 0 else None
            if retry is None:
                raise resolution.failed
            await self._drive(retry)
            self._learn(retry)
            if retry.failed is not None:
                raise resolution.failed
            return retry
        return resolution

    def _shared_walk(self, handle: Handle) -> asyncio.Future[Resolved]:
        """Single-flight: one walk per key however many clients miss on it at once."""
        task = self._inflight.get(handle.key)
        if task is None:
            task = asyncio.ensure_future(self._walk(handle))
            self._inflight[handle.key] = task
            task.add_done_callback(lambda _: self._inflight.pop(handle.key, None))
        # A client that goes away must not cancel the walk the others are waiting on.
        return asyncio.shield(task)

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
            resolution = await self._run(handle)
        except UpstreamError as exc:
            if not exc.attempts or not all(reason.startswith("not responsible") for _, reason in exc.attempts):
                raise
            # Every node that could hold it says the prefix is not theirs (an unregistered prefix):
            # for the client that is "no such handle", as the Handle proxy's "Prefix Not Found" 404.
            return Resolved(self.cache.store_not_found(handle.key), "miss")
        values = resolution.result.values if isinstance(resolution.result, Answer) else None
        if self._generation.get(handle.key, 0) != generation:
            # A write was acknowledged while we walked: our answer may predate it. Give it to the
            # clients already waiting, but do not cache it.
            return Resolved(self.cache.detached_entry(handle.key, values), "miss", tuple(resolution.hops))
        if values is not None:
            entry = self.cache.store_answer(handle.key, values)
        else:
            entry = self.cache.store_not_found(handle.key)
        return Resolved(entry, "miss", tuple(resolution.hops))

    def invalidate(self, handle: Handle) -> None:
        """Forget ``handle`` after a write: its cached entry, any walk in flight, and (for a prefix
        handle) the cached referral for the prefix it names. Later reads go upstream."""
        self.cache.invalidate(handle.key)
        self._generation[handle.key] = self._generation.get(handle.key, 0) + 1
        if len(self._generation) > 100_000:
            self._generation.clear()  # bounded; a cleared counter only costs a possibly-stale cache fill
        self._inflight.pop(handle.key, None)
        if handle.is_prefix_handle:
            self.cache.forget_referral(handle.zone)

    def _learn(self, resolution: Resolution) -> None:
        for referral in resolution.referrals:
            self.cache.store_referral(referral.prefix, referral.sites)

    async def _drive(self, resolution: Resolution) -> None:
        while (query := resolution.next_query()) is not None:
            started = time.perf_counter()
            try:
                # The transport should honour the timeout; this makes sure of it.
                async with asyncio.timeout(query.timeout):
                    status, body = await self.transport.query(query.server.url, query.handle, query.timeout)
                outcome = classify(status, body)
            except TransportError as exc:
                outcome = Failure(str(exc))
            except TimeoutError:
                outcome = Failure("timed out")
            rtt = time.perf_counter() - started
            resolution.on_outcome(query, outcome, rtt)
            if self._on_query is not None:
                self._on_query(query.server.url, rtt, not isinstance(outcome, Failure))

    # -- background work ---------------------------------------------------------------------------

    def _spawn(self, awaitable: Any) -> None:
        async def quietly() -> None:
            with contextlib.suppress(UpstreamError):  # a failed prefetch just lets the entry expire
                await awaitable

        task = asyncio.ensure_future(quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def probe_forever(self) -> None:
        """Ask every server marked down for ``/healthz`` each probe interval until it answers
        (CoreDNS forward's health checks): recovery does not wait for client traffic."""
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
                    self.upstreams.success(url, time.perf_counter() - started)
                else:
                    self.upstreams.failure(url, "health probe failed")

    async def close(self) -> None:
        tasks = [*self._background, *self._inflight.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
