"""``python -m benchmarks workers``: the recursive node's hot-cache throughput with 1 and with N worker processes.

One run starts two benchmark topologies side by side (``benchmarks.topology``: the default topology on
free ports), one whose recursive node runs one process and one whose recursive node runs
``--workers`` processes on its port (``workers = N``, SO_REUSEPORT). It registers ``--identifiers``
records on each (``resolve``'s records, half on each enterprise node), warms each recursive node until
every worker holds every identifier (each worker has its own cache: ``idres_cache_entries``, summed
over the workers, reaches N x identifiers), then runs wrk against each in ``--rounds`` rounds, back to
back, which goes first alternating. Nothing is pinned: the workers need every core, and wrk shares
them (on a 2-core machine it takes about 0.4 of a core), as a load generator on the same host does.

It reports requests/s of each (median of the rounds), their ratio (the median of the rounds' ratios),
and the cache's hit ratio during the measured runs from ``/metrics`` (hits / (hits + misses), summed
over the workers).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from benchmarks.resolve import ENTERPRISES, _median_run, bench_records, machine
from benchmarks.tools import (
    WrkResult,
    command_parser,
    ensure_wrk,
    parse_prometheus,
    report,
    results_table,
    run_wrk,
    write_paths,
)
from benchmarks.topology import Cluster, cluster, register
from nodes.running.topology_file import DEFAULT_TOPOLOGY

__all__ = ["main", "parser", "run"]

SUMMARY = "The recursive node's hot-cache throughput with 1 and with N worker processes (--workers N), side by side."
WARM_ROUNDS = 12  # wrk runs of WARM_SECONDS at most, until every worker holds every identifier
WARM_SECONDS = 5.0


def _topology_with_workers(folder: Path, workers: int) -> Path:
    """The default topology with ``workers = N`` on its recursive node."""
    text, found = re.subn(
        r'(\[nodes\.recursive\]\nrole = "recursive"\n)', rf"\1workers = {workers}\n", DEFAULT_TOPOLOGY.read_text()
    )
    if found != 1:
        raise RuntimeError("the default topology's [nodes.recursive] table is not where this benchmark expects it")
    path = folder / f"workers-{workers}.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def _metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        samples = parse_prometheus(await resp.text())

    def total(name: str) -> float:
        return sum(value for (sample, _), value in samples.items() if sample == name)

    return {
        "hits": total("idres_cache_hits_total"),
        "misses": total("idres_cache_misses_total"),
        "entries": total("idres_cache_entries"),
    }


async def _register(bench: Cluster, per_enterprise: int) -> list[str]:
    handles: list[str] = []
    async with aiohttp.ClientSession() as session:
        for node, prefix in ENTERPRISES:
            records = bench_records(prefix, per_enterprise)
            await register(session, bench.url(node), prefix, bench.secret, records)
            handles += [h for h, _ in records]
    return handles


def _warm(url: str, paths: Path, wanted: int, connections: int) -> dict[str, Any]:
    """wrk over the paths until the node's caches hold ``wanted`` entries (every worker every identifier)."""
    for attempt in range(1, WARM_ROUNDS + 1):
        run_wrk(url, paths, duration=WARM_SECONDS, connections=connections)
        held = asyncio.run(_metrics(url))["entries"]
        if held >= wanted:
            return {"wrk_runs": attempt, "entries": held}
    raise RuntimeError(f"{url}: the caches hold {held:.0f} entries after {WARM_ROUNDS} warming runs, not {wanted}")


def _hit_ratio(before: dict[str, float], after: dict[str, float]) -> float:
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    return round(hits / max(hits + misses, 1.0), 5)


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    ensure_wrk()
    result: dict[str, Any] = {"machine": machine(), "command": "python -m benchmarks workers " + " ".join(args.argv)}
    counts = (1, args.workers)
    per_enterprise = args.identifiers // len(ENTERPRISES)
    with tempfile.TemporaryDirectory(prefix="idres-bench-workers-") as tmp, ExitStack() as stack:
        urls, paths = {}, {}
        for n in counts:
            bench = stack.enter_context(cluster(topology=_topology_with_workers(Path(tmp), n)))
            console.print(f"{n} worker(s): registering {per_enterprise * 2:,} identifiers...")
            handles = asyncio.run(_register(bench, per_enterprise))
            urls[n], paths[n] = bench.url("recursive"), Path(tmp) / f"paths-{n}.txt"
            write_paths(paths[n], handles)
            console.print(f"{n} worker(s): warming {urls[n]} until every worker holds every identifier...")
            result[f"warm_{n}"] = _warm(urls[n], paths[n], n * len(handles), args.connections)
        runs: dict[int, list[WrkResult]] = {n: [] for n in counts}
        ratios: dict[int, list[float]] = {n: [] for n in counts}
        for round_no in range(args.rounds):
            for n in counts if round_no % 2 == 0 else counts[::-1]:
                before = asyncio.run(_metrics(urls[n]))
                measured = run_wrk(urls[n], paths[n], duration=args.duration, connections=args.connections)
                ratios[n].append(_hit_ratio(before, asyncio.run(_metrics(urls[n]))))
                runs[n].append(measured)
                console.print(f"  round {round_no + 1}  {n} worker(s)  {measured.rps:>10,.0f} req/s")
    for n in counts:
        result[f"workers_{n}"] = {**_median_run(runs[n]), "hit_ratio": min(ratios[n])}
    paired = [b.rps / a.rps for a, b in zip(runs[1], runs[args.workers], strict=True) if a.rps > 0]
    result["ratio"] = round(statistics.median(paired), 3) if paired else None
    result["ratio_rounds"] = [round(r, 3) for r in paired]
    return result


def print_table(result: dict[str, Any], console: Console) -> None:
    n = next(int(k.split("_")[1]) for k in result if k.startswith("workers_") and k != "workers_1")
    table = results_table(
        f"recursive node, hot cache: 1 worker and {n} workers (wrk -t1, same machine)",
        ("measure", "1 worker", f"{n} workers"),
    )
    one, many = result["workers_1"], result[f"workers_{n}"]
    table.add_row("req/s (median)", f"{one['rps']:,}", f"{many['rps']:,}")
    table.add_row(
        "  rounds", " / ".join(f"{r:,}" for r in one["rps_runs"]), " / ".join(f"{r:,}" for r in many["rps_runs"])
    )
    table.add_row("p99 ms", f"{one['latency_ms'].get('p99', 0):.2f}", f"{many['latency_ms'].get('p99', 0):.2f}")
    table.add_row("hit ratio (lowest round)", f"{one['hit_ratio']:.4f}", f"{many['hit_ratio']:.4f}")
    table.add_row(
        "errors (failed / non-2xx)", f"{one['failed']} / {one['non_2xx']}", f"{many['failed']} / {many['non_2xx']}"
    )
    console.print(table)
    console.print(f"{n} workers / 1 worker: {result['ratio']} (median of the rounds' ratios {result['ratio_rounds']})")


def parser() -> argparse.ArgumentParser:
    p = command_parser("workers", SUMMARY)
    p.add_argument("--workers", type=int, default=2, metavar="N", help="Worker processes of the second recursive node.")
    p.add_argument(
        "--identifiers", type=int, default=20_000, metavar="N", help="Identifiers registered and spread over."
    )
    p.add_argument("--duration", type=float, default=10.0, metavar="SECONDS", help="Seconds of each wrk run.")
    p.add_argument("--connections", type=int, default=64, metavar="N", help="wrk connections.")
    p.add_argument("--rounds", type=int, default=4, metavar="N", help="Rounds; each runs both nodes back to back.")
    p.add_argument(
        "--json", type=Path, default=Path("bench-results/workers.json"), metavar="PATH", help="Where the figures go."
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.workers < 2 or args.identifiers < 2 or args.rounds < 1:
        parser().error("need --workers >= 2, --identifiers >= 2 and --rounds >= 1")
    args.argv = argv
    return report(args, run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
