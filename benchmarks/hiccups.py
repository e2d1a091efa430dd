"""The machine's own pauses, measured apart from any service: a hiccup meter (after Azul's jHiccup).

``python -m benchmarks.hiccups CPU [--interval-ms 1]`` pins itself to CPU ``CPU``, runs at
real-time priority when permitted, and sleeps ``interval`` at a time, over and over; each wake-up
later than ``THRESHOLD`` past its due time is a moment when that CPU ran nothing of this machine's
in time: the hypervisor running something else on the virtual CPU (steal), or the kernel's own
work. It prints ``READY``, then, at SIGTERM, one JSON line: each hiccup as ``[start, ms]`` with
``start`` in CLOCK_MONOTONIC seconds (``time.monotonic`` in every process of this machine).

A real-time process that sleeps is run the moment it is due on a CPU the machine really has, ahead
of every ordinary process: its lateness is the machine's, not any service's. The scale benchmark
runs one meter per CPU while it probes the recursive node, so that each slow probe request can be
set beside how long the machine itself stood still meanwhile (``stood_still``). The meter costs a
wake-up per interval, a few microseconds, about half a percent of a CPU at 1 ms.

``/proc/stat``'s steal time says the same thing less precisely: it counts in 10 ms ticks, summed
over a sampling interval (``benchmarks.schedstat``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Any

__all__ = ["main", "stood_still"]

READY = "READY"
# Above the probe's real-time priority (``benchmarks.scale_probe``): on the probe's CPU the meter
# must not wait for the probe either.
PRIORITY = 20
THRESHOLD = 0.002  # seconds late: below it, ordinary timer and wake-up jitter
KEPT = 100_000  # hiccups kept: far more than any run has; past it only the figures are counted

Hiccup = tuple[float, float]  # (start, seconds)


def meter(interval: float, stopped: list[bool]) -> dict[str, Any]:
    """Sleep ``interval`` at a time until ``stopped[0]``; the hiccups and their figures."""
    hiccups: list[list[float]] = []
    count, total, worst = 0, 0.0, 0.0
    started = due = time.monotonic()
    while not stopped[0]:
        due += interval
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        woke = time.monotonic()
        late = woke - due
        if late > THRESHOLD:
            count, total, worst = count + 1, total + late, max(worst, late)
            if len(hiccups) < KEPT:
                hiccups.append([round(due, 6), round(late * 1000, 3)])
            due = woke  # the next interval counts from now: one stand-still is one hiccup
    return {
        "seconds": round(time.monotonic() - started, 1),
        "interval_ms": interval * 1000,
        "threshold_ms": THRESHOLD * 1000,
        "count": count,
        "total_ms": round(total * 1000, 1),
        "max_ms": round(worst * 1000, 3),
        "hiccups": hiccups,
    }


def stood_still(hiccups: Iterable[Hiccup], start: float, end: float) -> float:
    """Seconds within ``start``..``end`` when the machine stood still: the union of the hiccups
    (``(start, seconds)``, of any CPU) that overlap it, each clipped to it."""
    spans = sorted((max(s, start), min(s + length, end)) for s, length in hiccups if s < end and s + length > start)
    total, reached = 0.0, start
    for begin, finish in spans:
        begin = max(begin, reached)
        if finish > begin:
            total += finish - begin
            reached = finish
    return total


def _realtime() -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
    except (PermissionError, OSError, AttributeError) as exc:
        return f"normal (real-time not permitted: {exc})"
    return f"SCHED_FIFO {PRIORITY}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hiccups", description=__doc__.splitlines()[0])
    p.add_argument("cpu", type=int, help="the CPU to measure (the meter pins itself to it)")
    p.add_argument("--interval-ms", type=float, default=1.0, help="milliseconds slept at a time")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    os.sched_setaffinity(0, {args.cpu})
    priority = _realtime()
    stopped = [False]

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped[0] = True

    signal.signal(signal.SIGTERM, stop)
    print(READY, flush=True)
    figures = meter(args.interval_ms / 1000, stopped)
    print(json.dumps({"cpu": args.cpu, "priority": priority, **figures}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
