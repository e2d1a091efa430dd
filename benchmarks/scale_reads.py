"""The scale benchmark's reads of one large enterprise node: GET throughput, listing pages, the digest, and
GET latency while listings or digests run beside the GETs.

Every request here is plain HTTP to the node, as an operator or a client would send it. A figure
whose interface the node does not have (an older node: HTTP 404, or an answer without the fields
asked for) is reported as not available with the reason, not as a failure of the benchmark.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.resolve import _median_run
from benchmarks.tools import WrkResult, load_cpus, pin, run_wrk, summarize

__all__ = [
    "DIGEST",
    "STATUS",
    "NotAvailable",
    "Target",
    "digest_times",
    "expect",
    "first_pass",
    "get_during",
    "get_throughput",
    "listing_targets",
    "listing_times",
    "settle",
    "timed",
]

Target = tuple[str, dict[str, str]]  # a path on the node and its query


class NotAvailable(Exception):
    """The node has no such interface (yet): the figure is reported as not available, with this reason."""


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in figures.items()}


async def timed(
    session: aiohttp.ClientSession, url: str, target: Target, auth: str | None = None
) -> tuple[float, int, dict[str, Any]]:
    """Milliseconds to GET ``target`` on ``url`` and read the whole answer; the status and the JSON body."""
    path, query = target
    headers = {"Authorization": auth} if auth else {}
    started = time.perf_counter()
    async with session.get(url + path, params=query, headers=headers) as resp:
        raw = await resp.read()
    ms = (time.perf_counter() - started) * 1000
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    return ms, resp.status, body if isinstance(body, dict) else {}


def expect(status: int, body: dict[str, Any], target: Target, *fields: str) -> None:
    """Raise NotAvailable when the node has no such endpoint or its answer lacks ``fields``; RuntimeError
    when it refused."""
    where = f"GET {target[0]}?{'&'.join(f'{k}={v}' for k, v in target[1].items())}"
    if status in (404, 405) or (status == 200 and any(f not in body for f in fields)):
        missing = [f for f in fields if f not in body]
        raise NotAvailable(f"{where}: HTTP {status}" + (f", no {', '.join(missing)} in the answer" if missing else ""))
    if status != 200:
        raise RuntimeError(f"{where}: HTTP {status} {body.get('message', '')}")


# -- GET throughput ---------------------------------------------------------------------------------


def settle(pid: int, *, idle: float = 0.05, timeout: float = 120.0) -> float:
    """Flush the page cache's dirty pages (``sync``) and wait until process ``pid`` uses under ``idle``
    of a CPU over a second (a load's WAL checkpoints and writeback are over): seconds waited."""
    started = time.perf_counter()
    os.sync()
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    while time.perf_counter() - started < timeout:
        before = cpu_seconds()
        time.sleep(1.0)
        if cpu_seconds() - before < idle:
            break
    return round(time.perf_counter() - started, 2)


def first_pass(url: str, paths: Path, count: int, pid: int, *, connections: int, chunk: float = 5.0) -> dict[str, Any]:
    """Ask for every one of the ``count`` identifiers in ``paths`` once, as runs of wrk of ``chunk``
    seconds each starting where the last stopped (one wrk thread walks the file in order): the rate of
    that first pass, each run's, and how long it took. Whatever of the sample the load left out of
    the OS page cache is read from the disk here, so this is the node's rate on a cold sample; the
    runs after it measure the same sample in memory (``get_throughput``)."""
    server_cpu, load_cpu = load_cpus()
    runs: list[int] = []
    seconds = 0.0
    asked = 0
    pin(pid, server_cpu)
    try:
        while asked < count:
            run = run_wrk(url, paths, duration=chunk, connections=connections, cpus=load_cpu, offset=asked)
            if run.requests == 0:
                raise RuntimeError(f"no GET answered in {chunk:g} s at {url}: {run.errors}")
            asked += run.requests
            seconds += run.seconds
            runs.append(round(run.rps))
    finally:
        pin(pid, None)
    return {"identifiers": count, "seconds": round(seconds, 2), "rps": round(asked / seconds), "rps_runs": runs}


def get_throughput(
    url: str, paths: Path, pid: int, *, rounds: int, duration: float, connections: int, warmup: int = 0
) -> dict[str, Any]:
    """wrk over ``paths`` against the node at ``url`` (pinned to one CPU, wrk to the other): the
    median of ``rounds`` runs, after ``warmup`` seconds of the same load that are not counted (the
    node's connections, read caches and allocator reach their steady state)."""
    server_cpu, load_cpu = load_cpus()
    runs: list[WrkResult] = []
    if warmup > 0:
        pin(pid, server_cpu)
        try:
            run_wrk(url, paths, duration=warmup, connections=connections, cpus=load_cpu)
        finally:
            pin(pid, None)
    for _ in range(rounds):
        pin(pid, server_cpu)
        try:
            runs.append(run_wrk(url, paths, duration=duration, connections=connections, cpus=load_cpu))
        finally:
            pin(pid, None)
    return _median_run(runs)


# -- listing ----------------------------------------------------------------------------------------


def _page(prefix: str, size: int, *, page: int | None = None, after: str | None = None) -> Target:
    query = {"prefix": prefix, "pageSize": str(size)}
    if page is not None:
        query["page"] = str(page)
    if after is not None:
        query["after"] = after
    return "/api/handles", query


async def listing_targets(url: str, auth: str, prefix: str, size: int) -> dict[str, Any]:
    """The listing requests to time: the first page, a deep page by number and the page after it by
    cursor (the ``next`` of the deep page), and the count alone; with the prefix's totalCount."""
    async with aiohttp.ClientSession() as session:
        first = _page(prefix, size, page=0)
        _, status, body = await timed(session, url, first, auth)
        expect(status, body, first, "handles", "totalCount")
        total = int(body["totalCount"])
        # Two pages from the end: the page after it by cursor is still a full page.
        deep_page = max(0, (total - 1) // size - 2)
        deep = _page(prefix, size, page=deep_page)
        _, status, body = await timed(session, url, deep, auth)
        expect(status, body, deep, "handles")
        targets: dict[str, Any] = {"total": total, "deep_page": deep_page, "first_page": first, "deep_by_page": deep}
        targets["count_only"] = _page(prefix, 0)
        cursor = body.get("next")
        targets["deep_by_cursor"] = _page(prefix, size, after=cursor) if isinstance(cursor, str) else None
        return targets


async def listing_times(url: str, auth: str, targets: dict[str, Any], samples: int) -> dict[str, Any]:
    """Each listing request ``samples`` times in a row, one at a time: milliseconds (and handles per page)."""
    out: dict[str, Any] = {"total": targets["total"], "deep_page": targets["deep_page"]}
    async with aiohttp.ClientSession() as session:
        for name in ("first_page", "deep_by_page", "deep_by_cursor", "count_only"):
            target = targets[name]
            if target is None:
                out[name] = {"available": False, "reason": "the deep page's answer has no next (no cursor)"}
                continue
            times, handles = [], 0
            for _ in range(samples):
                ms, status, body = await timed(session, url, target, auth)
                expect(status, body, target, "totalCount")
                times.append(ms)
                handles = len(body.get("handles", []))
            out[name] = {"ms": _rounded(summarize(times)), "handles": handles, "query": target[1]}
    return out


# -- digest -----------------------------------------------------------------------------------------

STATUS: Target = ("/api/replication/status", {})
DIGEST: Target = ("/api/replication/digest", {})


async def digest_times(url: str, auth: str, samples: int) -> dict[str, Any]:
    """The status with its digest and the bucketed digest, as the operator, ``samples`` times each; and
    three digests asked at once (computed once however many ask)."""
    out: dict[str, Any] = {}
    digest: Any = None
    async with aiohttp.ClientSession() as session:
        asked = (("status", STATUS, ("digest", "records")), ("digest", DIGEST, ("digest", "buckets")))
        for name, target, fields in asked:
            times = []
            for _ in range(samples):
                ms, status, body = await timed(session, url, target, auth)
                expect(status, body, target, *fields)
                times.append(ms)
            out[name] = {"ms": _rounded(summarize(times)), "records": body.get("records")}
            if name == "digest":
                out[name]["buckets"] = len(body["buckets"])
                digest = body["digest"]
        started = time.perf_counter()
        answers = await asyncio.gather(*(timed(session, url, DIGEST, auth) for _ in range(3)))
        out["three_at_once_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if {body.get("digest") for _, _, body in answers} != {digest}:
            raise RuntimeError("three digests asked at once differ from the one before, with no write meanwhile")
    return out


# -- GETs while something else runs -----------------------------------------------------------------


async def get_during(
    url: str,
    paths: Path,
    pid: int,
    auth: str,
    background: Sequence[Target],
    *,
    duration: float,
    connections: int,
) -> dict[str, Any]:
    """One wrk run of GETs over ``paths`` (node pinned to one CPU, wrk to the other) while this process
    sends the ``background`` requests in turn, one at a time, for as long as wrk runs."""
    server_cpu, load_cpu = load_cpus()
    times: list[float] = []
    failures: list[str] = []
    async with aiohttp.ClientSession() as session:
        pin(pid, server_cpu)
        try:
            wrk = asyncio.create_task(
                asyncio.to_thread(run_wrk, url, paths, duration=duration, connections=connections, cpus=load_cpu)
            )
            number = 0
            while not wrk.done():
                target = background[number % len(background)]
                number += 1
                ms, status, body = await timed(session, url, target, auth)
                if status != 200:
                    failures.append(f"{target[1]}: HTTP {status} {body.get('message', '')}")
                times.append(ms)
            result = await wrk
        finally:
            pin(pid, None)
    return {
        "get": _median_run([result]),
        "background": {"requests": len(times), "ms": _rounded(summarize(times)), "failed": len(failures)},
        "background_failures": failures[:5],
    }
