"""``idres status``, deciding: what the nodes' answers (``nodes.cli.status.Answers``) say about the
tree, as a ``Report`` of rows, mirror links and what needs attention. Pure: tested without sockets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodes.cli.status import Answers
from resolver.config import NodeSpec, Topology

__all__ = ["DEFAULT_MAX_LAG", "MirrorLink", "NodeRow", "Problem", "Report", "assess"]

# Seconds a mirror may go without having every change before it counts as lagging: a mirror that keeps
# up is caught up at every long-poll (20 s at most), and a bulk load is applied within seconds.
DEFAULT_MAX_LAG = 30.0


@dataclass(frozen=True, slots=True)
class Problem:
    """Something an operator should look at, on one node."""

    node: str
    message: str


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as the table shows it; None where the node did not say (or is down)."""

    name: str
    url: str
    kind: str  # the topology's role: top, secondary, enterprise or recursive
    up: bool
    error: str | None = None  # why it counts as down
    role: str | None = None  # now: primary, mirror or recursive
    epoch: int | None = None
    prefix: str | None = None
    writable: bool | None = None
    records: int | None = None
    last_seq: int | None = None
    cache_entries: int | None = None
    hit_ratio: float | None = None  # hits / (hits + misses) since the node started
    lookups: int | None = None
    upstreams_down: tuple[str, ...] = ()  # as topology names where known, else URLs
    workers: tuple[int, int] | None = None  # (alive, started) of a recursive node's workers

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "kind": self.kind,
            "up": self.up,
            "error": self.error,
            "role": self.role,
        }
        if self.kind == "recursive":
            body.update(cacheEntries=self.cache_entries, hitRatio=self.hit_ratio, lookups=self.lookups)
            body["upstreamsDown"] = list(self.upstreams_down)
            if self.workers is not None:
                body["workersAlive"], body["workers"] = self.workers
        else:
            body.update(epoch=self.epoch, prefix=self.prefix, writable=self.writable)
            body.update(records=self.records, lastSeq=self.last_seq)
        return body


@dataclass(frozen=True, slots=True)
class MirrorLink:
    """A mirror and the primary it follows, as both see it."""

    mirror: str
    primary: str
    # The mirror's: connecting, copying, following, failing; "down" when it does not answer, "unknown"
    # when it answers /healthz but not /api/replication/status.
    state: str
    applied_seq: int | None = None
    primary_seq: int | None = None  # the primary's lastSeq, when it answered
    lag_seq: int | None = None
    lag_seconds: float | None = None
    last_error: str | None = None
    seen_seconds_ago: float | None = None  # the primary's view: since the mirror last polled it
    digest: str = "unchecked"  # "agrees", "differs" or "unchecked"
    digest_note: str | None = None  # why unchecked

    def to_json(self) -> dict[str, Any]:
        return {
            "mirror": self.mirror,
            "primary": self.primary,
            "state": self.state,
            "appliedSeq": self.applied_seq,
            "primaryLastSeq": self.primary_seq,
            "lagSeq": self.lag_seq,
            "lagSeconds": self.lag_seconds,
            "lastError": self.last_error,
            "seenSecondsAgo": self.seen_seconds_ago,
            "digest": self.digest,
            "digestNote": self.digest_note,
        }


@dataclass(frozen=True, slots=True)
class Report:
    nodes: tuple[NodeRow, ...]
    links: tuple[MirrorLink, ...]
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "nodes": [n.to_json() for n in self.nodes],
            "mirrors": [link.to_json() for link in self.links],
            "attention": [{"node": p.node, "message": p.message} for p in self.problems],
            "notes": list(self.notes),
        }


# -- deciding what needs attention ---------------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _names_of(topology: Topology, urls: Sequence[Any]) -> tuple[str, ...]:
    by_url = {spec.url: name for name, spec in topology.nodes.items()}
    return tuple(by_url.get(str(url).rstrip("/"), str(url)) for url in urls)


def _recursive_row(spec: NodeSpec, answers: Answers, topology: Topology, problems: list[Problem]) -> NodeRow:
    health = answers.health or {}
    cache = answers.cache or {}
    hits, misses = cache.get("hits"), cache.get("misses")
    lookups = int(hits + misses) if hits is not None and misses is not None else None
    ratio = round(hits / lookups, 4) if lookups and hits is not None else None
    down = _names_of(topology, health.get("down") or [])
    if down:
        problems.append(Problem(spec.name, f"marks upstreams down: {', '.join(down)}"))
    workers = None
    if _int(health.get("workers")) is not None and _int(health.get("alive")) is not None:
        workers = (int(health["alive"]), int(health["workers"]))
        if workers[0] < workers[1]:
            problems.append(Problem(spec.name, f"only {workers[0]} of its {workers[1]} workers answer"))
    if "metrics" in answers.errors:
        problems.append(Problem(spec.name, f"/metrics did not answer: {answers.errors['metrics']}"))
    entries = _int(health.get("cacheEntries"))
    return NodeRow(
        spec.name,
        spec.url,
        spec.role,
        True,
        role="recursive",
        cache_entries=entries,
        hit_ratio=ratio,
        lookups=lookups,
        upstreams_down=down,
        workers=workers,
    )


def _authoritative_row(spec: NodeSpec, answers: Answers, problems: list[Problem]) -> NodeRow:
    body = answers.status or {}
    if "status" in answers.errors:
        problems.append(Problem(spec.name, f"/api/replication/status did not answer: {answers.errors['status']}"))
    role = body.get("role") if isinstance(body.get("role"), str) else None
    writable = body.get("writable") if isinstance(body.get("writable"), bool) else None
    if role == "primary" and writable is False:
        problems.append(Problem(spec.name, f"refuses writes: {body.get('message') or 'read-only'}"))
    if body.get("note"):
        problems.append(Problem(spec.name, str(body["note"])))
    if answers.credentials_refused:
        problems.append(Problem(spec.name, f"refused the operator's credentials ({answers.credentials_refused})"))
    return NodeRow(
        spec.name,
        spec.url,
        spec.role,
        True,
        role=role,
        epoch=_int(body.get("epoch")),
        prefix=spec.prefix,
        writable=writable,
        records=_int(body.get("records")),
        last_seq=_int(body.get("lastSeq")),
    )


def _link(name: str, answers: Mapping[str, Answers]) -> MirrorLink | None:
    """The link of node ``name`` to the primary it follows, if it is a mirror (or, down, the topology's)."""
    mine = answers[name]
    body = mine.status
    if body is None:  # down, or no status: the topology says whom it follows
        following = mine.spec.mirror_of
        gone = "down" if mine.health is None else "unknown"  # either is reported on the node's own row
        return None if following is None else MirrorLink(name, following, gone)
    if body.get("role") != "mirror":
        return None
    primary_name = str(body.get("primaryNode") or mine.spec.mirror_of or "")
    primary = answers.get(primary_name)
    other = primary.status if primary is not None else None
    state = body.get("state")
    if not isinstance(state, str):  # a node from before the state field
        state = "following" if body.get("connected") else "failing"
    applied, last = _int(body.get("appliedSeq")), _int(other.get("lastSeq")) if other else None
    seen = None
    if other is not None and isinstance(other.get("mirrors"), dict):
        view = other["mirrors"].get(name)
        seen = _float(view.get("seenSecondsAgo")) if isinstance(view, dict) else None
    digest, note = "unchecked", None
    if other is None:
        note = f"{primary_name} did not answer"
    elif "digest" not in body or "digest" not in other:
        note = "no digest: the operator's credentials are needed"
    elif applied != last:
        note = f"not at one sequence number (applied {applied}, {primary_name} at {last})"
    else:
        digest = "agrees" if body["digest"] == other["digest"] else "differs"
    return MirrorLink(
        name,
        primary_name,
        state,
        applied_seq=applied,
        primary_seq=last,
        lag_seq=_int(body.get("lagSeq")),
        lag_seconds=_float(body.get("lagSeconds")),
        last_error=body.get("lastError") if isinstance(body.get("lastError"), str) else None,
        seen_seconds_ago=seen,
        digest=digest,
        digest_note=note,
    )


def _link_problems(link: MirrorLink, max_lag: float) -> list[Problem]:
    if link.state in ("down", "unknown"):
        return []  # reported on the node's own row
    said = f": {link.last_error}" if link.last_error else ""
    if link.state != "following":
        return [Problem(link.mirror, f"mirror of {link.primary} is {link.state}{said}")]
    found = []
    if link.lag_seconds is None or link.lag_seconds > max_lag:
        behind = "never caught up" if link.lag_seconds is None else f"last caught up {link.lag_seconds:g} s ago"
        if link.lag_seq is not None:
            behind += f" ({link.lag_seq:,} changes behind)"
        found.append(Problem(link.mirror, f"lags behind {link.primary}: {behind}"))
    if link.digest == "differs":
        found.append(
            Problem(link.mirror, f"holds other data than {link.primary} at seq {link.applied_seq}: the digests differ")
        )
    return found


def assess(
    topology: Topology,
    answers: Mapping[str, Answers],
    *,
    max_lag: float = DEFAULT_MAX_LAG,
    notes: Sequence[str] = (),
) -> Report:
    """The report on ``answers`` (every node of ``topology``): what each said, and what needs attention."""
    rows: list[NodeRow] = []
    problems: list[Problem] = []
    for name, spec in topology.nodes.items():
        mine = answers[name]
        if mine.health is None:
            error = mine.errors.get("healthz", "no answer")
            problems.append(Problem(name, f"down: {error}"))
            rows.append(NodeRow(name, spec.url, spec.role, False, error=error, prefix=spec.prefix))
        elif spec.role == "recursive":
            rows.append(_recursive_row(spec, mine, topology, problems))
        else:
            rows.append(_authoritative_row(spec, mine, problems))
    links = [link for name in topology.nodes if (link := _link(name, answers)) is not None]
    for link in links:
        problems.extend(_link_problems(link, max_lag))
    return Report(tuple(rows), tuple(links), tuple(problems), tuple(notes))
