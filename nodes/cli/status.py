"""``idres status``, asking: every node of a topology at once, each request bounded by a timeout.

Per node ``/healthz``, and ``/api/replication/status`` (authoritative, with the operator's credentials
when they are known, for the record count and digest) or ``/metrics`` (recursive, for the cache's hit
ratio). ``nodes.cli.status_report`` decides what the answers mean; ``nodes.cli.status_view`` prints them.

A mirror and its primary agree when, at the same sequence number (the mirror's ``appliedSeq`` equal
to the primary's ``lastSeq``), their digests are equal. Writes going on make the two reads land at
different numbers, so a pair that does not line up is asked again, up to ``AGREE_ROUNDS`` times.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from nodes.running.operator_secrets import ENV_SECRET, SECRETS_FILE
from resolver.client import HandleClient, basic_auth, describe_failure
from resolver.config import NodeSpec, Topology
from resolver.errors import UpstreamError
from resolver.names import prefix_handle
from resolver.tls import node_session

__all__ = ["DEFAULT_TIMEOUT", "Answers", "cache_counters", "gather", "known_secrets", "unsettled"]

# Seconds each request may take. Every node is asked at once, so a node that is down costs this at
# most (a refused connection costs nothing); a node that answers slower than this is as good as down
# for an operator looking at the tree.
DEFAULT_TIMEOUT = 2.0
AGREE_ROUNDS = 3  # reads of a mirror and its primary until they line up at one sequence number
AGREE_PAUSE = 0.3  # seconds between them: a write in flight lands meanwhile
MAX_METRICS_BYTES = 4 * 1_048_576  # a recursive node's /metrics is ~30 KB per worker


@dataclass(slots=True)
class Answers:
    """What one node answered; None for an endpoint that did not answer (``errors`` says why)."""

    spec: NodeSpec
    health: dict[str, Any] | None = None
    status: dict[str, Any] | None = None  # /api/replication/status (authoritative nodes)
    cache: dict[str, float] | None = None  # the recursive cache's counters from /metrics
    errors: dict[str, str] = field(default_factory=dict)  # endpoint -> why it did not answer
    credentials_refused: str | None = None  # the node refused the operator's credentials: its words


# -- the operator's secrets ----------------------------------------------------------------------


def known_secrets(data_dir: Path, topology: Topology) -> tuple[dict[str, str], str | None]:
    """Each primary's operator secret, as ``idres up`` and ``idres serve`` take it: ``IDRES_ADMIN_SECRET``
    when set, else ``DATA/operator-secrets.json``. Only read: a status never makes a secret. The
    second item says why there are none, if there are none."""
    names = [n.name for n in topology.primaries()]
    env = os.environ.get(ENV_SECRET)
    if env:
        return dict.fromkeys(names, env), None
    path = data_dir / SECRETS_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, f"no operator secret (${ENV_SECRET} is not set and there is no {path})"
    except (OSError, ValueError) as exc:
        return {}, f"no operator secret: cannot read {path} ({exc})"
    if not isinstance(stored, dict):
        return {}, f"no operator secret: {path} is not a JSON object"
    return {n: s for n, s in stored.items() if n in names and isinstance(s, str)}, None


# -- asking the nodes ----------------------------------------------------------------------------


def _failure(exc: UpstreamError) -> str:
    return "; ".join(a.reason for a in exc.attempts) or exc.message


class _Refused(Exception):
    """A node answered, but not 200: its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _get(client: HandleClient, url: str, path: str, auth: str | None, timeout: float) -> dict[str, Any]:
    """The body of a 200 answer; _Refused for another answer, UpstreamError for none."""
    reply = await client.request("GET", url, path, params={}, authorization=auth, timeout=timeout)
    if reply.status != 200:
        raise _Refused(reply.status, str(reply.body.get("message") or f"HTTP {reply.status}"))
    return reply.body


async def _status(answers: Answers, client: HandleClient, secret: str | None, timeout: float) -> None:
    spec = answers.spec
    auth = basic_auth(f"300:{prefix_handle(spec.prefix)}", secret) if secret and spec.prefix else None
    try:
        try:
            answers.status = await _get(client, spec.url, "/api/replication/status", auth, timeout)
        except _Refused as exc:
            if auth is None or exc.status not in (401, 403):
                raise
            answers.credentials_refused = f"HTTP {exc.status}: {exc.message}"
            answers.status = await _get(client, spec.url, "/api/replication/status", None, timeout)
    except UpstreamError as exc:
        answers.errors["status"] = _failure(exc)
    except _Refused as exc:
        answers.errors["status"] = f"HTTP {exc.status}: {exc.message}"


async def _health(answers: Answers, client: HandleClient, timeout: float) -> None:
    try:
        answers.health = await _get(client, answers.spec.url, "/healthz", None, timeout)
    except UpstreamError as exc:
        answers.errors["healthz"] = _failure(exc)
    except _Refused as exc:
        answers.errors["healthz"] = f"HTTP {exc.status}: {exc.message}"


def cache_counters(text: str) -> dict[str, float]:
    """The recursive cache's counters (``idres_cache_*``) in a Prometheus text exposition, by name
    without the prefix and the ``_total`` suffix, summed over labels (a node's workers)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("idres_cache_") and not sample.name.endswith("_created"):
                name = sample.name.removeprefix("idres_cache_").removesuffix("_total")
                found[name] = found.get(name, 0.0) + sample.value
    return found


async def _metrics(answers: Answers, session: aiohttp.ClientSession, timeout: float) -> None:
    try:
        async with session.get(answers.spec.url + "/metrics", timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                answers.errors["metrics"] = f"HTTP {resp.status}"
                return
            text = (await resp.content.read(MAX_METRICS_BYTES)).decode("utf-8", "replace")
        answers.cache = cache_counters(text)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        answers.errors["metrics"] = describe_failure(exc)[1]
    except ValueError as exc:  # not the Prometheus text format
        answers.errors["metrics"] = f"unreadable: {exc}"


async def _ask(spec: NodeSpec, session: aiohttp.ClientSession, secrets: Mapping[str, str], timeout: float) -> Answers:
    answers = Answers(spec)
    client = HandleClient(session)
    if spec.role == "recursive":
        await asyncio.gather(_health(answers, client, timeout), _metrics(answers, session, timeout))
    else:
        secret = secrets.get(spec.mirror_of or spec.name)
        await asyncio.gather(_health(answers, client, timeout), _status(answers, client, secret, timeout))
    return answers


def unsettled(answers: Mapping[str, Answers]) -> list[tuple[str, str]]:
    """The (mirror, primary) pairs that both answered with digests but not at one sequence number,
    or at one sequence number with different digests: worth reading again."""
    pairs = []
    for name, mirror in answers.items():
        body = mirror.status
        if body is None or body.get("role") != "mirror":
            continue
        primary = answers.get(str(body.get("primaryNode")))
        other = primary.status if primary else None
        if other is None or "digest" not in body or "digest" not in other:
            continue
        if body.get("appliedSeq") != other.get("lastSeq") or body["digest"] != other["digest"]:
            pairs.append((name, str(body["primaryNode"])))
    return pairs


async def gather(
    topology: Topology, secrets: Mapping[str, str], *, cafile: str | None, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Answers]:
    """Every node's answers by name, asked concurrently; pairs caught mid-write are asked again."""
    async with node_session(cafile) as session:
        nodes = list(topology.nodes.values())
        found = await asyncio.gather(*(_ask(spec, session, secrets, timeout) for spec in nodes))
        answers = {a.spec.name: a for a in found}
        client = HandleClient(session)
        for _ in range(AGREE_ROUNDS - 1):
            pairs = unsettled(answers)
            if not pairs:
                break
            await asyncio.sleep(AGREE_PAUSE)
            again = {name for pair in pairs for name in pair}
            for name in again:
                answers[name].errors.pop("status", None)
            await asyncio.gather(
                *(
                    _status(answers[name], client, secrets.get(answers[name].spec.mirror_of or name), timeout)
                    for name in again
                )
            )
        return answers
