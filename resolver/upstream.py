"""Failover policy and health of upstream servers: smoothed RTT, failure counts, down marks, per-try timeouts.

The table is bounded (DESIGN.md §11: every server a referral names is untrusted): at most
``max_servers`` servers besides the root hints, the least recently asked forgotten first, and a
server no resolution asked for ``forget_after`` seconds is forgotten, so it is no longer probed.

A try is judged by the time this process gave it, not by the wall clock: while the process itself
is paused (a collector pass, a blocking call) no reply can be read, so a timeout during such a pause
is not held against the server, and the pause is taken out of an RTT sample (``Pauses``; issue 12:
the recursive node's own pauses of seconds marked healthy upstreams down).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from resolver.errors import ConfigError
from resolver.sites import SiteServer

__all__ = [
    "DEFAULT_UPSTREAM_CONFIG",
    "FAIR_SHARE",
    "PAUSE_MIN",
    "PAUSE_TICK",
    "Pauses",
    "ServerHealth",
    "UpstreamConfig",
    "Upstreams",
]

# Marking a server down and up again is the recursive node's failover: its operator wants both in the log.
log = logging.getLogger("idres.upstream")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """How upstream servers are chosen, timed out and marked down (CoreDNS ``forward``, BIND adb)."""

    max_fails: int = 2
    """Consecutive failures before a server is marked down (CoreDNS ``max_fails``; 0 never marks one down)."""
    probe_interval: float = 0.5
    """How often the driver probes a down server until it answers (CoreDNS ``health_check`` 0.5 s)."""
    srtt_alpha: float = 0.3
    """Weight of a new RTT sample: SRTT = 0.7·old + 0.3·new (BIND ``adb.c``)."""
    initial_srtt: float = 0.010
    """Assumed SRTT of a server never heard from: low, so unknown servers are tried before known-slow ones."""
    srtt_decay: float = 0.02
    """Each time a healthy server is passed over for another, its SRTT is multiplied by 1 - srtt_decay
    (BIND ``adb.c`` ages by 0.98): one that was slow once, a restarted primary's first answers say, is
    tried again after a while instead of never, and wins its load back if it is fast now."""
    mirror_penalty: float = 1.5
    """A mirror site's SRTT is multiplied by this when ordering, so a primary wins when RTTs are similar
    (and a recovered primary is used again rather than the mirror that stood in for it)."""
    try_timeout: float = 1.0
    """Ceiling of one try; also the timeout of a server with no RTT sample yet (nothing to adapt from)."""
    min_try_timeout: float = 0.05
    """Floor of one try (Unbound's ``infra-cache-min-rtt`` is 50 ms)."""
    deadline: float = 3.0
    """Budget of one whole client request, every level and retry included (CoreDNS: 5 s per request)."""
    max_servers: int = 1024
    """Servers whose health is kept besides the root hints; past it the least recently asked is
    forgotten (Unbound bounds its infra cache the same way, ``infra-cache-numhosts``). A referral
    names at most 16 servers (``resolver.sites.MAX_SITE_SERVERS``), so this holds 64 delegations'
    worth asked within ``forget_after``, far more than a deployment's nodes, while a referral listing
    thousands of addresses cannot grow the table, the probes or the metrics past it."""
    forget_after: float = 600.0
    """Seconds after which a server no resolution asked is forgotten, with its down mark and its
    probes (Unbound's ``infra-host-ttl`` is 900 s): a down server is probed for ten minutes after a
    client last needed it, not forever at whatever address a referral chose."""

    def __post_init__(self) -> None:
        if self.max_fails < 0:
            raise ConfigError("max_fails must be 0 (never mark down) or more")
        if not 0 < self.srtt_alpha <= 1:
            raise ConfigError("srtt_alpha must be in (0, 1]")
        if not 0 <= self.srtt_decay < 1:
            raise ConfigError("srtt_decay must be in [0, 1)")
        if not 0 < self.min_try_timeout <= self.try_timeout <= self.deadline:
            raise ConfigError("need 0 < min_try_timeout <= try_timeout <= deadline")
        if self.initial_srtt <= 0 or self.mirror_penalty <= 0 or self.probe_interval <= 0:
            raise ConfigError("initial_srtt, mirror_penalty and probe_interval must be positive")
        if isinstance(self.max_servers, bool) or not isinstance(self.max_servers, int) or self.max_servers < 1:
            raise ConfigError(f"max_servers must be a whole number of servers, 1 or more, not {self.max_servers!r}")
        if not self.forget_after > 0:
            raise ConfigError(f"forget_after must be a positive number of seconds, not {self.forget_after!r}")


DEFAULT_UPSTREAM_CONFIG = UpstreamConfig()

# A server that keeps timing out gets a longer try each time, up to the ceiling (Knot Resolver
# backs off with ``timeout << min(timeouts, 8)``): a busy server is not written off by a timeout
# that its own slowness made too short.
_MAX_BACKOFF_SHIFT = 3

# The driver's loop watch ticks this often (``RecursiveResolver.watch_pauses``): a hundred wake-ups
# a second cost well under 1% of a core, and a pause is known to within a tick.
PAUSE_TICK = 0.01
# A tick later than this beyond its interval is a pause of the process, not scheduling jitter (an
# asyncio timer on a loop that is not blocked wakes within about a millisecond).
PAUSE_MIN = 0.005
# A timed-out try counts against the server only if this process ran for at least this share of the
# try's timeout (a pause near its end still leaves the server its time; one in the middle does not).
FAIR_SHARE = 0.8
# Pauses older than this are forgotten: far longer than any request's deadline.
_PAUSE_HORIZON = 60.0


class Pauses:
    """When this process itself could not run: the gaps between the ticks of the driver's loop watch.

    Sans-IO bookkeeping: the driver calls ``tick`` every ``interval`` seconds, and a tick later than
    ``PAUSE_MIN`` beyond that records a pause. Before the first tick nothing is known and no pause
    is reported, so a resolution driven without the watch (``idres resolve``) judges tries by the
    wall clock as before. The figures (``count``, ``total``, ``worst``, ``excused``) are for metrics.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, interval: float = PAUSE_TICK) -> None:
        self._clock = clock
        self.interval = interval
        self._last: float | None = None  # clock time of the last tick
        self._log: deque[tuple[float, float]] = deque()  # (start, end) of each pause, oldest first
        self.count = 0  # pauses seen
        self.total = 0.0  # their seconds
        self.worst = 0.0  # the longest, seconds
        self.excused = 0  # timed-out tries not held against their server because of a pause

    def tick(self) -> None:
        """The loop ran: record how late this tick came, if it was late enough to be a pause."""
        now = self._clock()
        if self._last is not None:
            late = now - self._last - self.interval
            if late > PAUSE_MIN:
                self._log.append((now - late, now))
                self.count += 1
                self.total += late
                self.worst = max(self.worst, late)
        self._last = now
        log = self._log
        while log and log[0][1] < now - _PAUSE_HORIZON:
            log.popleft()

    def paused_since(self, since: float) -> float:
        """Seconds this process was paused between clock time ``since`` and now, including a pause
        still under way (the loop watch has not ticked since it began: it cannot tick before the
        callback asking this runs, whichever the loop woke first after the pause)."""
        now = self._clock()
        paused = 0.0
        for start, end in reversed(self._log):
            if end <= since:
                break
            paused += end - max(start, since)
        if self._last is not None:
            due = self._last + self.interval
            if now - due > PAUSE_MIN:
                paused += now - max(due, since)
        return max(paused, 0.0)


@dataclass(slots=True)
class ServerHealth:
    """What is known about one upstream server; copies are handed out, the live one stays inside."""

    url: str
    srtt: float
    """Smoothed round-trip time in seconds (``initial_srtt`` until the first success)."""
    fails: int = 0
    """Consecutive failures since the last success."""
    down: bool = False
    last_failure: float | None = None
    """Clock time of the last failure (None: never failed)."""
    last_success: float | None = None
    successes: int = 0
    failures: int = 0
    last_error: str = ""
    """What the last failure was, for logs and the status page."""


class Upstreams:
    """Health of every upstream server seen, and the order and timeouts that follow from it.

    Pure bookkeeping: the resolution state machine reports each try's outcome here, and the driver
    probes :meth:`down_servers` every ``probe_interval`` and reports those outcomes too (with
    ``probe=True``: a probe is not a use, so it neither keeps a server remembered nor brings back
    one forgotten meanwhile). The servers in ``keep`` (the root hints: every walk starts there) are
    never forgotten; ``on_forget`` hears of every other server that is, so its metrics can go too.
    """

    def __init__(
        self,
        config: UpstreamConfig = DEFAULT_UPSTREAM_CONFIG,
        clock: Callable[[], float] = time.monotonic,
        *,
        keep: Iterable[str] = (),
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._health: dict[str, ServerHealth] = {}
        self._keep = frozenset(keep)
        # When each forgettable server was last asked, least recently first (the LRU order).
        self._asked: OrderedDict[str, float] = OrderedDict()
        self._on_forget = on_forget
        self.pauses = Pauses(clock)
        """This process's own pauses, ticked by the driver's loop watch."""

    def _get(self, url: str, *, probe: bool = False) -> ServerHealth | None:
        """The live record of ``url``, now the most recently asked; a probe only finds one."""
        health = self._health.get(url)
        if probe:
            return health
        if health is None:
            health = self._health[url] = ServerHealth(url, self.config.initial_srtt)
        if url not in self._keep:
            self._asked[url] = self._clock()
            self._asked.move_to_end(url)
            while len(self._asked) > self.config.max_servers:
                self._forget(next(iter(self._asked)))
        return health

    def _forget(self, url: str) -> None:
        del self._asked[url]
        del self._health[url]
        if self._on_forget is not None:
            self._on_forget(url)

    def forget_idle(self) -> None:
        """Forget the servers not asked for ``forget_after`` seconds (the root hints stay)."""
        cutoff = self._clock() - self.config.forget_after
        while self._asked:
            url, asked = next(iter(self._asked.items()))
            if asked > cutoff:
                break
            self._forget(url)

    def __len__(self) -> int:
        """How many servers are tracked, root hints included."""
        return len(self._health)

    def tracks(self, url: str) -> bool:
        """Whether anything is known about ``url`` (it was asked and not forgotten since)."""
        return url in self._health

    def effective_srtt(self, server: SiteServer) -> float:
        """The SRTT used for ordering: a mirror's is scaled by ``mirror_penalty``."""
        health = self._health.get(server.url)
        srtt = self.config.initial_srtt if health is None else health.srtt
        return srtt if server.primary else srtt * self.config.mirror_penalty

    def is_down(self, url: str) -> bool:
        health = self._health.get(url)
        return health is not None and health.down

    def order(self, servers: Sequence[SiteServer]) -> list[SiteServer]:
        """Healthy servers by effective SRTT, then the down ones (so one is still tried when all are down).

        Ties keep the given order (sites list primaries first). Down servers are ordered among
        themselves the same way, so the one most likely to have recovered is tried first.
        """
        return sorted(servers, key=lambda s: (self.is_down(s.url), self.effective_srtt(s)))

    def choose(self, servers: Sequence[SiteServer]) -> SiteServer:
        """The server to ask next (the first of :meth:`order`); the healthy ones passed over age
        (``srtt_decay``), so none stays written off because of old samples."""
        ordered = self.order(servers)
        chosen = ordered[0]
        keep = 1 - self.config.srtt_decay
        for server in ordered[1:]:
            health = self._health.get(server.url)
            if health is not None and not health.down and server.url != chosen.url:
                health.srtt *= keep
        return chosen

    def try_timeout(self, url: str) -> float:
        """Timeout for one try: 4·SRTT, doubled per consecutive failure, within [min_try_timeout, try_timeout].

        A server never heard from gets the ceiling: there is no RTT to adapt from yet.
        """
        config = self.config
        health = self._health.get(url)
        if health is None or health.successes == 0:
            return config.try_timeout
        adaptive = 4 * health.srtt * (1 << min(health.fails, _MAX_BACKOFF_SHIFT))
        return min(max(adaptive, config.min_try_timeout), config.try_timeout)

    def success(self, url: str, rtt: float, *, probe: bool = False) -> None:
        """A usable reply came back after ``rtt`` seconds: update SRTT, clear the failure count and down mark.
        Time this process spent paused meanwhile is not the server's, so it is left out of the sample.

        A probe's answer clears the down mark but is no RTT sample: it is ``/healthz`` over a fresh
        connection to a process that has often just started, tens of milliseconds on a loaded host.
        Counted, it kept a restarted primary behind its mirror for a hundred resolutions; the
        server comes back with the SRTT its resolutions earned, and its next answers update it."""
        health = self._get(url, probe=probe)
        if health is None:
            return  # a probe's answer from a server forgotten while it was asked
        if not probe:
            rtt = max(rtt - self.pauses.paused_since(self._clock() - rtt), 0.0)
            if health.successes == 0:
                health.srtt = rtt  # the first sample replaces the guess (RFC 6298 §2.2)
            else:
                alpha = self.config.srtt_alpha
                health.srtt = (1 - alpha) * health.srtt + alpha * rtt
            health.successes += 1
        health.fails = 0
        if health.down:
            log.warning("upstream %s is up again (answered in %.0f ms)", url, rtt * 1000)
        health.down = False
        health.last_success = self._clock()

    def failure(self, url: str, reason: str, *, probe: bool = False) -> None:
        """A try failed (no connection, timeout, 5xx, unusable reply); mark down after ``max_fails`` in a row."""
        health = self._get(url, probe=probe)
        if health is None:
            return
        health.fails += 1
        health.failures += 1
        health.last_failure = self._clock()
        health.last_error = reason
        if self.config.max_fails and health.fails >= self.config.max_fails:
            if not health.down:
                log.warning("upstream %s marked down after %d failures in a row: %s", url, health.fails, reason)
            health.down = True

    def timed_out(self, url: str, reason: str, *, rtt: float, timeout: float) -> float:
        """A try of ``url`` timed out after ``rtt`` seconds (its timeout was ``timeout``): a failure,
        unless this process was paused so long meanwhile that it ran for less than ``FAIR_SHARE`` of
        the timeout. Returns the seconds of that pause when it excused the try, else 0.0."""
        pauses = self.pauses
        paused = pauses.paused_since(self._clock() - rtt)
        if paused > 0 and rtt - paused < FAIR_SHARE * timeout:
            pauses.excused += 1
            self._get(url)  # asked all the same: it stays remembered
            return paused
        self.failure(url, reason)
        return 0.0

    def down_servers(self) -> list[str]:
        """URLs of the servers marked down and not forgotten, for the driver's background probes."""
        self.forget_idle()
        return [url for url, health in self._health.items() if health.down]

    def health(self, url: str) -> ServerHealth:
        """A copy of what is known about ``url`` (a fresh record if nothing is)."""
        health = self._health.get(url)
        return ServerHealth(url, self.config.initial_srtt) if health is None else dataclasses.replace(health)

    def snapshot(self) -> dict[str, ServerHealth]:
        """Copies of every tracked server's health, for metrics and the status page."""
        self.forget_idle()
        return {url: dataclasses.replace(health) for url, health in self._health.items()}
