"""``python -m benchmarks tls``: what HTTPS costs, with plain-HTTP and TLS figures from the same run.

One run:

1. starts two benchmark topologies side by side (``benchmarks.topology``: the default topology on free
   ports plus ``recursive-cold``): one on plain HTTP, one with every node on HTTPS (certificates of a
   local CA, as ``idres up --tls`` makes them; the nodes talk to each other over HTTPS too);
2. registers ``--identifiers`` records on each (half on each enterprise node, ``resolve``'s records),
   plus a separate set for the cold measurements;
3. warms each recursive node by resolving every identifier once;
4. measures in ``--rounds`` rounds, plain and TLS back to back in each (which goes first alternates),
   the server under test pinned to CPU 0 and wrk to the last CPU:

   a. **hot cache**: requests/s through the recursive node with wrk over ``--connections`` keep-alive
      connections (one handshake per connection, then only TLS record costs);
   b. **new connections**: the same with ``Connection: close``, so every request opens a TCP connection
      and, on HTTPS, does a full handshake (wrk keeps no session tickets);
   c. **cold three-level resolution**: sequential requests on one keep-alive connection to
      ``recursive-cold``, each walking top -> secondary -> enterprise; on the TLS topology each of those
      hops is HTTPS (over the node's pooled keep-alive connections), which ``/metrics`` confirms;

5. prints plain vs TLS with their ratio, and writes everything to ``--json``.

wrk speaks HTTPS to an ``https://`` URL and does not verify certificates; the benchmark's own clients
verify against the topology's CA.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from benchmarks.resolve import ENTERPRISES, _median_run, bench_records, machine
from benchmarks.tools import (
    WrkResult,
    command_parser,
    ensure_wrk,
    load_cpus,
    parse_prometheus,
    pin,
    report,
    request_path,
    results_table,
    run_wrk,
    summarize,
    write_paths,
)
from benchmarks.topology import COLD_RECURSIVE, Cluster, cluster, register
from resolver.tls import client_connector

__all__ = ["main", "parser", "print_table", "run"]

SUMMARY = "Hot-cache, new-connection and cold resolution over plain HTTP and over HTTPS, side by side (wrk)."
VARIANTS = ("plain", "tls")
NEW_CONNECTION = ("-H", "Connection: close")
UPSTREAM_COUNT = "idres_upstream_rtt_seconds_count"


def _session(bench: Cluster, limit: int = 64) -> aiohttp.ClientSession:
    """A session that trusts the cluster's CA (none on plain HTTP: the system's, never used)."""
    return aiohttp.ClientSession(connector=client_connector(bench.topology.tls_ca, limit=limit))


async def _register_all(bench: Cluster, per_enterprise: int, cold: int) -> dict[str, Any]:
    started = time.perf_counter()
    methods = set()
    async with _session(bench) as session:
        for node, prefix in ENTERPRISES:
            records = bench_records(prefix, per_enterprise) + bench_records(prefix, cold, tag="COLD")
            methods.add(await register(session, bench.url(node), prefix, bench.secret, records))
    seconds = time.perf_counter() - started
    total = len(ENTERPRISES) * (per_enterprise + cold)
    return {
        "records": total,
        "seconds": round(seconds, 2),
        "per_second": round(total / seconds),
        "method": sorted(methods),
    }


async def _warm(bench: Cluster, url: str, handles: Sequence[str], concurrency: int = 64) -> dict[str, Any]:
    """Resolve every handle once through ``url`` (a failure is asked again, up to three tries in all)."""
    started = time.perf_counter()
    failures: list[str] = []
    pending = list(handles)

    async def worker(session: aiohttp.ClientSession, queue: Iterator[str], failed: list[str]) -> None:
        for handle in queue:  # one shared iterator: each handle is taken by one worker
            async with session.get(url + request_path(handle)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    failed.append(handle)
                    failures.append(f"{handle}: HTTP {resp.status} {body[:200]!r}")

    async with _session(bench, concurrency) as session:
        for _ in range(3):
            failed: list[str] = []
            queue = iter(pending)
            await asyncio.gather(*(worker(session, queue, failed) for _ in range(concurrency)))
            if not failed:
                return {
                    "seconds": round(time.perf_counter() - started, 2),
                    "failed_first_tries": len(failures),
                    "failures": failures[:10],
                }
            pending = failed
    raise RuntimeError(f"{len(pending)} identifiers did not resolve via {url} while warming, e.g. {failures[-3:]}")


async def _upstream(bench: Cluster, url: str) -> dict[str, float]:
    """Upstream queries the node at ``url`` has made so far, by the upstream URL it asked."""
    async with _session(bench, 1) as session, session.get(url + "/metrics") as resp:
        samples = parse_prometheus(await resp.text())
    return {
        dict(labels).get("server", "?"): value for (name, labels), value in samples.items() if name == UPSTREAM_COUNT
    }


async def _sequential(bench: Cluster, url: str, handles: Sequence[str]) -> tuple[list[float], list[str]]:
    """Latency in ms of each request, one at a time over one keep-alive connection; and the failures."""
    latencies: list[float] = []
    failures: list[str] = []
    async with _session(bench, 1) as session:
        for handle in handles:
            started = time.perf_counter()
            try:
                async with session.get(url + request_path(handle)) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError as exc:
                failures.append(f"{handle}: {type(exc).__name__}: {exc}")
                continue
            if status != 200:
                failures.append(f"{handle}: HTTP {status}")
                continue
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies, failures


async def _cold_round(bench: Cluster, handles: Sequence[str], into: dict[str, Any]) -> None:
    """Time ``handles`` through ``recursive-cold``, adding latencies, failures and upstream queries to ``into``."""
    url = bench.url(COLD_RECURSIVE)
    before = await _upstream(bench, url)
    latencies, failures = await _sequential(bench, url, handles)
    after = await _upstream(bench, url)
    into["latencies"] += latencies
    into["failures"] += failures
    for server, count in after.items():
        made = count - before.get(server, 0.0)
        if made:
            scheme = server.split("://", 1)[0] if "://" in server else "other"  # servers past the label cap
            into["queries"][scheme] = into["queries"].get(scheme, 0.0) + made


def _paired(plain: list[WrkResult], tls: list[WrkResult]) -> dict[str, Any]:
    """Medians of both variants and their ratio, overall and round by round (TLS / plain)."""
    out: dict[str, Any] = {"plain": _median_run(plain), "tls": _median_run(tls)}
    ratios = [t.rps / p.rps if p.rps else 0.0 for p, t in zip(plain, tls, strict=True)]
    base = out["plain"]["rps_median"]
    out["ratio"] = round(out["tls"]["rps_median"] / base, 3) if base else 0.0
    out["ratio_paired_median"] = round(statistics.median(ratios), 3)
    out["ratio_paired"] = [round(r, 3) for r in ratios]
    return out


def _cold_figures(collected: dict[str, Any]) -> dict[str, Any]:
    latencies, queries = collected["latencies"], collected["queries"]
    count = len(latencies)
    figures: dict[str, Any] = {k: round(v, 3) for k, v in summarize(latencies).items()}
    figures["failed"] = len(collected["failures"])
    figures["failures"] = collected["failures"][:10]
    figures["upstream_queries_per_request"] = round(sum(queries.values()) / count, 3) if count else 0.0
    figures["upstream_queries_by_scheme"] = queries
    return figures


# -- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    ensure_wrk()
    per_enterprise = max(1, args.identifiers // len(ENTERPRISES))
    cold_count = (args.cold_samples + args.cold_warmup) // len(ENTERPRISES) + 1
    result: dict[str, Any] = {"machine": machine(), "command": "python -m benchmarks tls " + " ".join(args.argv)}
    server_cpu, load_cpu = load_cpus()
    handles = [h for _, prefix in ENTERPRISES for h, _ in bench_records(prefix, per_enterprise)]
    # Interleave the enterprises so the load alternates between the two delegations.
    handles = [h for pair in zip(handles[:per_enterprise], handles[per_enterprise:], strict=True) for h in pair]
    cold = [f"{ENTERPRISES[i % 2][1]}/COLD-{i // 2:07d}" for i in range(args.cold_samples + args.cold_warmup)]
    with cluster() as plain, cluster(tls=True) as secure:
        benches = {"plain": plain, "tls": secure}
        for variant, bench in benches.items():
            scheme = bench.url("recursive").split("://", 1)[0]
            if scheme != ("https" if variant == "tls" else "http"):
                raise RuntimeError(f"the {variant} topology's recursive node is on {scheme}")
        work = plain.path.parent
        paths = work / "all.paths"
        write_paths(paths, handles)
        result["registration"], result["warm"] = {}, {}
        for variant, bench in benches.items():
            console.print(f"{variant}: registering {len(handles):,} identifiers (+{cold_count * 2:,} for cold runs)...")
            result["registration"][variant] = asyncio.run(_register_all(bench, per_enterprise, cold_count))
            console.print(f"  {result['registration'][variant]}")
            console.print(f"{variant}: warming {bench.url('recursive')} with {len(handles):,} identifiers...")
            result["warm"][variant] = asyncio.run(_warm(bench, bench.url("recursive"), handles))
            # Code paths, the client's connection and the cold node's upstream connections warm; not counted.
            asyncio.run(_sequential(bench, bench.url(COLD_RECURSIVE), cold[: args.cold_warmup]))

        modes: dict[str, Sequence[str]] = {"hot_keepalive": ()}
        if not args.skip_new_connections:
            modes["new_connection"] = NEW_CONNECTION
        runs: dict[str, dict[str, list[WrkResult]]] = {m: {v: [] for v in VARIANTS} for m in modes}
        collected: dict[str, dict[str, Any]] = {v: {"latencies": [], "failures": [], "queries": {}} for v in VARIANTS}
        samples = cold[args.cold_warmup :]
        for round_no in range(args.rounds):
            order = VARIANTS if round_no % 2 == 0 else VARIANTS[::-1]  # neither always goes first
            for mode, extra in modes.items():
                for variant in order:
                    bench = benches[variant]
                    pid = bench.pid("recursive")
                    pin(pid, server_cpu)
                    try:
                        res = run_wrk(
                            bench.url("recursive"),
                            paths,
                            duration=args.duration,
                            connections=args.connections,
                            cpus=load_cpu,
                            extra=extra,
                        )
                    finally:
                        pin(pid, None)
                    runs[mode][variant].append(res)
                    console.print(
                        f"  round {round_no + 1} {mode:14} {variant:5} {res.rps:8,.0f} req/s"
                        f"  p99 {res.latency_ms.get('p99', 0):6.2f} ms  errors {res.failed + res.non_2xx}"
                    )
            chunk = samples[round_no :: args.rounds]
            for variant in order:
                asyncio.run(_cold_round(benches[variant], chunk, collected[variant]))
            console.print(f"  round {round_no + 1} cold three-level: {len(chunk)} sequential requests on each")
    for mode in modes:
        result[mode] = _paired(runs[mode]["plain"], runs[mode]["tls"])
    cold_figures = {v: _cold_figures(collected[v]) for v in VARIANTS}
    result["cold_three_level"] = {
        **cold_figures,
        "ratio": {
            p: round(cold_figures["tls"][p] / cold_figures["plain"][p], 3) if cold_figures["plain"].get(p) else 0.0
            for p in ("p50", "p90", "p99")
        },
    }
    result["setup"] = {
        "identifiers": len(handles),
        "duration_s": args.duration,
        "connections": args.connections,
        "wrk_threads": 1,
        "rounds": args.rounds,
        "cold_samples": len(samples),
        "cold_warmup": args.cold_warmup,
        "server_cpu": sorted(server_cpu) if server_cpu else None,
        "wrk_cpu": sorted(load_cpu) if load_cpu else None,
        "tls": "local CA, ECDSA P-256 node certificates; wrk does not verify and keeps no session tickets",
    }
    return result


def _ratio(plain: float, tls: float) -> str:
    return f"{tls / plain:.2f}" if plain else "-"


def print_table(result: dict[str, Any], console: Console) -> None:
    table = results_table(
        "idres over plain HTTP and HTTPS (wrk -t1, server pinned to one core)",
        ("measure", "plain HTTP", "TLS", "TLS / plain"),
    )
    connections = result["setup"]["connections"]
    labels = {
        "hot_keepalive": f"hot cache, {connections} keep-alive connections",
        "new_connection": f"new connection per request, {connections} at once",
    }
    for mode, label in labels.items():
        if mode not in result:
            continue
        figures = result[mode]
        p, t = figures["plain"], figures["tls"]
        table.add_row(
            f"{label}: req/s (median)", f"{p['rps_median']:,}", f"{t['rps_median']:,}", f"{figures['ratio']:.2f}"
        )
        table.add_row(
            "  rounds",
            " / ".join(f"{r:,}" for r in p["rps_runs"]),
            " / ".join(f"{r:,}" for r in t["rps_runs"]),
            f"{figures['ratio_paired_median']:.2f} (paired)",
        )
        for pct in ("p50", "p99") if mode == "hot_keepalive" else ():  # wrk times no connect nor handshake
            a, b = p["latency_ms"].get(pct, 0.0), t["latency_ms"].get(pct, 0.0)
            table.add_row(f"  {pct} ms", f"{a:.2f}", f"{b:.2f}", _ratio(a, b))
        table.add_row("  errors", str(p["failed"] + p["non_2xx"]), str(t["failed"] + t["non_2xx"]), "")
    cold = result["cold_three_level"]
    p, t = cold["plain"], cold["tls"]
    table.add_row(f"cold three-level (sequential, {int(p.get('count', 0))} samples)", "", "", "")
    for pct in ("p50", "p90", "p99"):
        table.add_row(
            f"  {pct} ms", f"{p.get(pct, 0):.2f}", f"{t.get(pct, 0):.2f}", _ratio(p.get(pct, 0), t.get(pct, 0))
        )
    table.add_row(
        "  upstream queries / request",
        f"{p['upstream_queries_per_request']:.2f}",
        f"{t['upstream_queries_per_request']:.2f}",
        "",
    )
    table.add_row("  upstream by scheme", _schemes(p), _schemes(t), "")
    table.add_row("  errors", str(p["failed"]), str(t["failed"]), "")
    console.print(table)
    console.print(
        "TLS / plain: under 1 for req/s is what TLS costs in throughput, over 1 for latency what it adds. "
        "New connections: wrk's latencies leave out the connect and the handshake (see the JSON), req/s do not."
    )


def _schemes(figures: dict[str, Any]) -> str:
    return ", ".join(
        f"{scheme} {count:,.0f}" for scheme, count in sorted(figures["upstream_queries_by_scheme"].items())
    )


def parser() -> argparse.ArgumentParser:
    p = command_parser("tls", SUMMARY)
    p.add_argument(
        "--identifiers", type=int, default=20_000, metavar="N", help="Identifiers registered and spread over."
    )
    p.add_argument("--duration", type=float, default=10.0, metavar="SECONDS", help="Seconds of each wrk run.")
    p.add_argument("--connections", type=int, default=64, metavar="N", help="wrk connections.")
    p.add_argument(
        "--rounds", type=int, default=3, metavar="N", help="Interleaved rounds of every wrk target (median reported)."
    )
    p.add_argument(
        "--cold-samples", type=int, default=500, metavar="N", help="Sequential cold resolutions timed on each topology."
    )
    p.add_argument(
        "--cold-warmup", type=int, default=100, metavar="N", help="Cold resolutions before timing (not counted)."
    )
    p.add_argument("--skip-new-connections", action="store_true", help="Do not measure a new connection per request.")
    p.add_argument(
        "--json", type=Path, default=Path("bench-results/tls.json"), metavar="PATH", help="Where the figures go."
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.identifiers < 2 or args.rounds < 1 or args.cold_samples < args.rounds or args.cold_warmup < 0:
        parser().error("need --identifiers >= 2, --rounds >= 1, --cold-samples >= --rounds, --cold-warmup >= 0")
    args.argv = argv
    return report(args, run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
