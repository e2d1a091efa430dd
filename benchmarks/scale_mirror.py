"""The scale benchmark's new mirror: added to the topology after the load, started, timed until it has caught up.

The mirror is appended to the running topology's file (``benchmarks.topology.topology_text`` with
``automaker_mirror``) only once the primary holds everything, as an operator adds a replica to a
node that already has data; the primary was started without it. Caught up means its
``/api/replication/status`` shows ``appliedSeq`` equal to the primary's ``lastSeq`` and both nodes
show the same digest. Meanwhile the resident memory of both processes is sampled every 100 ms
(``/proc/PID/status`` VmRSS), so the peaks can miss a spike shorter than that.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from benchmarks.bulk import _rss_kib
from benchmarks.scale_load import PeakRss
from benchmarks.scale_reads import STATUS, NotAvailable, expect, timed
from benchmarks.topology import AUTOMAKER_MIRROR, Cluster, _wait_healthy, topology_text
from nodes.running.launcher import start_nodes
from nodes.running.topology_file import load_topology
from resolver.config import Topology

__all__ = ["catch_up"]

POLL = 0.2  # seconds between status reads of the mirror
MIN_TIMEOUT = 120.0
SLOWEST_RATE = 2_000  # records/s below which the benchmark stops waiting (the timeout at 10M: 83 min)


def _start_mirror(bench: Cluster, primary: str) -> None:
    """Add ``automaker-mirror`` to the topology file and start it (``bench.stop`` stops it with the rest)."""
    bench.path.write_text(
        topology_text(bench.path.read_text(encoding="utf-8"), cold=False, automaker_mirror=True, move_ports=False)
    )
    spec = load_topology(bench.path)
    if spec.node(AUTOMAKER_MIRROR).mirror_of != primary:
        raise RuntimeError(f"{AUTOMAKER_MIRROR} does not mirror {primary}")
    bench.topology = spec
    bench.nodes += start_nodes(Topology({AUTOMAKER_MIRROR: spec.node(AUTOMAKER_MIRROR)}), bench.path, bench.data)


async def _follow(url: str, auth: str, last_seq: int, digest: str, started: float, timeout: float) -> dict[str, Any]:
    """Poll the mirror's status until it applied ``last_seq`` and shows ``digest``: when (seconds
    since ``started``, its process start) it first held records, applied everything, showed the digest."""
    seen: dict[str, Any] = {"first_records_s": None, "applied_s": None}
    async with aiohttp.ClientSession() as session:
        while True:
            elapsed = time.perf_counter() - started
            if elapsed > timeout:
                raise RuntimeError(f"the mirror had not caught up after {timeout:.0f} s: {seen}")
            _, status, body = await timed(session, url, STATUS, auth)
            if status == 200:
                expect(status, body, STATUS, "appliedSeq", "digest", "records")
                seen["last"] = {k: body.get(k) for k in ("appliedSeq", "records", "lagSeq", "lastError")}
                if seen["first_records_s"] is None and (body["records"] or 0) > 0:
                    seen["first_records_s"] = round(elapsed, 3)
                if seen["applied_s"] is None and (body["appliedSeq"] or 0) >= last_seq:
                    seen["applied_s"] = round(elapsed, 3)
                if seen["applied_s"] is not None and body["digest"] == digest:
                    seen["digest_equal_s"] = round(elapsed, 3)
                    return seen
            await asyncio.sleep(POLL)


async def _primary_status(url: str, auth: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        _, status, body = await timed(session, url, STATUS, auth)
    expect(status, body, STATUS, "lastSeq", "digest", "records")
    return body


def catch_up(bench: Cluster, primary: str, auth: str) -> dict[str, Any]:
    """Start a new mirror of ``primary`` and time it until it has caught up; records/s and both peaks."""
    url = bench.url(primary)
    before = asyncio.run(_primary_status(url, auth))
    if not isinstance(before["digest"], str):
        raise NotAvailable(f"the primary's status has no digest: {before.get('digest')!r}")
    records, last_seq = int(before["records"]), int(before["lastSeq"])
    timeout = max(MIN_TIMEOUT, records / SLOWEST_RATE)
    rss_before = _rss_kib(bench.pid(primary))
    started = time.perf_counter()
    _start_mirror(bench, primary)
    with PeakRss({"primary": bench.pid(primary), "mirror": bench.pid(AUTOMAKER_MIRROR)}) as rss:
        asyncio.run(_wait_healthy([bench.process(AUTOMAKER_MIRROR)], 60.0))
        healthy = time.perf_counter() - started
        seen = asyncio.run(_follow(bench.url(AUTOMAKER_MIRROR), auth, last_seq, before["digest"], started, timeout))
        seconds = time.perf_counter() - started
    after = asyncio.run(_primary_status(url, auth))
    if int(after["lastSeq"]) != last_seq:
        raise RuntimeError(f"the primary took writes while its mirror caught up ({last_seq} -> {after['lastSeq']})")
    return {
        "records": records,
        "last_seq": last_seq,
        "seconds": round(seconds, 2),
        "records_per_second": round(records / seconds),
        # Past its start-up (Python, imports, opening its file): what the copy itself runs at.
        "records_per_second_once_healthy": round(records / (seconds - healthy)) if seconds > healthy else 0,
        "healthy_after_s": round(healthy, 3),
        **{k: v for k, v in seen.items() if k != "last"},
        "primary_rss_before_mib": round(rss_before / 1024, 1),
        "primary_peak_rss_mib": round(rss.peak["primary"] / 1024, 1),
        "primary_tree_peak_rss_mib": round(rss.peak_tree["primary"] / 1024, 1),
        "mirror_peak_rss_mib": round(rss.peak["mirror"] / 1024, 1),
        "digest_equal": True,
    }
