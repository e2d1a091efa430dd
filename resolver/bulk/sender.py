"""Sending bulk-registration batches to ``POST /api/batch``: retries, answers, and "already exists" checks.

A batch that fails as a whole (connection lost, timeout, HTTP 5xx, 408, 429) is sent again with
exponential backoff and jitter. A batch that timed out may have been committed all the same, so a
``create`` answered 101 (already exists) in a batch sent more than once, or anywhere in a resumed run,
is checked against the stored record (``GET /api/handles/...``): when the record is what was sent it
counts as applied ("already present"); only a different record is a rejection. Whole-batch errors that
retrying cannot fix (bad credentials, a mirror, a refused body) raise FatalError.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack

from resolver.auth import is_hashed, verify_secret
from resolver.backoff import backoff_delay
from resolver.bulk.reader import Batch, Rejected
from resolver.client import HandleClient, basic_auth, describe_failure
from resolver.codec import MSGPACK
from resolver.errors import FatalError, HandleError, UpstreamError
from resolver.values import HandleValue, value_from_wire

__all__ = ["BatchSender", "FatalError", "Outcome", "RetryPolicy", "decode_reply", "same_values"]

VERIFY_CONCURRENCY = 16  # GETs in flight while checking "already exists" answers
_RETRY_STATUSES = frozenset({408, 429})
MIRROR = 7  # responseCode of a write sent to a mirror


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 5  # with the default backoff: about 30 s of outage is ridden out
    backoff: float = 1.0  # first delay in seconds, doubled each time (with jitter)
    max_backoff: float = 30.0
    timeout: float = 120.0  # per batch: 10,000 operations on a busy SQLite node can take seconds

    def delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (from 1), with jitter so that senders do not retry in step."""
        return backoff_delay(attempt, first=self.backoff, cap=self.max_backoff, jitter=0.5)


@dataclass(slots=True)
class Outcome:
    """What became of a batch: small, so that outcomes waiting for an earlier batch cost no memory."""

    number: int
    end_line: int
    records: int
    applied: int
    verified: int  # "already exists", and the stored record is what was sent
    rejected: list[Rejected]  # in line order, including those refused while reading

    @classmethod
    def of(cls, batch: Batch, applied: int, verified: int, rejected: list[Rejected]) -> Outcome:
        return cls(batch.number, batch.end_line, batch.records, applied, verified, rejected)


def same_values(sent: list[dict[str, Any]], stored: list[dict[str, Any]]) -> bool:
    """Whether a stored record is the one that was sent: same indexes, types, data, TTLs and permissions
    once defaults are filled in; timestamps ignored; a secret key checked against its stored hash."""
    try:
        mine, theirs = _by_index(sent), _by_index(stored)
    except HandleError:
        return False
    if mine.keys() != theirs.keys():
        return False
    for index, ours in mine.items():
        other = theirs[index]
        if ours.type.upper() == "HS_SECKEY" and is_hashed(other.value) and not is_hashed(ours.value):
            if ours.type != other.type or not verify_secret(str(ours.value), other.value):
                return False
        elif not ours.same_content(other):
            return False
    return True


def _by_index(values: list[dict[str, Any]]) -> dict[int, HandleValue]:
    return {v.index: v for v in (value_from_wire(raw, position=i, now=0) for i, raw in enumerate(values, 1))}


def decode_reply(raw: bytes, content_type: str, expected: int) -> dict[str, Any]:
    """A batch answer. When all ``expected`` operations were applied, the per-operation results are
    skipped unread (``results`` is then None): decoding them would cost the client more than the rest."""
    if content_type != MSGPACK:
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {"responseCode": 2, "message": raw[:200].decode("utf-8", "replace")}
        return parsed if isinstance(parsed, dict) else {"responseCode": 2, "message": "unexpected answer"}
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(raw), 1024))
    unpacker.feed(raw)
    out: dict[str, Any] = {}
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "results" and out.get("failed") == 0 and out.get("applied") == expected:
                unpacker.skip()
                out[key] = None
            else:
                out[key] = unpacker.unpack()
    except Exception:  # msgpack raises several unrelated types for a malformed body
        return {"responseCode": 2, "message": "the answer is not valid msgpack"}
    return out


class BatchSender:
    """Sends batches to one server with one identity and turns the answers into outcomes."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        server: str,
        identity: str,
        secret: str,
        *,
        op: str,
        policy: RetryPolicy,
        verify_all: bool = False,
        note: Callable[[str], None] = lambda message: None,
    ) -> None:
        self._session = session
        self._server = server
        self._identity = identity
        self._url = server.rstrip("/") + "/api/batch"
        self._auth = basic_auth(identity, secret)
        self._headers = {"Authorization": self._auth, "Content-Type": MSGPACK, "Accept": MSGPACK}
        self._op = op
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=policy.timeout)
        self._client = HandleClient(session, timeout=min(policy.timeout, 30.0))
        self._gets = asyncio.Semaphore(VERIFY_CONCURRENCY)
        self._verify_all = verify_all  # a resumed run: any row may have landed before the interruption
        self._note = note

    async def _wait_to_retry(self, attempt: int, what: str, problem: str) -> None:
        retries = self._policy.retries
        if attempt > retries:
            raise FatalError(f"{what} failed {attempt} times (last: {problem}); is {self._server} up?")
        delay = self._policy.delay(attempt)
        self._note(f"{what}: {problem}; retrying in {delay:.1f} s ({attempt}/{retries})")
        await asyncio.sleep(delay)

    async def send(self, batch: Batch) -> Outcome:
        if batch.count == 0:
            return Outcome.of(batch, 0, 0, list(batch.rejected))
        what = f"the batch from line {batch.first_line}"
        attempt = 0
        while True:
            try:
                async with self._session.post(
                    self._url, data=batch.body, headers=self._headers, timeout=self._timeout
                ) as resp:
                    reply = decode_reply(await resp.read(), resp.content_type, batch.count)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                _, problem = describe_failure(exc)
            else:
                verdict = self._problem(status, reply)
                if verdict is None:
                    return await self._outcome(batch, reply, retried=attempt > 0)
                problem = verdict
            attempt += 1
            await self._wait_to_retry(attempt, what, problem)

    def _problem(self, status: int, reply: dict[str, Any]) -> str | None:
        """None for an answer with results, else a reason to retry; FatalError when retrying cannot help."""
        code, message = reply.get("responseCode"), reply.get("message", "")
        if status == 200 and "results" in reply:
            return None
        if (status >= 500 and not (status == 503 and code == MIRROR)) or status in _RETRY_STATUSES:
            return f"HTTP {status}, responseCode {code}: {message}".rstrip(": ")
        if status in (401, 403):
            raise FatalError(f"{self._server} refused the credentials of {self._identity}: {message}")
        if status == 503:
            raise FatalError(f"{self._server} is a mirror and refuses writes ({message}): send the file to its primary")
        if status == 413:
            raise FatalError(f"{self._server} refused a batch as too large: use a smaller --batch-size")
        if status in (404, 405):
            raise FatalError(f"{self._url} answered HTTP {status}: this server takes no bulk registration")
        raise FatalError(f"{self._url} answered HTTP {status}, responseCode {code}: {message}")

    async def _outcome(self, batch: Batch, reply: dict[str, Any], *, retried: bool) -> Outcome:
        results = reply["results"]
        if results is None or (reply.get("failed") == 0 and reply.get("applied") == batch.count):
            return Outcome.of(batch, batch.count, 0, list(batch.rejected))
        if not isinstance(results, list) or len(results) != batch.count:
            raise FatalError(f"{self._url} answered a batch of {batch.count} operations with a malformed result list")
        applied = 0
        rejected = list(batch.rejected)
        check: list[tuple[int, str]] = []
        for i, result in enumerate(results):
            code = result.get("responseCode") if isinstance(result, dict) else None
            if code == 1:
                applied += 1
                continue
            message = str(result.get("message", "")) if isinstance(result, dict) else "malformed result"
            if code == 101 and self._op == "create" and (retried or self._verify_all):
                check.append((i, message))
                continue
            line, handle, _ = batch.item(i)
            rejected.append(Rejected(line, handle, code if isinstance(code, int) else 2, message))
        verified = 0
        if check:
            same = await asyncio.gather(*(self._stored_as_sent(batch, i) for i, _ in check))
            for (i, message), ok in zip(check, same, strict=True):
                if ok:
                    verified += 1
                else:
                    line, handle, _ = batch.item(i)
                    rejected.append(Rejected(line, handle, 101, message))
        rejected.sort(key=lambda r: r.line)
        return Outcome.of(batch, applied, verified, rejected)

    async def _stored_as_sent(self, batch: Batch, i: int) -> bool:
        _, handle, values = batch.item(i)
        attempt = 0
        async with self._gets:
            while True:
                try:
                    reply = await self._client.get(self._server, handle, authorization=self._auth)
                except UpstreamError as exc:
                    problem = exc.attempts[-1].reason if exc.attempts else exc.message
                else:
                    if reply.status < 500:
                        stored = reply.body.get("values")
                        return reply.response_code == 1 and isinstance(stored, list) and same_values(values, stored)
                    problem = f"HTTP {reply.status}"
                attempt += 1
                await self._wait_to_retry(attempt, f"checking {handle}", problem)
