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
- ``served_bytes`` gives the recursive node's hot path the answer as a client asking with the
  canonical identifier text gets it, encoded once when stored: one dict lookup, counted as a hit,
  that does not move the entry in the LRU order (that bookkeeping was a tenth of a hit's cost on
  the hot-cache benchmark). Eviction gives an entry hit since it last moved a second chance instead
  (the CLOCK approximation of LRU). Only this module changes the counters and the LRU order.

How an answer is held (issue 12: a million of them in well under 1.5 GB, and no collector pause):
one tuple of atomic objects per key, ``Record``: the JSON body, the status, the times, and the hit
bookkeeping (a hit count that stops at ``prefetch_min_hits``, and the CLOCK bit). The cyclic
garbage collector untracks such a tuple the first time it looks at it, so however many answers are
held, no collection walks them (a dataclass per entry with a tuple of values and their dicts was
~10 tracked objects and 4.1 KB an answer, and full collections at a million answers paused the node
for seconds). A hit rewrites its record only while that count or bit still changes, so a hot entry
costs a hit one dict lookup, as before. The values are decoded from the body only when a request
needs them (type or index filters, ``trace``), and an ``Entry`` is a view made for the caller.
Referrals keep their sites packed the same way (``codec.pack_values``).

A large cache is split by key hash into shards of about ``SHARD_SIZE`` to twice that answers, each
a dict of records and an OrderedDict of their LRU order, because a table grows all at once: an
OrderedDict of 700,000 answers took 160 ms to resize (a dict 33 ms), one shard takes 10 ms at most,
and finding a key's shard costs a hit about 0.1 us. When the cache holds ``max_entries``, a new
answer evicts from its own shard (the hash spreads keys evenly, so this approximates one LRU as
CLOCK does). The tables are long-lived objects for the node to hand to ``gc.freeze`` at start-up
(``nodes.recursive.hotpath.freeze_startup_objects``): untracked entries or not, a full collection
walking the tables of a million answers took 500 ms, and a frozen table is never walked.

Single-flight and the refreshes themselves belong to the async driver; this module never awaits.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias, TypeVar

from resolver.bodies import answer_body, not_found_body
from resolver.codec import JSON, encode, pack_values, unpack_values
from resolver.errors import ConfigError
from resolver.names import ancestors
from resolver.values import DEFAULT_PERMISSIONS, HandleValue, Reference

__all__ = [
    "DEFAULT_CACHE_CONFIG",
    "SHARD_SIZE",
    "Cache",
    "CacheConfig",
    "CacheStats",
    "Entry",
    "Found",
    "Record",
    "Refresh",
    "Stale",
]


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Bounds and timers of the cache, in entries and seconds."""

    # An answer of five values costs about 1.2 KB held, its 760-byte JSON body most of it (a million
    # grew the process by 1.14 GB, issue 12), so the bound keeps the cache near 120 MB.
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

Record: TypeAlias = tuple[bytes, int, float, float, float, int, bool]
"""What the cache holds for one key: ``(body, status, expires, prefetch_at, ttl, hits, referenced)``.
``body`` is the JSON answer for a client that sent the key itself as the identifier, ``status`` 200
or 404 (not found); the times are clock seconds (fresh strictly before ``expires``; a hot hit from
``prefetch_at`` on asks for a refresh), ``ttl`` the clamped TTL it was stored with. ``hits`` counts
hits since stored up to ``prefetch_min_hits``; ``referenced`` says it was hit since it last moved
in the LRU order (a second chance, CLOCK). A hit replaces the record while these change, so a
record is the same entry as another when their bodies are the same object."""

# Positions in a Record (Final, so the type checker knows each one's type).
_BODY: Final = 0
_STATUS: Final = 1
_EXPIRES: Final = 2
_PREFETCH_AT: Final = 3
_TTL: Final = 4
_HITS: Final = 5
_REFERENCED: Final = 6
_NOT_FOUND: Final = 404

SHARD_SIZE = 16_384
"""A cache for at least twice this many answers is split into shards of ``SHARD_SIZE`` to twice that
(a power of two of them, chosen by key hash); a smaller one is one exact LRU."""
# Bodies encoded for other ways of asking (msgpack, another spelling): a few of them go a long way,
# and a small table never pauses the node to grow.
_MAX_OTHER_BODIES = 65_536


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Table(dict[_K, _V]):
    """A dict the collector never stops tracking. A plain dict whose values it has untracked drops
    out of its lists at a full collection and, at the next insert, comes back in the youngest
    generation, to be walked whole there (50-100 ms at a million answers, measured); this one stays
    where ``gc.freeze`` put it at start-up, and no collection walks it."""

    __slots__ = ()


def _same(a: Record, b: Record) -> bool:
    """Whether two records are the same stored entry (a hit may have replaced one by the other)."""
    return a[_BODY] is b[_BODY]


class Entry:
    """One cached answer or not-found answer (``values is None``) as a caller sees it: a view of the
    ``Record`` the cache holds for ``key``, made when asked for. Two views of one stored record are
    equal; an entry replaced, invalidated or evicted is no longer held (``Cache.holds``)."""

    __slots__ = ("_values", "key", "record")

    def __init__(self, key: str, record: Record, values: tuple[HandleValue, ...] | None = None) -> None:
        self.key = key
        self.record = record
        self._values = values  # decoded (or given) values; None until asked for, or for a not-found one

    @property
    def exists(self) -> bool:
        """False for a not-found answer (HTTP 404, responseCode 100)."""
        return self.record[_STATUS] != _NOT_FOUND

    @property
    def values(self) -> tuple[HandleValue, ...] | None:
        """The public values, decoded from the body the first time they are asked for; None when the
        handle does not exist."""
        if self.record[_STATUS] == _NOT_FOUND:
            return None
        if self._values is None:
            self._values = _decode_values(self.record[_BODY])
        return self._values

    @property
    def status(self) -> int:
        return self.record[_STATUS]

    @property
    def expires(self) -> float:
        return self.record[_EXPIRES]

    @property
    def prefetch_at(self) -> float:
        return self.record[_PREFETCH_AT]

    @property
    def ttl(self) -> float:
        return self.record[_TTL]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and _same(other.record, self.record) and other.key == self.key

    def __hash__(self) -> int:
        return hash((self.key, id(self.record[_BODY])))

    def __repr__(self) -> str:
        return f"Entry({self.key!r}, status={self.status}, expires={self.expires})"


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
"""What ``Cache.lookup`` finds for a key, None being a miss."""


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


def _decode_values(body: bytes) -> tuple[HandleValue, ...]:
    """The values of an answer body this module encoded (``bodies.answer_body``): the inverse of
    ``values.value_to_wire``, trusting its own bytes (nothing to validate)."""
    return tuple(_value(raw) for raw in json.loads(body)["values"])


def _value(raw: dict[str, Any]) -> HandleValue:
    data = raw["data"]
    stamp = raw.get("timestamp")
    return HandleValue(
        raw["index"],
        raw["type"],
        data["format"],
        data["value"],
        raw["ttl"],
        0 if stamp is None else int(datetime.fromisoformat(stamp).timestamp()),
        raw.get("permissions", DEFAULT_PERMISSIONS),
        tuple(Reference(r["index"], r["handle"]) for r in raw.get("references", ())),
    )


class Cache:
    """Answers and not-found answers by key (LRU-bounded), and referrals by delegated prefix.

    ``key`` is whatever the driver resolves: normally ``Handle.key``. Time comes from ``clock``
    (monotonic seconds), so tests drive it by hand.
    """

    def __init__(self, config: CacheConfig = DEFAULT_CACHE_CONFIG, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.stats = CacheStats()
        self._clock = clock
        self._hit_cap = config.prefetch_min_hits  # hits are counted up to this, all prefetch asks
        count = 1
        while config.max_entries // (count * 2) >= SHARD_SIZE:
            count *= 2
        # By shard: the records, and their LRU order, least recently used first (move_to_end and the
        # first key are O(1)).
        self._records: tuple[_Table[str, Record], ...] = tuple(_Table() for _ in range(count))
        self._order: tuple[OrderedDict[str, None], ...] = tuple(OrderedDict() for _ in range(count))
        self._mask = count - 1  # a key's shard: hash(key) & _mask
        self._size = 0  # answers held, in all shards
        self._prefetching: set[str] = set()  # keys whose one Refresh was handed out
        # Bodies for other ways of asking (msgpack, another spelling of the identifier), by (text,
        # media type), with the stored body they were encoded from.
        self._bodies: _Table[tuple[str, str], tuple[bytes, bytes]] = _Table()
        # (packed sites, expires, stale_until) by delegated prefix.
        self._referrals: OrderedDict[str, tuple[bytes, float, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many answers and not-found answers are held (stale ones included)."""
        return self._size

    # -- answers ------------------------------------------------------------------------------------

    def lookup(self, key: str) -> Found | None:
        """What the cache holds for ``key`` and how to use it (``Found``), or None: a miss, or past the
        stale window. Counts one hit or one miss; a ``Stale`` entry is a miss."""
        shard = hash(key) & self._mask
        records = self._records[shard]
        record = records.get(key)
        stats = self.stats
        if record is None:
            stats.misses += 1
            return None
        now = self._clock()
        if now < record[_EXPIRES]:
            # Moved to the recent end, so not "hit since it last moved" any more.
            hits = min(record[_HITS] + 1, self._hit_cap)
            record = records[key] = (*record[:_HITS], hits, False)
            self._order[shard].move_to_end(key)
            stats.hits += 1
            if record[_STATUS] == _NOT_FOUND:
                stats.negative_hits += 1
            entry = Entry(key, record)
            if now >= record[_PREFETCH_AT] and hits >= self._hit_cap and key not in self._prefetching:
                self._prefetching.add(key)
                stats.prefetches += 1
                return Refresh(entry)
            return entry
        # Expired: the driver must go upstream, so this is a miss even if the stale entry is served later.
        stats.misses += 1
        if now < record[_EXPIRES] + self.config.stale_window:
            return Stale(Entry(key, record))
        self._remove(key)
        stats.expired += 1
        return None

    def served_bytes(self, key: str) -> Record | None:
        """The record held for ``key``, counted as a fresh hit, while it is fresh and before its
        ``prefetch_at``; else None, and the caller looks it up (``lookup`` decides on prefetch and
        expiry). Its body and status (``record[0]``, ``record[1]``) answer a client that sent ``key``
        itself as the identifier, in JSON. The entry stays where it is in the LRU order (see above)."""
        records = self._records[hash(key) & self._mask]
        record = records.get(key)
        if record is not None and self._clock() < record[_PREFETCH_AT]:
            if record[_HITS] < self._hit_cap or not record[_REFERENCED]:  # a hot entry: neither changes
                records[key] = (*record[:_HITS], min(record[_HITS] + 1, self._hit_cap), True)
            stats = self.stats
            stats.hits += 1
            if record[_STATUS] == _NOT_FOUND:
                stats.negative_hits += 1
            return record
        return None

    def holds(self, entry: Entry) -> bool:
        """Whether ``entry`` is still what the cache holds for its key (not replaced, invalidated,
        evicted or gone stale): a caller that kept it must otherwise look again."""
        key = entry.key
        record = self._records[hash(key) & self._mask].get(key)
        return record is not None and _same(record, entry.record)

    def encoded(self, entry: Entry, text: str, media: str) -> bytes:
        """The body of ``entry`` for a client that sent the identifier as ``text`` and asked for
        ``media``: the stored JSON body when ``text`` is the key, else encoded once and kept (bounded:
        when full, the kept bodies simply start again) while the cache holds the entry."""
        stored = entry.record[_BODY]
        if media == JSON and text == entry.key:
            return stored
        kept = self._bodies.get((text, media))
        if kept is not None and kept[0] is stored:
            return kept[1]
        values = entry.values
        body = encode(not_found_body(text) if values is None else answer_body(text, values), media)
        if self.holds(entry):
            if len(self._bodies) >= _MAX_OTHER_BODIES:
                self._bodies.clear()  # simply start again: cheaper than an order to evict by
            self._bodies[(text, media)] = (stored, body)
        return body

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
        """An entry built like a stored one but not kept (never ``holds``): an answer that may predate a write."""
        public = None if values is None else _public(values)
        return Entry(key, self._record(key, public, self.config.negative_ttl), public)

    def invalidate(self, key: str) -> None:
        """Forget ``key``: a write through this node changed it (DESIGN §5)."""
        if key in self._records[hash(key) & self._mask]:
            self._remove(key)

    def served_stale(self) -> None:
        """Count a STALE entry the driver served because every upstream failed."""
        self.stats.stale_served += 1

    def _store(self, key: str, values: tuple[HandleValue, ...] | None, ttl: float) -> Entry:
        record = self._record(key, values, ttl)
        shard = hash(key) & self._mask
        records, order = self._records[shard], self._order[shard]
        # A new record, not an update: prefetching, hits and other bodies start again with the new data.
        self._prefetching.discard(key)
        if key not in records:
            self._size += 1
        records[key] = record
        order[key] = None
        order.move_to_end(key)
        self.stats.insertions += 1
        # Past the bound, evict from this shard. One holding only the new entry evicts nothing (keys
        # that all hash alike could do that), and the cache goes one over until the next store.
        while self._size > self.config.max_entries and len(order) > 1:
            oldest = next(iter(order))
            held = records[oldest]
            if oldest == key or held[_REFERENCED]:
                # The new entry itself, or hit since it last moved (served_bytes): recently used
                # after all. Each entry passed over is marked, so the loop ends within one round.
                if held[_REFERENCED]:
                    records[oldest] = (*held[:_REFERENCED], False)
                order.move_to_end(oldest)
                continue
            self._remove(oldest)
            self.stats.evictions += 1
        return Entry(key, record, values)

    def _remove(self, key: str) -> None:
        shard = hash(key) & self._mask
        del self._records[shard][key]
        del self._order[shard][key]
        self._size -= 1
        self._prefetching.discard(key)

    def _record(self, key: str, values: tuple[HandleValue, ...] | None, ttl: float) -> Record:
        config = self.config
        ttl = min(max(float(ttl), config.min_ttl), config.max_ttl)
        expires = self._clock() + ttl
        if values is None:
            body, status = encode(not_found_body(key), JSON), _NOT_FOUND
        else:
            body, status = encode(answer_body(key, values), JSON), 200
        return (body, status, expires, expires - ttl * config.prefetch_fraction, ttl, 0, False)

    # -- referrals ----------------------------------------------------------------------------------

    def store_referral(self, prefix: str, sites: Iterable[HandleValue]) -> None:
        """Cache the HS_SITE values a delegation of ``prefix`` (normalised) points at; TTL from theirs."""
        public = _public(sites)
        if not public:
            return  # a referral to nowhere is useless to cache
        config = self.config
        ttl = min(max(float(min(v.ttl for v in public)), config.min_ttl), config.max_ttl)
        expires = self._clock() + ttl
        referrals = self._referrals
        referrals[prefix] = (pack_values(public), expires, expires + config.stale_window)
        referrals.move_to_end(prefix)
        while len(referrals) > config.max_referrals:
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
            referral = referrals.get(prefix)
            if referral is None:
                continue
            sites, expires, stale_until = referral
            if now >= stale_until:
                del referrals[prefix]
                continue
            if now < expires or allow_stale:
                referrals.move_to_end(prefix)
                return prefix, unpack_values(sites)
        return None

    def forget_referral(self, prefix: str) -> None:
        """Drop the delegation of ``prefix``: its prefix handle was written through this node."""
        self._referrals.pop(prefix, None)
