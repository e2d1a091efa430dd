"""The recursive node's cache of answers, not-found answers and referrals: it decides, the driver does I/O.

Rules and where they come from:

- A cached answer lives for the smallest TTL of its values, clamped to ``[min_ttl, max_ttl]``
  (CoreDNS ``plugin/cache`` ``computeTTL``; HANDLE.NET caps expiry at ``MAX_RECOGNIZED_TTL``).
- Only public-read values are cached (DESIGN §3). Answers and not-found answers share one LRU bound,
  referrals have their own, so a flood of lookups for made-up handles cannot evict the delegations.
- An expired entry is kept for ``stale_window`` more seconds and found ``Stale``: the driver serves it
  only when every upstream fails (RFC 8767 §4 "serve-stale"; its maximum stale timer is 1-3 days).
- A hot entry hit in the last ``prefetch_fraction`` of its TTL is found ``Refresh`` once, so the
  driver refreshes it in the background before it expires (Unbound ``prefetch``, CoreDNS ``prefetch``);
  at most one refresh per entry runs (CoreDNS: "at most one background fetch").
- ``lookup`` finds a fresh ``Entry``, a ``Refresh``, a ``Stale`` or None (a miss), and counts it.
- The recursive node keeps the encoded answer of a request beside its entry (``keep_bytes``) and
  serves it with ``served_bytes``: one dict lookup, counted as a hit, that does not move the entry in
  the LRU order (that bookkeeping was a tenth of a hit's cost on the hot-cache benchmark). Eviction
  gives an entry hit since it last moved a second chance instead (the CLOCK approximation of LRU).
  Only this module changes the counters and the LRU order.

Single-flight and the refreshes themselves belong to the async driver; this module never awaits.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from resolver.errors import ConfigError
from resolver.names import ancestors
from resolver.values import HandleValue

__all__ = [
    "DEFAULT_CACHE_CONFIG",
    "Cache",
    "CacheConfig",
    "CacheStats",
    "Entry",
    "Found",
    "Refresh",
    "Stale",
]


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Bounds and timers of the cache, in entries and seconds."""

    # A four-value record costs about 1.2 KB in the cache, about 2 KB with one pre-encoded JSON body
    # (measured with tracemalloc), so the bound keeps the cache near 200 MB at worst.
    max_entries: int = 100_000
    # The real system has about 40,000 enterprise prefixes: every delegation fits, with room to spare.
    max_referrals: int = 50_000
    # A TTL of 0 would make every request go upstream under load; CoreDNS and Knot Resolver use 5 s.
    min_ttl: float = 5.0
    # HANDLE.NET ignores TTLs above two days (HandleValue.MAX_RECOGNIZED_TTL): expiry is capped there.
    max_ttl: float = 172_800.0
    # A not-found answer carries no TTL; short, so a newly created handle shows up within half a minute.
    negative_ttl: float = 30.0
    # RFC 8767 suggests a maximum stale timer of 1 to 3 days; Unbound and BIND default to 1 day.
    stale_window: float = 86_400.0
    # Unbound prefetches in the last 10% of the TTL and says it costs about 10% more upstream traffic.
    prefetch_fraction: float = 0.1
    # Only entries hit this often since they were stored are refreshed early (CoreDNS: "popular" ones),
    # so a cold entry simply expires instead of costing an upstream request.
    prefetch_min_hits: int = 2

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_referrals < 1:
            raise ConfigError("cache bounds max_entries and max_referrals must be at least 1")
        if not 0 <= self.min_ttl <= self.max_ttl:
            raise ConfigError(f"cache TTLs must satisfy 0 <= min_ttl <= max_ttl, not {self.min_ttl}, {self.max_ttl}")
        if self.negative_ttl < 0 or self.stale_window < 0:
            raise ConfigError("cache negative_ttl and stale_window must not be negative")
        if not 0 <= self.prefetch_fraction < 1 or self.prefetch_min_hits < 1:
            raise ConfigError("cache prefetch_fraction must be in [0, 1) and prefetch_min_hits at least 1")


DEFAULT_CACHE_CONFIG = CacheConfig()


@dataclass(slots=True, eq=False)
class Entry:
    """One cached answer (``values``), not-found answer (``values is None``) or referral (the sites)."""

    key: str
    values: tuple[HandleValue, ...] | None
    ttl: float  # the clamped TTL this entry was stored with
    expires: float  # clock time: fresh strictly before it
    stale_until: float  # clock time: STALE from ``expires`` until here, then gone
    prefetch_at: float  # clock time from which a hot hit asks for a refresh
    hits: int = 0
    prefetching: bool = False
    # False once the cache no longer holds this entry (replaced, invalidated, evicted or gone stale):
    # a caller that kept a reference to it (the recursive node's hot path) must look again.
    live: bool = True
    # ``hits`` when the entry last moved to the recent end of the LRU order. ``Cache.served_bytes``
    # counts a fresh hit without moving it; eviction gives such an entry a second chance instead (the
    # CLOCK approximation of LRU).
    placed_hits: int = 0
    # Response bodies keyed by (handle text as sent, media type). The node fills it on the first hit,
    # so later hits cost a dict lookup; it goes with the entry when the entry is replaced.
    encoded: dict[tuple[str, str], bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refresh:
    """Fresh, hot and near expiry: serve ``entry`` and refresh it in the background now. Found once per
    entry (until it is replaced), so at most one refresh runs."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Stale:
    """Expired, within the stale window: go upstream, and serve ``entry`` only if every upstream fails
    (RFC 8767)."""

    entry: Entry


Found = Entry | Refresh | Stale
"""What ``Cache.lookup`` finds for a key, None being a miss. A fresh hit is the ``Entry`` itself: the
common case allocates nothing (a dataclass instance costs about 0.4 us, a cache hit about 60)."""


@dataclass(slots=True)
class CacheStats:
    """Counters since start. Every ``lookup`` counts one hit or one miss (a ``Stale`` one is a miss), and
    every body ``served_bytes`` gives out one hit."""

    hits: int = 0  # fresh answers from the cache, not-found ones included
    misses: int = 0
    negative_hits: int = 0  # the hits that were not-found answers
    stale_served: int = 0  # stale entries the driver served because every upstream failed
    prefetches: int = 0  # PREFETCH results handed out
    evictions: int = 0  # answers dropped by the LRU bound before they expired
    insertions: int = 0  # answers and not-found answers stored
    expired: int = 0  # answers dropped because they were past the stale window
    referral_evictions: int = 0  # referrals dropped by their own LRU bound

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _public(values: Iterable[HandleValue]) -> tuple[HandleValue, ...]:
    # The driver asks upstream unauthenticated, so it should never see a non-public value; if one comes
    # anyway it is dropped here rather than served to every later client (DESIGN §3).
    return tuple(v for v in values if v.public_read)


class Cache:
    """Answers and not-found answers by key (LRU-bounded), and referrals by delegated prefix.

    ``key`` is whatever the driver resolves: normally ``Handle.key``. Time comes from ``clock``
    (monotonic seconds), so tests drive it by hand.
    """

    def __init__(self, config: CacheConfig = DEFAULT_CACHE_CONFIG, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.stats = CacheStats()
        self._clock = clock
        # OrderedDict is the LRU: least recently used first, move_to_end and popitem are O(1).
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._referrals: OrderedDict[str, Entry] = OrderedDict()
        # (entry, body) by whatever names one way of asking for the entry (``keep_bytes``).
        self._served: dict[str, tuple[Entry, bytes]] = {}

    def __len__(self) -> int:
        """How many answers and not-found answers are held (stale ones included)."""
        return len(self._entries)

    # -- answers ------------------------------------------------------------------------------------

    def lookup(self, key: str) -> Found | None:
        """What the cache holds for ``key`` and how to use it (``Found``), or None: a miss, or past the
        stale window. Counts one hit or one miss; a ``Stale`` entry is a miss."""
        entry = self._entries.get(key)
        stats = self.stats
        if entry is None:
            stats.misses += 1
            return None
        now = self._clock()
        if now < entry.expires:
            self._entries.move_to_end(key)
            entry.hits += 1
            entry.placed_hits = entry.hits
            stats.hits += 1
            if entry.values is None:
                stats.negative_hits += 1
            if now >= entry.prefetch_at and not entry.prefetching and entry.hits >= self.config.prefetch_min_hits:
                entry.prefetching = True
                stats.prefetches += 1
                return Refresh(entry)
            return entry
        # Expired: the driver must go upstream, so this is a miss even if the stale entry is served later.
        stats.misses += 1
        if now < entry.stale_until:
            return Stale(entry)
        del self._entries[key]
        entry.live = False
        stats.expired += 1
        return None

    def keep_bytes(self, key: str, entry: Entry, body: bytes) -> None:
        """Keep ``body``, the encoded answer that ``key`` asks for (the node uses the request's raw
        path), for ``served_bytes`` while ``entry`` stays in the cache. Bounded like the entries:
        when full, the kept bodies simply start again."""
        if entry.live:
            served = self._served
            if len(served) >= self.config.max_entries:
                served.clear()
            served[key] = (entry, body)

    def served_bytes(self, key: str) -> tuple[Entry, bytes] | None:
        """The entry and body kept for ``key``, counted as a fresh hit, while the cache still holds the
        entry and before its ``prefetch_at``; else None, and the caller looks it up (``lookup``
        decides on prefetch and expiry). The entry stays where it is in the LRU order (see above)."""
        kept = self._served.get(key)
        if kept is not None:
            entry = kept[0]
            if entry.live and self._clock() < entry.prefetch_at:
                entry.hits += 1
                stats = self.stats
                stats.hits += 1
                if entry.values is None:
                    stats.negative_hits += 1
                return kept
        return None

    def store_answer(self, key: str, values: Iterable[HandleValue]) -> Entry:
        """Cache an answer's public values, replacing any entry for ``key``; TTL from the smallest value TTL.

        An answer with no public values (an empty record, or only non-public values) carries no TTL to
        go by, so it is kept as long as a not-found answer.
        """
        public = _public(values)
        ttl = min(v.ttl for v in public) if public else self.config.negative_ttl
        return self._store(key, public, ttl)

    def store_not_found(self, key: str) -> Entry:
        """Cache "no such handle" for ``negative_ttl`` (clamped like any TTL), replacing any entry."""
        return self._store(key, None, self.config.negative_ttl)

    def detached_entry(self, key: str, values: Iterable[HandleValue] | None) -> Entry:
        """An entry built like a stored one but not kept (so never ``live``): an answer that may predate a write."""
        entry = self._entry(key, None if values is None else _public(values), self.config.negative_ttl)
        entry.live = False
        return entry

    def invalidate(self, key: str) -> None:
        """Forget ``key``: a write through this node changed it (DESIGN §5)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry.live = False

    def served_stale(self) -> None:
        """Count a STALE entry the driver served because every upstream failed."""
        self.stats.stale_served += 1

    def _store(self, key: str, values: tuple[HandleValue, ...] | None, ttl: float) -> Entry:
        entry = self._entry(key, values, ttl)
        entries = self._entries
        # A new Entry, not an update: prefetching, hits and encoded bodies start again with the new data.
        old = entries.get(key)
        if old is not None:
            old.live = False
        entries[key] = entry
        entries.move_to_end(key)
        self.stats.insertions += 1
        while len(entries) > self.config.max_entries:
            oldest_key = next(iter(entries))
            oldest = entries[oldest_key]
            if oldest is entry or oldest.hits != oldest.placed_hits:
                # The new entry itself, or hit since it last moved (served_bytes): recently used
                # after all. Each entry passed over is marked, so the loop ends within one round.
                oldest.placed_hits = oldest.hits
                entries.move_to_end(oldest_key)
                continue
            del entries[oldest_key]
            oldest.live = False
            self.stats.evictions += 1
        return entry

    def _entry(self, key: str, values: tuple[HandleValue, ...] | None, ttl: float) -> Entry:
        config = self.config
        ttl = min(max(float(ttl), config.min_ttl), config.max_ttl)
        now = self._clock()
        expires = now + ttl
        return Entry(
            key,
            values,
            ttl,
            expires,
            stale_until=expires + config.stale_window,
            prefetch_at=expires - ttl * config.prefetch_fraction,
        )

    # -- referrals ----------------------------------------------------------------------------------

    def store_referral(self, prefix: str, sites: Iterable[HandleValue]) -> None:
        """Cache the HS_SITE values a delegation of ``prefix`` (normalised) points at; TTL from theirs."""
        public = _public(sites)
        if not public:
            return  # a referral to nowhere is useless to cache
        referrals = self._referrals
        referrals[prefix] = self._entry(prefix, public, min(v.ttl for v in public))
        referrals.move_to_end(prefix)
        while len(referrals) > self.config.max_referrals:
            referrals.popitem(last=False)
            self.stats.referral_evictions += 1

    def closest_referral(self, zone: str, *, allow_stale: bool = False) -> tuple[str, tuple[HandleValue, ...]] | None:
        """The deepest cached delegation of ``zone`` or of a prefix above it: ``(prefix, sites)``.

        Fresh ones only, unless ``allow_stale`` (every upstream failed: RFC 8767 applies to referrals
        as it does to answers). Resolution can start there instead of at the root.
        """
        referrals = self._referrals
        now = self._clock()
        for prefix in ancestors(zone):
            entry = referrals.get(prefix)
            if entry is None:
                continue
            if now >= entry.stale_until:
                del referrals[prefix]
                continue
            if now < entry.expires or allow_stale:
                referrals.move_to_end(prefix)
                assert entry.values is not None  # referrals always have sites
                return prefix, entry.values
        return None

    def forget_referral(self, prefix: str) -> None:
        """Drop the delegation of ``prefix``: its prefix handle was written through this node."""
        self._referrals.pop(prefix, None)
