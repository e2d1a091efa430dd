"""The resolution state machine: which server to ask next, and what each reply means (sans-IO).

A :class:`Resolution` walks the node tree for one identifier, one *step* per delegation level: the
root step asks the top-level node's servers (the root hints), and each accepted referral starts a
step with the servers it names. The driver loops ``q = r.next_query()`` → does the HTTP GET within
``q.timeout`` → ``r.on_outcome(q, classify(status, body), rtt)`` (or a ``Failure`` of the kind the
transport's ``UpstreamError`` names), until ``next_query()`` returns None; then ``result`` or
``failed`` is set. One query is outstanding at a time (``resolver.walk.drive`` is that loop).

States and rules (like h11's state table; anything not listed raises RuntimeError)::

    state      event                                  next state   effect
    ---------  -------------------------------------  -----------  -----------------------------------
    ASKING     next_query(), deadline passed          FAILED       failed = ResolutionFailed(attempts,
                                                                   hops)
    ASKING     next_query(), no untried server left   FAILED       failed = ResolutionFailed(attempts,
                                                                   hops)
    ASKING     next_query()                           WAITING      returns Query for the best untried
                                                                   server of the step (Upstreams.order)
    WAITING    on_outcome(Answer | NotFound)          DONE         result, answered_by; health success
    WAITING    on_outcome(Referral), accepted         ASKING       new step; referrals += it; success
    WAITING    on_outcome(Referral), too deep         FAILED       more than max_referrals levels
    WAITING    on_outcome(Referral), rejected         ASKING       counted as a Failure (BAD_REFERRAL)
    WAITING    on_outcome(Failure)                    ASKING       attempts += Attempt(url, kind,
                                                                   reason); health failure
    WAITING    on_outcome(Failure TIMEOUT), this      ASKING       attempts += it, said so; no health
               process paused (Upstreams.timed_out)                failure; the server may be asked
                                                                   once more
    DONE       next_query()                           DONE         returns None
    FAILED     next_query()                           FAILED       returns None

Rules that keep a resolution finite and honest:

- A referral is accepted only if its prefix is strictly below the current step's prefix (the root
  step has none) and covers the handle's zone: this rejects loops and referrals elsewhere, so the
  walk is bounded by the prefix depth as well as by ``max_referrals``.
- Within a step each server is asked at most once; a server that failed is not retried in the same
  request (the next one is tried instead: the Chongqing -> Chengdu failover). The one exception: a
  try that timed out while this process itself was paused (``Upstreams.timed_out``) was never a
  fair try, so that server may be asked once more, within the deadline as always.
- Every try ends within the request's deadline: a query's timeout is never more than the time left.
  The try timeout adapts to the server's SRTT when another server remains to fail over to; the last
  untried server of a step gets the full ceiling, since giving up on it early gains nothing.
- Only servers with an HTTP(S) interface are asked (``site_servers`` drops the rest).
"""

from __future__ import annotations

import calendar
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, assert_never

from resolver.errors import Attempt, FailureKind, HandleError, UpstreamError
from resolver.names import Handle, is_under, parse_prefix
from resolver.sites import SiteServer, is_site_value, site_servers
from resolver.upstream import Upstreams
from resolver.values import HandleValue, value_from_wire

__all__ = [
    "MAX_REFERRALS",
    "Answer",
    "Failure",
    "Hop",
    "NotFound",
    "Outcome",
    "Query",
    "Referral",
    "Resolution",
    "ResolutionFailed",
    "classify",
    "prefix_unregistered",
]

# Each referral is one level of the tree, and prefixes have at most 8 segments, so a correct tree
# never needs more than 8; HANDLE.NET's own resolver gives up after 40 steps.
MAX_REFERRALS = 16
_MESSAGE_CHARS = 200  # of an upstream's message quoted in a failure reason
_BAD_ANSWER = FailureKind.BAD_ANSWER


@dataclass(frozen=True, slots=True)
class Query:
    """Ask ``server`` for ``handle`` (the identifier text as the client sent it) within ``timeout`` seconds."""

    server: SiteServer
    handle: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Answer:
    """The handle exists: its values (empty when a type/index filter matched none, responseCode 200)."""

    values: tuple[HandleValue, ...]


@dataclass(frozen=True, slots=True)
class NotFound:
    """The authoritative node has no such handle (HTTP 404, responseCode 100): an answer, not an error."""


@dataclass(frozen=True, slots=True)
class Referral:
    """Ask the sites of ``prefix`` (normalised) instead (HTTP 300, responseCode 303)."""

    prefix: str
    sites: tuple[HandleValue, ...]

    @property
    def servers(self) -> list[SiteServer]:
        """The HTTP servers the sites name, primary sites first."""
        return site_servers(self.sites)


@dataclass(frozen=True, slots=True)
class Failure:
    """This server could not help: no connection, timeout, 5xx, not responsible, or an unusable reply.

    ``kind`` is what code decides on; ``reason`` is what people read (it starts with the kind's words
    where those say it best: "timed out", "not responsible: ...", "bad referral: ...")."""

    kind: FailureKind
    reason: str

    @classmethod
    def of(cls, error: UpstreamError) -> Failure:
        """What a transport's ``UpstreamError`` for one exchange says (its last try)."""
        if not error.attempts:
            return cls(_BAD_ANSWER, error.message)
        last = error.attempts[-1]
        return cls(last.kind, last.reason)


Outcome: TypeAlias = Answer | NotFound | Referral | Failure
HopKind: TypeAlias = Literal["answer", "not found", "referral", "failure"]


@dataclass(frozen=True, slots=True)
class Hop:
    """One try, for ``trace=true`` and the web page: who was asked, what came of it, how long it took."""

    url: str
    description: str
    outcome: HopKind
    ms: float
    detail: str = ""
    """The referred prefix, or why the try failed."""


class ResolutionFailed(UpstreamError):
    """A resolution that ended with no answer. Besides the ``attempts`` (the failed tries, for the
    message), ``hops`` lists every try in order, the referrals that led there included: what
    ``trace=true`` shows of a request that failed, or of a prefix that no node serves."""

    def __init__(self, summary: str, *, handle: str, attempts: Sequence[Attempt], hops: Sequence[Hop]) -> None:
        super().__init__(summary, handle=handle, attempts=attempts)
        self.summary = summary
        self.hops = tuple(hops)

    def with_hops(self, hops: Sequence[Hop]) -> ResolutionFailed:
        """This failure with ``hops`` for its trace (those of a retry added)."""
        return ResolutionFailed(self.summary, handle=self.handle or "", attempts=self.attempts, hops=hops)


# -- reading a node's reply ----------------------------------------------------------------------


class _Malformed(Exception):
    pass


def classify(status: int, body: Mapping[str, Any]) -> Outcome:
    """What an authoritative node's reply to ``GET /api/handles/{handle}`` means (DESIGN §4).

    200/1 and 200/200 are answers, 404/100 is not found, 300/303 is a referral, 400/301 (not
    responsible: a lame delegation) and everything else is a failure of that server.
    """
    if not isinstance(body, Mapping):
        return Failure(_BAD_ANSWER, f"HTTP {status}: malformed reply (the body is not an object)")
    code = body.get("responseCode")
    code = code if type(code) is int else None
    try:
        if status == 200 and code in (1, 200):
            return Answer(_values(body.get("values"), "answer"))
        if status == 404 and code == 100:
            return NotFound()
        if status == 300 and code == 303:
            return _referral(body)
    except _Malformed as exc:
        return Failure(_BAD_ANSWER, f"HTTP {status}: malformed {exc}")
    message = _message(body)
    if status == 400 and code == 301:
        return Failure(FailureKind.NOT_RESPONSIBLE, f"not responsible: {message}")
    kind = FailureKind.SERVER_ERROR if status >= 500 else _BAD_ANSWER
    return Failure(kind, f"HTTP {status}, responseCode {code}: {message}")


def _referral(body: Mapping[str, Any]) -> Outcome:
    raw_prefix = body.get("prefix")
    if not isinstance(raw_prefix, str):
        raise _Malformed('referral: no "prefix"')
    try:
        prefix = parse_prefix(raw_prefix)
    except HandleError as exc:
        raise _Malformed(f"referral: {exc.message}") from exc
    sites = tuple(v for v in _values(body.get("values"), "referral") if is_site_value(v))
    if not site_servers(sites):
        return Failure(FailureKind.BAD_REFERRAL, f"the referral to prefix {prefix} names no HTTP server")
    return Referral(prefix, sites)


def _values(raw: Any, what: str) -> tuple[HandleValue, ...]:
    if not isinstance(raw, list):
        raise _Malformed(f'{what}: "values" is not a list')
    values = []
    for position, item in enumerate(raw, 1):
        try:
            value = value_from_wire(item, position=position, now=0)
        except HandleError as exc:
            raise _Malformed(f"{what}: {exc.message}") from exc
        stamp = _timestamp(item.get("timestamp"))
        values.append(value.with_timestamp(stamp) if stamp else value)
    return tuple(values)


def _timestamp(raw: Any) -> int:
    """HANDLE.NET's ``2026-11-22T08:00:00Z`` (fractions allowed) as epoch seconds; 0 if absent or unreadable."""
    return _parse_timestamp(raw) if isinstance(raw, str) else 0


# A record's values mostly share one timestamp, and so do records written together: strptime was the
# largest Python cost of a cold resolution (a tenth of the recursive node's CPU) before this memo.
@functools.lru_cache(maxsize=4096)
def _parse_timestamp(raw: str) -> int:
    text = raw.split(".", 1)[0].removesuffix("Z")
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0


def _message(body: Mapping[str, Any]) -> str:
    message = body.get("message")
    if message is None:
        return "(no message)"
    text = str(message)
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "…"


def prefix_unregistered(error: UpstreamError) -> bool:
    """Whether every server asked said the prefix is not theirs (400/301): no node the tree leads to
    serves it. For a client that is "no such handle", as the Handle proxy's "Prefix Not Found" 404."""
    return bool(error.attempts) and all(a.kind is FailureKind.NOT_RESPONSIBLE for a in error.attempts)


# -- the state machine ---------------------------------------------------------------------------


def _http_only(servers: Sequence[SiteServer]) -> tuple[SiteServer, ...]:
    return tuple(s for s in servers if s.url.startswith(("http://", "https://")))


@dataclass(slots=True)
class _Step:
    """One delegation level: its prefix (None for the root), its servers, and the ones asked already."""

    prefix: str | None
    servers: tuple[SiteServer, ...]
    tried: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return "the top-level node" if self.prefix is None else f"prefix {self.prefix}"


class Resolution:
    """Resolve one handle: say which server to ask next, take each outcome, decide (see the module docstring)."""

    def __init__(
        self,
        handle: Handle,
        roots: Sequence[SiteServer],
        upstreams: Upstreams,
        *,
        start: tuple[str, Sequence[SiteServer]] | None = None,
        max_referrals: int = MAX_REFERRALS,
        clock: Callable[[], float] = time.monotonic,
        deadline: float | None = None,
    ) -> None:
        self.handle = handle
        self.upstreams = upstreams
        self.max_referrals = max_referrals
        self._clock = clock
        # ``deadline`` lets a retry share what is left of the client's budget instead of a fresh one.
        self.deadline = upstreams.config.deadline if deadline is None else deadline
        self._deadline_at = clock() + self.deadline
        if start is None:
            self._step = _Step(None, _http_only(roots))
        else:
            prefix = parse_prefix(start[0])
            if not is_under(handle.zone, prefix):
                raise ValueError(f"cannot start {handle.text} at prefix {prefix}: it does not cover {handle.zone}")
            self._step = _Step(prefix, _http_only(start[1]))
        self._outstanding: Query | None = None
        self.result: Answer | NotFound | None = None
        self.failed: ResolutionFailed | None = None
        self.answered_by: SiteServer | None = None
        self.referrals: list[Referral] = []
        """Referrals accepted on the way, top first, for the driver to cache per prefix."""
        self.hops: list[Hop] = []
        self.attempts: list[Attempt] = []
        """Every failed try, as the final UpstreamError lists them."""
        self._excused: set[str] = set()  # servers asked again after a try this process's pause spoiled

    @property
    def finished(self) -> bool:
        return self.result is not None or self.failed is not None

    @property
    def prefix(self) -> str | None:
        """The delegation prefix of the current (after finishing: the last) step; None at the root."""
        return self._step.prefix

    @property
    def step_servers(self) -> tuple[SiteServer, ...]:
        """Every server of the current (after an answer: the answering) step, primary sites first."""
        return tuple(self._step.servers)

    @property
    def primary_servers(self) -> tuple[SiteServer, ...]:
        """Primary-site servers of the current (after an answer: the answering) step; writes go there."""
        return tuple(s for s in self._step.servers if s.primary)

    def time_left(self) -> float:
        return self._deadline_at - self._clock()

    def next_query(self) -> Query | None:
        """The next try, or None once finished (then ``result`` or ``failed`` says how)."""
        if self.finished:
            return None
        if self._outstanding is not None:
            raise RuntimeError("a query is outstanding: report it with on_outcome() before asking for another")
        step = self._step
        left = self.time_left()
        if left <= 0:
            self._fail(f"deadline of {self.deadline:g} s passed while asking {step.name}")
            return None
        untried = [s for s in step.servers if s.url not in step.tried]
        if not untried:
            if step.servers:
                self._fail(f"every server for {step.name} failed")
            else:
                self._fail(f"no HTTP server to ask for {step.name}")
            return None
        server = self.upstreams.choose(untried)
        # Adapt the try to the server's speed only when there is another server to fail over to.
        last = len({s.url for s in untried}) == 1
        timeout = self.upstreams.config.try_timeout if last else self.upstreams.try_timeout(server.url)
        step.tried.add(server.url)
        self._outstanding = Query(server, self.handle.text, min(timeout, left))
        return self._outstanding

    def on_outcome(self, query: Query, outcome: Outcome, rtt: float) -> None:
        """Take what came of ``query`` after ``rtt`` seconds; update server health and decide."""
        if self._outstanding is None or query != self._outstanding:
            raise RuntimeError("on_outcome() for a query that is not the outstanding one")
        self._outstanding = None
        server = query.server
        ms = rtt * 1000
        match outcome:
            case Answer() | NotFound():
                self.upstreams.success(server.url, rtt)
                kind: HopKind = "answer" if isinstance(outcome, Answer) else "not found"
                self.hops.append(Hop(server.url, server.description, kind, ms))
                self.result = outcome
                self.answered_by = server
            case Referral():
                problem = self._check_referral(outcome)
                if problem is not None:
                    self._failed_try(query, Failure(FailureKind.BAD_REFERRAL, problem), rtt)
                    return
                self.upstreams.success(server.url, rtt)
                self.hops.append(Hop(server.url, server.description, "referral", ms, outcome.prefix))
                if len(self.referrals) >= self.max_referrals:
                    self._fail(f"more than {self.max_referrals} referrals (the last to prefix {outcome.prefix})")
                    return
                self.referrals.append(outcome)
                self._step = _Step(outcome.prefix, _http_only(outcome.servers))
            case Failure():
                self._failed_try(query, outcome, rtt)
            case _:
                assert_never(outcome)

    def _check_referral(self, referral: Referral) -> str | None:
        current, prefix = self._step.prefix, referral.prefix
        if prefix == current:
            return f"bad referral: prefix {prefix} again (a referral loop)"
        if current is not None and not is_under(prefix, current):
            return f"bad referral: prefix {prefix} is not below {current}"
        if not is_under(self.handle.zone, prefix):
            return f"bad referral: prefix {prefix} does not cover {self.handle.zone}"
        return None

    def _failed_try(self, query: Query, failure: Failure, rtt: float) -> None:
        server, reason = query.server, failure.reason
        if failure.kind is FailureKind.TIMEOUT:
            paused = self.upstreams.timed_out(server.url, reason, rtt=rtt, timeout=query.timeout)
            if paused:
                reason = f"{reason} while this node was paused for {paused * 1000:.0f} ms (not held against it)"
                if server.url not in self._excused:
                    self._excused.add(server.url)
                    self._step.tried.discard(server.url)
        else:
            self.upstreams.failure(server.url, reason)
        self.attempts.append(Attempt(server.url, failure.kind, reason))
        self.hops.append(Hop(server.url, server.description, "failure", rtt * 1000, reason))

    def _fail(self, why: str) -> None:
        self.failed = ResolutionFailed(
            f"could not resolve {self.handle.text}: {why}",
            handle=self.handle.text,
            attempts=self.attempts,
            hops=self.hops,
        )
