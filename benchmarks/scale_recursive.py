"""The scale benchmark's recursive node: its cache filled with N distinct answers while a fixed-rate probe
times its pauses; memory per answer and whether any upstream was marked down meanwhile.

1. One identifier is resolved through the node (the probe's, hot from then on), and the node's
   resident memory (its process and any workers) and ``/metrics`` are read.
2. ``benchmarks.scale_probe`` starts twice, each its own process: one GET of the hot identifier
   every ``interval`` on its own connection, timed from when it was due; one probe runs at
   real-time priority when permitted (the node's figures), the other as an ordinary process. A
   hiccup meter (``benchmarks.hiccups``) runs on each CPU to time when the machine itself stood
   still (the hypervisor's steal), to set beside each of the probe's slowest requests.
3. This process resolves ``answers`` distinct identifiers through the node (``concurrency`` at a
   time), each a cache miss that walks to the enterprise node; ``/metrics`` is read every
   ``METRICS_EVERY`` seconds for upstreams marked down, the node's memory every 100 ms.
4. The probe is stopped; memory and ``/metrics`` are read again. Memory per answer is the growth
   of the node's resident memory over the growth of its cache entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import uvloop

from benchmarks.hiccups import stood_still
from benchmarks.rawhttp import HttpError, connect
from benchmarks.scale_load import PeakRss, tree_rss_kib
from benchmarks.scale_probe import WORST_KEPT
from benchmarks.schedstat import SchedSampler
from benchmarks.tools import parse_prometheus, request_path

__all__ = ["fill_and_probe"]

REQUEST_TIMEOUT = 30.0  # seconds for one fill request: far past any pause worth reporting
METRICS_EVERY = 1.0  # seconds between /metrics reads while filling: a short mark-down still shows
ONE_MILLION = 1_000_000
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _metrics(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url + "/metrics") as resp:
        return parse_prometheus(await resp.text())


def _total(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def _max(samples: Samples, name: str) -> float:
    return max((value for (sample, _), value in samples.items() if sample == name), default=0.0)


def _down(samples: Samples) -> dict[str, float]:
    """Servers marked down now: the per-server gauges (per worker with several), and the count."""
    down = {
        dict(labels).get("server", "?"): value
        for (name, labels), value in samples.items()
        if name == "idres_upstream_down" and value
    }
    count = _total(samples, "idres_upstream_down_servers")
    if count and not down:
        down["(servers past the label cap)"] = count
    return down


async def _resolve(
    url: str, handles: Iterator[str], concurrency: int, rate: float, watch: dict[str, Any]
) -> dict[str, Any]:
    """GET every handle through ``url``, at most ``concurrency`` at a time and, with ``rate`` > 0, one
    every 1/``rate`` s (started on schedule, not when an answer comes back), while ``/metrics`` is
    read for upstreams marked down (every server ever seen down goes into ``watch["down"]``)."""
    answered = 0
    failures: list[str] = []
    done = asyncio.Event()
    started = time.perf_counter()
    sent = 0

    async def worker() -> None:
        nonlocal answered, sent
        connection = await connect(url)
        try:
            for handle in handles:  # one shared iterator: each handle is taken by one worker
                if rate > 0:
                    due = started + sent / rate
                    sent += 1
                    if (wait := due - time.perf_counter()) > 0:
                        await asyncio.sleep(wait)
                if not connection.open:
                    connection = await connect(url)
                try:
                    status, _ = await connection.get(request_path(handle), timeout=REQUEST_TIMEOUT)
                except (HttpError, OSError) as exc:
                    failures.append(f"{handle}: {type(exc).__name__}: {exc}")
                    continue
                if status == 200:
                    answered += 1
                else:
                    failures.append(f"{handle}: HTTP {status}")
        finally:
            connection.close()

    async def watcher(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            for server, value in _down(await _metrics(session, url)).items():
                watch["down"][server] = max(watch["down"].get(server, 0.0), value)
            watch["scrapes"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), METRICS_EVERY)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
        watching = asyncio.create_task(watcher(session))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        done.set()
        await watching
    seconds = time.perf_counter() - started
    return {
        "answered": answered,
        "failed": len(failures),
        "failures": failures[:10],
        "seconds": round(seconds, 2),
        "per_second": round(answered / seconds) if seconds else 0,
    }


def _start(module: str, *args: str) -> subprocess.Popen[str]:
    """``python -m module args``, once it printed READY (a probe, a hiccup meter)."""
    cmd = [sys.executable, "-m", module, *args]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # READY, or nothing when it failed
    if line != "READY":
        process.kill()
        _, err = process.communicate(timeout=10)
        raise RuntimeError(f"{module} did not start ({line!r}): {err[-500:]}")
    return process


def _start_probe(url: str, interval_ms: float, *, realtime: bool) -> subprocess.Popen[str]:
    return _start(
        "benchmarks.scale_probe", url, "--interval-ms", str(interval_ms), *(["--realtime"] if realtime else [])
    )


def _stop(process: subprocess.Popen[str], module: str) -> dict[str, Any]:
    """The JSON line ``module``, started by ``_start``, prints when it is sent SIGTERM."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    lines = out.strip().splitlines()
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{module} failed ({process.returncode}): {err[-500:]}")
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


@contextlib.contextmanager
def _machine_watched(node: int, into: dict[str, Any]) -> Iterator[None]:
    """Within the block a hiccup meter on each CPU the process ``node`` or this one may use (each
    may be pinned to some); their figures go into ``into`` by CPU, and every hiccup of every CPU
    into ``into["hiccups"]``."""
    cpus = os.sched_getaffinity(node) | os.sched_getaffinity(0)
    meters = [_start("benchmarks.hiccups", str(cpu)) for cpu in sorted(cpus)]
    try:
        yield
    finally:
        hiccups: list[tuple[float, float]] = []
        for meter in meters:
            figures = _stop(meter, "benchmarks.hiccups")
            hiccups += [(start, ms / 1000) for start, ms in figures.pop("hiccups")]
            into[f"cpu{figures.pop('cpu')}"] = figures
        into["hiccups"] = hiccups


async def _snapshot(url: str, hot: str | None = None) -> Samples:
    async with aiohttp.ClientSession() as session:
        if hot is not None:
            async with session.get(url + request_path(hot)) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{hot} via {url}: HTTP {resp.status}")
        return await _metrics(session, url)


def fill_and_probe(
    url: str, pid: int, hot: str, handles: Iterator[str], *, concurrency: int, interval_ms: float, rate: float = 0.0
) -> dict[str, Any]:
    """Fill the recursive node at ``url`` (process ``pid``) with ``handles`` while probing ``hot``."""
    before = asyncio.run(_snapshot(url, hot))
    rss_before = tree_rss_kib(pid)
    watch: dict[str, Any] = {"down": _down(before), "scrapes": 0}
    # Two probes of the one hot identifier: a real-time one, whose figures are the node's (it never
    # waits for a CPU itself), and an ordinary one, which waits its turn as any client on this
    # machine would (``benchmarks.scale_probe``).
    machine: dict[str, Any] = {}
    with _machine_watched(pid, machine):
        probe = _start_probe(url + request_path(hot), interval_ms, realtime=True)
        try:
            ordinary = _start_probe(url + request_path(hot), interval_ms, realtime=False)
            try:
                with PeakRss({"recursive": pid}) as rss, SchedSampler(pid) as sched:
                    fill = uvloop.run(_resolve(url, handles, concurrency, rate, watch))  # the leaner loop
            finally:
                ordinary_figures = _stop(ordinary, "the ordinary probe")
        finally:
            probe_figures = _stop(probe, "the real-time probe")
    slowest = _accounted(probe_figures.pop("worst_requests", []), sched, machine.pop("hiccups"))
    after = asyncio.run(_snapshot(url))
    rss_after = tree_rss_kib(pid)
    entries = _total(after, "idres_cache_entries") - _total(before, "idres_cache_entries")
    per_answer = (rss_after - rss_before) * 1024 / entries if entries > 0 else 0.0
    at_million = rss_after * 1024 if entries >= ONE_MILLION else rss_before * 1024 + per_answer * ONE_MILLION
    failures_during = _total(after, "idres_upstream_failures_total") - _total(before, "idres_upstream_failures_total")
    return {
        "fill": fill,
        "cache_entries_added": int(entries),
        "evictions": int(_total(after, "idres_cache_evictions_total") - _total(before, "idres_cache_evictions_total")),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
        "rss_peak_mib": round(rss.peak_tree["recursive"] / 1024, 1),
        "bytes_per_answer": round(per_answer),
        "rss_at_1m_answers_mib": round(at_million / 1_048_576, 1),
        "rss_at_1m_answers_is": "measured" if entries >= ONE_MILLION else "projected from bytes_per_answer",
        "probe": probe_figures,
        "probe_ordinary": ordinary_figures,
        "worst_pause_ms": probe_figures["latency_from_due_ms"].get("max", 0.0),
        # The same with the time the machine itself stood still taken out of each request.
        "worst_pause_machine_out_ms": _worst_machine_out(slowest),
        "worst_pause_ordinary_ms": ordinary_figures["latency_from_due_ms"].get("max", 0.0),
        "upstreams_marked_down": watch["down"],
        "upstream_failures": int(failures_during),
        # The node's own view, to tell a pause from a queue: the longest garbage collection and the
        # longest time its event loop ran late (a collection, a long turn of the loop over many
        # ready requests, or the process not scheduled), both since it started; and how often and
        # how long the loop ran late during the fill.
        "node": {
            "gc_pause_max_ms": round(_max(after, "idres_gc_pause_max_seconds") * 1000, 2),
            "gc_pauses": int(_total(after, "idres_gc_pauses_total") - _total(before, "idres_gc_pauses_total")),
            "loop_late_max_ms": round(_max(after, "idres_loop_pause_max_seconds") * 1000, 2),
            "loop_late_times": int(
                _total(after, "idres_loop_pauses_total") - _total(before, "idres_loop_pauses_total")
            ),
            "loop_late_seconds": round(
                _total(after, "idres_loop_pause_seconds_total") - _total(before, "idres_loop_pause_seconds_total"), 2
            ),
        },
        "metrics_scrapes": watch["scrapes"],
        # The kernel's accounts of the node's main thread over the fill (``benchmarks.schedstat``):
        # whether a pause was its own work, a wait for a CPU, the disk or none of these; and the
        # same accounts around each of the real-time probe's slowest requests.
        "kernel": sched.figures(),
        # The hiccup meters' figures by CPU (``benchmarks.hiccups``), and the probe's slowest
        # requests, slowest first, each with how long the machine stood still meanwhile and the
        # kernel's accounts of the node around it.
        "machine": machine,
        "worst_requests": slowest,
    }


def _accounted(
    worst: list[dict[str, float]], sched: SchedSampler, hiccups: list[tuple[float, float]]
) -> list[dict[str, Any]]:
    """Each of the probe's slowest requests with how long the machine stood still during it (any
    CPU's hiccup: the probe needs its CPU, the node its own) and its latency with that taken out,
    and the kernel's accounts of the samples around it: a request slow while the host stole the
    CPUs was slowed by the machine, one slow while the node was on a CPU all along by its work."""
    accounted = []
    for request in worst:
        start, end = request["due"], request["due"] + request["ms"] / 1000
        still = stood_still(hiccups, start, end) * 1000
        accounted.append(
            {
                **request,
                "machine_stood_still_ms": round(still, 3),
                "ms_machine_out": round(request["ms"] - still, 3),
                "kernel": sched.during(start, end),
            }
        )
    return accounted


def _worst_machine_out(slowest: list[dict[str, Any]]) -> float:
    """The worst latency with the machine's stand-stills taken out, over all the probe's requests:
    the worst among the slowest it kept or, when it kept its full count, the slowest it did not keep
    (at most as slow as the last one kept), whichever is larger."""
    if not slowest:
        return 0.0
    unkept = float(slowest[-1]["ms"]) if len(slowest) >= WORST_KEPT else 0.0
    return round(max(max(float(r["ms_machine_out"]) for r in slowest), unkept), 3)
