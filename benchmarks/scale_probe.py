"""A fixed-rate probe: one GET every interval on its own keep-alive connection, timed from when it was due.

``python -m benchmarks.scale_probe URL [--interval-ms 10]`` prints ``READY`` once its first request
was answered, then probes until SIGTERM and prints one JSON line of figures. The scale benchmark runs
it as its own process while it fills the recursive node's cache, so the probe's timing never waits
for the filler's Python (one GIL, one event loop) and only the node's own stalls show.

Each request is timed from the moment it was *due* (start + n × interval), not from when it was
sent: when the node stalls for 300 ms just before a request is due, that request counts 300 ms
though it was sent on time, or late behind an earlier slow one, so a stall is not under-counted the
way a closed-loop client under-counts it (coordinated omission, ``benchmarks/tools.py``). The slots
that passed while one request was out are skipped (``skipped_slots``), not sent in a burst: the one
request already counted the wait, and on one connection a backlog would only grow whenever answers
take longer than the interval, timing the queue of this probe instead of the node.

``--realtime`` runs the probe at real-time priority (``SCHED_FIFO``, when permitted: root or
``CAP_SYS_NICE``). On a 2-CPU machine shared with the node, its upstream and the fill, an ordinary
probe process also waits for a CPU, up to tens of milliseconds, and counts that wait as the node's;
a real-time one is run the moment its answer arrives, so what it counts is the node's. The figures
say which it ran at (``priority``).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import uvloop

from benchmarks.rawhttp import HttpError, connect
from benchmarks.tools import summarize

__all__ = ["main", "probe"]

READY = "READY"
# Real-time, the lowest priorities but one: above every ordinary process, below the kernel's own
# real-time threads. The probe sleeps between requests, and the kernel keeps 5% of each second for
# other processes whatever real-time ones do (sched_rt_runtime_us).
REALTIME_PRIORITY = 10
REQUEST_TIMEOUT = 10.0  # seconds: far past any pause worth reporting, short of hanging the benchmark
WORST_KEPT = 100  # the slowest requests reported with their times, to line up with other accounts


async def probe(url: str, interval: float, stop: asyncio.Event) -> dict[str, Any]:
    """Probe ``url`` every ``interval`` seconds until ``stop`` is set; the figures in milliseconds."""
    latencies: list[float] = []  # from when each request was due
    service: list[float] = []  # from when it was sent
    errors: list[str] = []
    worst: list[tuple[float, float, float]] = []  # a min-heap of (latency, due, sent): the slowest
    max_gap = 0.0
    path = urlsplit(url).path
    connection = await connect(url)
    try:
        # The first request opens the connection; the parent starts its load only after READY.
        status, _ = await connection.get(path, timeout=REQUEST_TIMEOUT)
        if status != 200:
            raise RuntimeError(f"the probe's identifier answers HTTP {status} at {url}")
        print(READY, flush=True)
        start = last_done = time.perf_counter()
        number = skipped = 0
        while not stop.is_set():
            due = start + number * interval
            now = time.perf_counter()
            if now - due > interval:  # slots passed during the last request: it already counted them
                behind = int((now - due) / interval)
                number, skipped, due = number + behind, skipped + behind, due + behind * interval
            number += 1
            wait = due - now
            if wait > 0:
                await asyncio.sleep(wait)  # at most one interval: SIGTERM is seen within one
                if stop.is_set():
                    break
            sent = time.perf_counter()
            if not connection.open:
                connection = await connect(url)
            try:
                status, _ = await connection.get(path, timeout=REQUEST_TIMEOUT)
            except (HttpError, OSError) as exc:
                status, reason = 0, f"{type(exc).__name__}: {exc}"
            else:
                reason = f"HTTP {status}"
            done = time.perf_counter()
            latencies.append((done - due) * 1000)
            if len(worst) < WORST_KEPT:
                heapq.heappush(worst, (done - due, due, sent))
            else:
                heapq.heappushpop(worst, (done - due, due, sent))
            service.append((done - sent) * 1000)
            max_gap = max(max_gap, done - last_done)
            last_done = done
            if status != 200:
                errors.append(reason)
    finally:
        connection.close()
    return {
        "interval_ms": interval * 1000,
        "requests": len(latencies),
        "skipped_slots": skipped,
        "latency_from_due_ms": {k: round(v, 3) for k, v in summarize(latencies).items()},
        "service_ms": {k: round(v, 3) for k, v in summarize(service).items()},
        "max_gap_ms": round(max_gap * 1000, 3),
        # The slowest requests, slowest first: when each was due (CLOCK_MONOTONIC seconds, the clock
        # of ``time.monotonic`` in every process of this machine), how late it was sent, its latency.
        "worst_requests": [
            {"due": round(due, 4), "sent_late_ms": round((sent - due) * 1000, 3), "ms": round(latency * 1000, 3)}
            for latency, due, sent in sorted(worst, reverse=True)
        ],
        "errors": len(errors),
        "first_errors": errors[:5],
    }


async def _run(url: str, interval: float) -> dict[str, Any]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return await probe(url, interval, stop)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale_probe", description=__doc__.splitlines()[0])
    p.add_argument("url", help="the full URL to GET, e.g. http://127.0.0.1:8000/api/handles/88.118.8/X")
    p.add_argument("--interval-ms", type=float, default=10.0, help="milliseconds between requests")
    p.add_argument(
        "--realtime", action="store_true", help=f"run at SCHED_FIFO priority {REALTIME_PRIORITY} when permitted"
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    priority = _realtime() if args.realtime else "normal"
    result = uvloop.run(_run(args.url, args.interval_ms / 1000))
    print(json.dumps({**result, "priority": priority}), flush=True)
    return 0


def _realtime() -> str:
    """Make this process real-time (``SCHED_FIFO``) so that it never waits for a CPU behind the
    processes it measures; what it runs at, said in words."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (PermissionError, OSError, AttributeError) as exc:
        return f"normal (real-time not permitted: {exc})"
    return f"SCHED_FIFO {REALTIME_PRIORITY}"


if __name__ == "__main__":
    raise SystemExit(main())
