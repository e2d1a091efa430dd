"""One worker of a recursive node run as several processes: the node-wide ``/metrics`` and ``/healthz``.

With ``workers = N`` the node's processes share one port (SO_REUSEPORT: the kernel spreads the
connections over them, ``nodes.running.workers`` starts them), so whichever worker a scrape or a
health check reaches must speak for all of them. Each worker also listens on a Unix socket in a
directory only the node's user may enter, and answers one line there, ``metrics`` or ``health``,
with its own figures as JSON; the worker that was asked adds its own and merges them
(``nodes.shared.metrics.merge_workers``, ``node_health``). None of this runs on the request path:
a cache hit costs what it costs in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from nodes.shared.http_api import Handler, respond
from nodes.shared.metrics import (
    NodeMetrics,
    families_from_wire,
    families_to_wire,
    gauge,
    merge_workers,
    render_families,
)

__all__ = [
    "ASK_TIMEOUT",
    "Reply",
    "WorkerSlot",
    "ask_workers",
    "health_answer",
    "metrics_answer",
    "node_health",
    "node_healthz",
    "node_metrics",
    "siblings_ctx",
]

ASK_TIMEOUT = 1.0
"""Seconds a worker is given to answer another. One that cannot (stopped, restarting, its event
loop blocked) is reported as not answering rather than holding the scrape: Prometheus gives a whole
scrape 10 s by default, and a health check wants its answer sooner still."""

MAX_REPLY_BYTES = 4 * 1024 * 1024
"""A worker's metrics are ~30 KB (``MAX_LABELLED_SERVERS`` bounds their label set); anything near
this is not a worker's answer."""


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which worker this process is (``index`` of ``count``) and the directory of their sockets."""

    index: int
    count: int
    directory: Path

    def socket_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"


@dataclass(frozen=True, slots=True)
class Reply:
    """What worker ``worker`` answered (``data``), or why it did not (``error``)."""

    worker: int
    data: Any = None
    error: str = ""


def siblings_ctx(
    slot: WorkerSlot, answers: Mapping[str, Callable[[], Any]]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The worker's Unix socket, answering each question of ``answers`` with its function's result
    as JSON, for as long as the application runs. Added after the driver's context, so it opens
    once there is something to report and closes before the driver does."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            question = (await asyncio.wait_for(reader.readline(), ASK_TIMEOUT)).strip().decode("ascii", "replace")
            reply = answers.get(question)
            if reply is not None:
                writer.write(json.dumps(reply()).encode())
                await writer.drain()
        except (OSError, TimeoutError):
            pass  # the asking worker gave up or went away: it reports us as not answering
        finally:
            writer.close()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        path = slot.socket_path(slot.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this worker's predecessor, killed before it could remove it
        server = await asyncio.start_unix_server(answer, str(path))
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    return ctx


async def _ask(path: Path, question: str) -> Any:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(question.encode("ascii") + b"\n")
        await writer.drain()
        data = bytearray()
        while chunk := await reader.read(65536):
            data += chunk
            if len(data) > MAX_REPLY_BYTES:
                raise ValueError(f"answer over {MAX_REPLY_BYTES} bytes")
    finally:
        writer.close()
    if not data:
        raise ValueError("empty answer")
    return json.loads(data)


async def ask_workers(slot: WorkerSlot, question: str, own: Any, timeout: float = ASK_TIMEOUT) -> list[Reply]:
    """Every worker's answer to ``question``, in worker order: ``own`` for this one, the others asked
    at once through their sockets, each within ``timeout``."""

    async def one(index: int) -> Reply:
        if index == slot.index:
            return Reply(index, own)
        try:
            return Reply(index, await asyncio.wait_for(_ask(slot.socket_path(index), question), timeout))
        except TimeoutError:
            return Reply(index, error=f"no answer within {timeout:g} s")
        except (FileNotFoundError, ConnectionRefusedError):
            return Reply(index, error="not running")
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            return Reply(index, error=f"unusable answer: {exc}")

    return list(await asyncio.gather(*(one(i) for i in range(slot.count))))


def node_metrics(slot: WorkerSlot, metrics: NodeMetrics) -> Handler:
    """``GET /metrics`` for the whole node: every answering worker's families merged, plus how many
    workers there are and how many answered (a restarted worker's counters start again at zero, so
    the node's sums drop as after a restart of a single process)."""

    async def handler(request: web.Request) -> web.Response:
        replies = await ask_workers(slot, "metrics", None)
        by_worker: list[tuple[int, Sequence[Metric]]] = []
        for reply in replies:
            if reply.worker == slot.index:
                by_worker.append((reply.worker, metrics.families()))
            elif reply.data is not None:
                with contextlib.suppress(ValueError, TypeError):
                    by_worker.append((reply.worker, families_from_wire(reply.data)))
        merged = merge_workers(by_worker)
        merged.append(gauge("idres_workers", "Worker processes the node runs", slot.count))
        merged.append(gauge("idres_workers_answering", "Workers whose figures this scrape includes", len(by_worker)))
        return web.Response(body=render_families(merged), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler


def metrics_answer(metrics: NodeMetrics) -> Callable[[], Any]:
    """What a worker sends for ``metrics``: its families now, its hot path's tallies flushed first."""
    return lambda: families_to_wire(metrics.families())


def health_answer(health: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """What a worker sends for ``health``: its own ``/healthz`` body and its process id."""
    return lambda: {**health(), "pid": os.getpid()}


def node_health(replies: Sequence[Reply], answered_by: int) -> dict[str, Any]:
    """The node's ``/healthz`` body from its workers' replies: the answering worker's body, with the
    cache entries summed, ``down`` the servers any worker marks down, how many workers answered
    (``status`` is ``degraded`` while any does not) and what each said (``perWorker``)."""
    replies = [
        r if r.data is None or isinstance(r.data, dict) else Reply(r.worker, error="unusable answer") for r in replies
    ]
    own = next(r.data for r in replies if r.worker == answered_by)
    alive = [r for r in replies if r.data is not None]
    per_worker: list[dict[str, Any]] = []
    for reply in replies:
        if reply.data is None:
            per_worker.append({"worker": reply.worker, "alive": False, "error": reply.error})
        else:
            data = reply.data
            per_worker.append(
                {
                    "worker": reply.worker,
                    "alive": True,
                    "pid": data.get("pid"),
                    "cacheEntries": data.get("cacheEntries", 0),
                    "down": data.get("down", []),
                }
            )
    body = {k: v for k, v in own.items() if k != "pid"}
    body["status"] = "ok" if len(alive) == len(replies) else "degraded"
    body["cacheEntries"] = sum(int(r.data.get("cacheEntries", 0)) for r in alive)
    body["down"] = sorted({url for r in alive for url in r.data.get("down", [])})
    body.update({"workers": len(replies), "alive": len(alive), "answeredBy": answered_by, "perWorker": per_worker})
    return body


def node_healthz(slot: WorkerSlot, health: Callable[[], dict[str, Any]]) -> Handler:
    """``GET /healthz`` for the whole node (``health``: this worker's answer, ``health_answer``).
    Always 200 while this worker serves: the port answers, and a load balancer must not take the
    node out while one worker restarts."""

    async def handler(request: web.Request) -> web.Response:
        replies = await ask_workers(slot, "health", health())
        return respond(request, 200, node_health(replies, slot.index))

    return handler
