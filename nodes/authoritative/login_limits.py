"""Limits on failed logins, per client address and per identity: token buckets of failures (sans-IO).

Each key (a client address, an identity's handle) has a bucket of ``burst`` tries that refills at
``per_second``; a credential check takes one try from the client's bucket and one from the identity's
*before* it runs (so concurrent guesses cannot all slip through while PBKDF2 works in a thread), and
gives them back when the secret was right or the check could not be made (an upstream failure). An
empty bucket answers 429 ``TooManyRequests`` with the seconds until its next try, without checking
anything: a locked-out guesser costs the node no PBKDF2 work and no request upstream.

Keying the identity by its handle (not ``INDEX:HANDLE``) keeps a guesser from multiplying its tries
by writing the index differently (``0:`` matches any HS_SECKEY). Memory is bounded: each kind of key
keeps at most ``max_keys`` buckets (least recently used dropped first), and a bucket that refilled is
dropped as soon as it is seen, since a full bucket is the same as none. A dropped bucket forgets its
failures; flooding the table with new keys is itself limited by the client's own bucket.

A successful login gives its tries back but does not reset the bucket, so knowing one secret does
not buy more guesses at another.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from resolver.errors import TooManyRequests

__all__ = ["DEFAULT_LOGIN_LIMITS", "LoginLimits", "LoginLimitsConfig", "Rate", "Throttle", "Tries"]


@dataclass(frozen=True, slots=True)
class Rate:
    """``burst`` failures in a row, then one more every ``1 / per_second`` seconds."""

    burst: int
    per_second: float


@dataclass(frozen=True, slots=True)
class LoginLimitsConfig:
    identity: Rate = Rate(burst=10, per_second=1 / 36)
    """Per identity, whatever the client: 10 tries for typing mistakes, then 100 an hour, the most
    OWASP ASVS 4.0 V2.2.1 allows on one account. The legitimate user of an identity under attack is
    locked out too (that is what a per-account limit means), but only for new logins: a secret
    verified in the last ``CREDENTIAL_CACHE_SECONDS`` is not checked again (``Authority.authenticate``)."""
    client: Rate = Rate(burst=30, per_second=1 / 6)
    """Per client address, whatever the identity (spraying one guess over many identities): looser,
    since an address may be shared (NAT, a recursive node forwarding for its clients), yet 600 an
    hour instead of the ~19 a second of issue 11's finding 10."""
    max_keys: int = 10_000
    """Buckets kept per kind of key (about 150 bytes each): a few MB at most."""


DEFAULT_LOGIN_LIMITS = LoginLimitsConfig()


class Throttle:
    """Token buckets keyed by string, least recently used dropped past ``max_keys``."""

    def __init__(self, rate: Rate, *, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tries, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tries(self, key: str, now: float) -> float:
        """Tries left for ``key`` now (a refilled bucket is dropped: the same as none)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.rate.burst)
        tries = min(float(self.rate.burst), bucket[0] + (now - bucket[1]) * self.rate.per_second)
        if tries >= self.rate.burst:
            del self._buckets[key]
        return tries

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        tries = self._tries(key, self._clock())
        return 0.0 if tries >= 1 else (1 - tries) / self.rate.per_second

    def take(self, key: str) -> None:
        """Spend one try of ``key`` (``wait`` said it may)."""
        now = self._clock()
        self._buckets[key] = (self._tries(key, now) - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def give_back(self, key: str) -> None:
        """Return a try spent with ``take`` (the check succeeded, or could not be made)."""
        now = self._clock()
        if key in self._buckets:
            self._buckets[key] = (self._tries(key, now) + 1, now)
            self._tries(key, now)  # full again: dropped


@dataclass(frozen=True, slots=True)
class Tries:
    """The tries one credential check took: give them back with ``LoginLimits.give_back``."""

    identity: str
    client: str | None


class LoginLimits:
    """Failed-login limits of one node: ``admit`` before checking a secret, ``give_back`` after a success."""

    def __init__(
        self, config: LoginLimitsConfig = DEFAULT_LOGIN_LIMITS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.identities = Throttle(config.identity, max_keys=config.max_keys, clock=clock)
        self.clients = Throttle(config.client, max_keys=config.max_keys, clock=clock)

    def admit(self, identity: str, who: str, client: str | None) -> Tries:
        """Take a try for the identity with handle key ``identity`` (``who``: as the client wrote it,
        for the message) from ``client`` (its address; None when unknown), or raise TooManyRequests."""
        waits = [(self.identities.wait(identity), f"for {who}")]
        if client is not None:
            waits.append((self.clients.wait(client), f"from {client}"))
        wait, what = max(waits)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise TooManyRequests(f"too many failed logins {what}: try again in {seconds} s", retry_after=seconds)
        self.identities.take(identity)
        if client is not None:
            self.clients.take(client)
        return Tries(identity, client)

    def give_back(self, tries: Tries) -> None:
        self.identities.give_back(tries.identity)
        if tries.client is not None:
            self.clients.give_back(tries.client)
