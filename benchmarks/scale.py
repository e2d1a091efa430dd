"""``python -m benchmarks scale``: one enterprise node with millions of identifiers, a recursive node with a
million answers, and the targets of issue 12 beside the figures.

One run, on the default topology moved to free ports (``benchmarks.topology.cluster``; the
recursive node's cache bound raised above ``--answers``):

1. **load**: ``--identifiers`` datagen records into the automaker node with ``idres register``, in
   chunks of ``--chunk`` (``benchmarks.scale_load``): records/s per chunk, bytes per identifier on
   disk (SQLite file and WAL over N);
2. **GET throughput** on random identifiers with wrk straight at the enterprise node, once when
   ``--checkpoint`` records are in (the same node at 100k) and once at the end, over a random
   ``--sample`` of every key: first one pass asking for each sampled identifier once (the rate
   from wherever the load left the file: at 10M mostly the disk), then the timed rounds over the
   same sample in memory; the ratio of the rounds is the target, the first passes' is reported;
3. **listing** (``benchmarks.scale_reads``): the first page, a deep page by ``page=K`` and the page
   after it by cursor, and the count alone; then GET latency under wrk while those listings run
   in a loop beside it;
4. **digest**: the status with its digest and ``/api/replication/digest``, as the operator; GET
   latency under wrk while they run in a loop;
5. **a new mirror** (``benchmarks.scale_mirror``): started after the load, timed until it applied
   the primary's last seq and shows its digest; records/s and the primary's peak memory;
6. **the recursive node** (``benchmarks.scale_recursive``): filled with ``--answers`` distinct
   answers while a probe asks one hot identifier every ``--probe-interval-ms`` on its own
   connection; memory per answer, the worst pause the probe saw, upstreams marked down.

Prints a table with each target, and writes every figure to ``--json``. A measurement whose
interface the node does not have reports "not available" and the reason instead of failing the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.affinity import node_on_its_own_cpu
from benchmarks.resolve import machine
from benchmarks.scale_load import OPERATOR, PREFIX, database_bytes, first_handles, load
from benchmarks.scale_mirror import catch_up
from benchmarks.scale_reads import (
    DIGEST,
    STATUS,
    NotAvailable,
    digest_times,
    first_pass,
    get_during,
    get_throughput,
    listing_targets,
    listing_times,
    settle,
)
from benchmarks.scale_recursive import fill_and_probe
from benchmarks.scale_table import TARGETS, print_table
from benchmarks.tools import command_parser, ensure_wrk, report, write_paths
from benchmarks.topology import cluster
from nodes.running.topology_file import DEFAULT_TOPOLOGY
from resolver.client import basic_auth

__all__ = ["TARGETS", "main", "parser", "print_table", "run"]


SUMMARY = "Millions of identifiers in one node, a million answers in the recursive node: issue 12's targets."
ENTERPRISE, RECURSIVE = "automaker", "recursive"


def _topology(base: str, answers: int, workers: int) -> str:
    """The default topology with the recursive node's cache bound above ``answers`` (and its workers)."""
    bound = max(answers + answers // 10, 100_000)
    text, found = re.subn(r"(\[nodes\.recursive\.cache\]\s*\nmax_entries\s*=\s*)\d+", rf"\g<1>{bound}", base)
    if not found:
        raise RuntimeError("the default topology's [nodes.recursive.cache] has no max_entries to raise")
    if workers > 1:
        text = text.replace("[nodes.recursive]\n", f"[nodes.recursive]\nworkers = {workers}\n", 1)
    return text


def _section(what: str, measure: Callable[[], dict[str, Any]], console: Console) -> dict[str, Any]:
    """``measure()``, or ``{"available": False, "reason"}`` when the node lacks its interface."""
    console.print(f"{what}...")
    try:
        figures = measure()
    except NotAvailable as exc:
        console.print(f"  [yellow]not available[/yellow]: {exc}")
        return {"available": False, "reason": str(exc)}
    return {"available": True, **figures}


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    ensure_wrk()
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "command": "python -m benchmarks scale " + " ".join(args.argv),
    }
    with tempfile.TemporaryDirectory(prefix="idres-scale-") as tmp:
        base = Path(tmp) / "topology.toml"
        base.write_text(_topology(DEFAULT_TOPOLOGY.read_text(encoding="utf-8"), args.answers, args.recursive_workers))
        with cluster(topology=base) as bench:
            work = bench.path.parent
            url, pid = bench.url(ENTERPRISE), bench.pid(ENTERPRISE)
            auth = basic_auth(OPERATOR, bench.secret)

            def at_checkpoint(handles: list[str]) -> dict[str, Any]:
                paths = work / "early.paths"
                write_paths(paths, handles)
                console.print(f"GET throughput at {args.checkpoint:,} identifiers ({len(handles):,} random keys)...")
                settled = settle(pid)
                cold = first_pass(url, paths, len(handles), pid, connections=args.connections)
                return {"settled_s": settled, "first_pass": cold, **throughput(paths)}

            def throughput(paths: Path) -> dict[str, Any]:
                return get_throughput(
                    url,
                    paths,
                    pid,
                    rounds=args.rounds,
                    duration=args.duration,
                    connections=args.connections,
                    warmup=args.warmup,
                )

            console.print(f"loading {args.identifiers:,} identifiers into {ENTERPRISE} with idres register...")
            started = time.perf_counter()
            loaded = load(
                url,
                bench.secret,
                args.identifiers,
                work,
                chunk=args.chunk,
                checkpoint=args.checkpoint,
                sample_size=args.sample,
                concurrency=args.register_concurrency,
                seed=args.seed,
                at_checkpoint=at_checkpoint,
                progress=console.print,
            )
            sizes = database_bytes(bench.data, ENTERPRISE)
            loading = sum(c["seconds"] for c in loaded.chunks)
            result["load"] = {
                "identifiers": args.identifiers,
                "seconds": round(loading, 2),
                "per_second": round(args.identifiers / loading),
                "wall_seconds_with_generation": round(time.perf_counter() - started, 2),
                "chunks": loaded.chunks,
                "disk_bytes": sizes,
                "bytes_per_identifier": round((sizes["database"] + sizes["wal"]) / args.identifiers, 1),
                # The file alone: what the identifiers cost once the WAL is checkpointed into it.
                "bytes_per_identifier_database": round(sizes["database"] / args.identifiers, 1),
            }
            paths = work / "sample.paths"
            write_paths(paths, loaded.sample)
            console.print(f"GET throughput at {args.identifiers:,} identifiers ({len(loaded.sample):,} random keys)...")
            settled = settle(pid)
            console.print("  every one of them once (the first pass, from the disk what is not in memory)...")
            cold = first_pass(url, paths, len(loaded.sample), pid, connections=args.connections)
            at_n = {"settled_s": settled, "first_pass": cold, **throughput(paths)}
            # Latency is measured below saturation (a closed loop at saturation measures its own queue:
            # 64 connections at N req/s wait 64/N s on average whatever the node does), alone and then
            # beside listings and digests, at the same load.
            console.print(f"GET latency at {args.latency_connections} connections, nothing else running...")
            result["get_latency_alone"] = get_throughput(
                url, paths, pid, rounds=1, duration=args.duration, connections=args.latency_connections
            )
            early = loaded.at_checkpoint
            result["get_throughput"] = {
                "at_checkpoint": {"identifiers": args.checkpoint, **early},
                "at_n": {"identifiers": args.identifiers, **at_n},
                "ratio": round(at_n["rps_median"] / early["rps_median"], 3) if early.get("rps_median") else 0.0,
                # The first passes' ratio: the 10M node reads its sample from the disk, the 100k one
                # from memory (its whole file is a few tens of MB): the disk's figure, not the code's.
                "first_pass_ratio": (
                    round(cold["rps"] / early["first_pass"]["rps"], 3) if early.get("first_pass") else 0.0
                ),
            }

            targets: dict[str, Any] = {}

            def listing() -> dict[str, Any]:
                targets.update(asyncio.run(listing_targets(url, auth, PREFIX, args.page_size)))
                return asyncio.run(listing_times(url, auth, targets, args.samples))

            result["listing"] = _section("listing pages", listing, console)

            def during_listing() -> dict[str, Any]:
                if not targets:
                    raise NotAvailable("no listing to run beside the GETs")
                loop = [t for k in ("first_page", "deep_by_page", "deep_by_cursor") if (t := targets[k]) is not None]
                return asyncio.run(
                    get_during(
                        url, paths, pid, auth, loop, duration=args.duration, connections=args.latency_connections
                    )
                )

            result["get_during_listing"] = _section("GET latency while listings run", during_listing, console)
            result["digest"] = _section("digest", lambda: asyncio.run(digest_times(url, auth, args.samples)), console)

            def during_digest() -> dict[str, Any]:
                loop = [STATUS, DIGEST]
                return asyncio.run(
                    get_during(
                        url, paths, pid, auth, loop, duration=args.duration, connections=args.latency_connections
                    )
                )

            result["get_during_digest"] = _section("GET latency while digests run", during_digest, console)
            result["mirror"] = _section("a new mirror catching up", lambda: catch_up(bench, ENTERPRISE, auth), console)

            def recursive() -> dict[str, Any]:
                handles = first_handles(args.identifiers, args.answers, args.seed)
                node = bench.pid(RECURSIVE)
                others = [n.process.pid for n in bench.nodes if n.spec.name != RECURSIVE and n.process.poll() is None]
                pinning = (
                    node_on_its_own_cpu(node, others)
                    if not args.no_pin_recursive and args.recursive_workers == 1
                    else contextlib.nullcontext("not pinned (--no-pin-recursive, or several workers)")
                )
                with pinning as pinned:
                    figures = fill_and_probe(
                        bench.url(RECURSIVE),
                        node,
                        loaded.last,  # not among the fill's (first) identifiers unless it fills them all
                        handles,
                        concurrency=args.fill_concurrency,
                        interval_ms=args.probe_interval_ms,
                        rate=args.fill_rate,
                    )
                return {**figures, "cpus": pinned}

            result["recursive"] = _section(
                f"filling {RECURSIVE} with {args.answers:,} answers "
                f"({f'{args.fill_rate:g}/s' if args.fill_rate > 0 else 'as fast as it answers'}), "
                f"probing every {args.probe_interval_ms:g} ms",
                recursive,
                console,
            )
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["setup"] = {k: v for k, v in vars(args).items() if k not in ("argv", "json")}
    result["targets"] = TARGETS
    return result


# -- the table --------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = command_parser("scale", SUMMARY)
    p.add_argument("--identifiers", type=int, default=10_000_000, help="identifiers loaded into the enterprise node")
    p.add_argument("--checkpoint", type=int, default=100_000, help="where GET throughput is first measured")
    p.add_argument("--chunk", type=int, default=1_000_000, help="identifiers registered per idres register run")
    p.add_argument(
        "--sample",
        type=int,
        default=100_000,
        help="random identifiers wrk spreads its GETs over at N (as many as at the checkpoint: one working set)",
    )
    p.add_argument("--answers", type=int, default=1_000_000, help="distinct answers filled into the recursive node")
    p.add_argument("--page-size", type=int, default=1000, help="pageSize of the listing pages")
    p.add_argument("--samples", type=int, default=5, help="times each listing and digest request is timed")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    p.add_argument("--rounds", type=int, default=3, help="wrk runs per throughput figure (median reported)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections for throughput")
    p.add_argument(
        "--latency-connections", type=int, default=4, help="wrk connections for GET latency (below saturation)"
    )
    p.add_argument("--warmup", type=int, default=3, help="seconds of wrk before each throughput figure (0: none)")
    p.add_argument("--register-concurrency", type=int, default=4, help="idres register --concurrency")
    p.add_argument("--fill-concurrency", type=int, default=32, help="most requests in flight while filling the cache")
    p.add_argument(
        "--fill-rate",
        type=float,
        default=800.0,
        help="answers a second the fill asks for, on schedule (0: as fast as the node answers)",
    )
    p.add_argument("--probe-interval-ms", type=float, default=10.0, help="the probe's interval")
    p.add_argument("--recursive-workers", type=int, default=1, help="workers of the recursive node")
    p.add_argument(
        "--no-pin-recursive",
        action="store_true",
        help="share the CPUs while filling (by default the recursive node runs on CPU 0, the rest on the others)",
    )
    p.add_argument("--seed", type=int, default=0, help="datagen's seed, and the random samples'")
    p.add_argument("--json", type=Path, default=Path("bench-results/scale.json"), help="where to write the figures")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.identifiers < 2 * args.page_size or not 0 < args.answers <= args.identifiers:
        parser().error("need --identifiers >= 2 x --page-size and 0 < --answers <= --identifiers")
    if min(args.chunk, args.sample, args.samples, args.rounds, args.page_size, args.recursive_workers) < 1:
        parser().error("--chunk, --sample, --samples, --rounds, --page-size and --recursive-workers must be >= 1")
    args.checkpoint = min(args.checkpoint, args.identifiers // 2)
    args.argv = argv
    return report(args, run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
