"""A scripted upstream for the mirror's puller (``nodes.replication.follower``): it serves the snapshot
streams and change-log pages a test gives it, on 127.0.0.1, and a puller follows it over a store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession, web

from nodes.authoritative.authority import Authority
from nodes.replication.follower import Mirror, MirrorState
from resolver.codec import pack_values
from resolver.config import DEFAULT_LIMITS
from resolver.storage import Storage
from resolver.values import HandleValue
from tests.conftest import free_port
from tests.nodes.replication.pairs import two_nodes

__all__ = ["BLOB", "VALUES", "Following", "Upstream", "applied", "done", "following", "head", "log_of", "put"]

VALUES = (HandleValue(1, "URL", "string", "https://example.cn/"),)
BLOB = pack_values(VALUES)


@dataclass
class Upstream:
    """What the scripted upstream answers: each snapshot request takes the next stream of ``snapshots``;
    ``changes(after)`` gives the changes page (default: an empty log at ``last_seq``); a log trimmed
    below ``first_seq`` answers 410 to a mirror asking for less, as a primary does."""

    snapshots: list[list[dict[str, Any]]] = field(default_factory=list)
    changes: Callable[[int], dict[str, Any]] | None = None
    snapshot_status: int = 200
    last_seq: int = 0
    first_seq: int = 1
    asked: list[dict[str, str]] = field(default_factory=list)  # the snapshot requests' parameters
    polled: list[int] = field(default_factory=list)  # each changes request's `after`

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(dict(request.query))
        if self.snapshot_status != 200:
            return web.json_response({"responseCode": 402, "message": "no"}, status=self.snapshot_status)
        response = web.StreamResponse(headers={"Content-Type": "application/msgpack"})
        await response.prepare(request)
        for item in self.snapshots.pop(0) if self.snapshots else []:
            await response.write(msgpack.packb(item))
        return response

    async def log(self, request: web.Request) -> web.Response:
        after = int(request.query["after"])
        self.polled.append(after)
        if after < self.first_seq - 1:
            body = {"responseCode": 2, "message": "the change log was trimmed", "firstSeq": self.first_seq}
            return web.Response(status=410, body=msgpack.packb(body), content_type="application/msgpack")
        if self.changes is not None:
            body = self.changes(after)
        else:
            body = {"responseCode": 1, "lastSeq": self.last_seq, "changes": []}
        if not body.get("changes"):
            await asyncio.sleep(0.05)  # a short long-poll
        return web.Response(body=msgpack.packb(body), content_type="application/msgpack")


@dataclass
class Following:
    """A running puller: its authority (over the store it copies into) and the state it reports."""

    authority: Authority
    state: MirrorState
    epochs: list[int]  # every epoch the upstream answered with, as check_epoch saw them

    @property
    def store(self) -> Storage:
        return self.authority.store

    async def keys(self) -> list[str]:
        return await self.store.list_keys("88")

    async def errs(self, words: str) -> bool:
        return words in (self.state.last_error or "")


@asynccontextmanager
async def following(
    upstream: Upstream,
    store: Storage,
    check_epoch: Callable[[int], None] | None = None,
) -> AsyncIterator[Following]:
    """A mirror's puller following ``upstream``, served on a free port, until the block ends."""
    app = web.Application()
    app.router.add_get("/api/replication/snapshot", upstream.snapshot)
    app.router.add_get("/api/replication/changes", upstream.log)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    spec = two_nodes().node("mirror")
    authority = Authority(spec, store, DEFAULT_LIMITS, read_only=True)
    state = MirrorState(f"http://127.0.0.1:{port}", "primary")
    epochs: list[int] = []

    async def check(epoch: int) -> None:
        epochs.append(epoch)
        if check_epoch is not None:
            check_epoch(epoch)

    async with ClientSession() as session:
        puller = Mirror(authority, state, session, "Basic x", check_epoch=check, epoch=lambda: 0)
        task = asyncio.create_task(puller.run())
        try:
            yield Following(authority, state, epochs)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await runner.cleanup()


def head(last_seq: int, **extra: Any) -> dict[str, Any]:
    return {"responseCode": 1, "lastSeq": last_seq, **extra}


def put(key: str) -> dict[str, Any]:
    return {"key": key, "values": BLOB}


def done(count: int) -> dict[str, Any]:
    return {"responseCode": 1, "done": True, "count": count}


def log_of(*changes: dict[str, Any], epoch: int = 0) -> Callable[[int], dict[str, Any]]:
    """A change log holding ``changes`` at ``epoch``: each page is the changes after ``after``."""
    last = max((c["seq"] for c in changes), default=0)
    return lambda after: {
        "responseCode": 1,
        "lastSeq": last,
        "epoch": epoch,
        "changes": [c for c in changes if c["seq"] > after],
    }


async def applied(mirror: Following, seq: str) -> bool:
    return await mirror.store.get_meta("applied_seq") == seq
