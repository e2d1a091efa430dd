"""``python -m benchmarks resolve``: hot-cache and cold resolution figures, with the bare-aiohttp baseline.

One run:

1. brings up the default topology on free ports plus ``recursive-cold`` (``benchmarks.topology``), or
   with ``--running TOPOLOGY`` uses nodes that already run;
2. registers ``--identifiers`` records (default 100,000), half on each enterprise node (automaker
   ``88.118.8``, batterymaker ``88.119.6``), plus a separate set for the cold measurements;
3. warms the recursive node by resolving every identifier once, keeping each answer's JSON payload;
4. starts the baseline (``benchmarks.baseline``) in both variants with those payloads, checks that it
   answers byte for byte what the recursive node answers;
5. measures with wrk (``-t1``, ``--connections``, ``--duration``, ``spread.lua`` over every identifier),
   the server under test pinned to CPU 0 and wrk to the last CPU, rounds interleaved: the recursive
   node (hot cache), both baselines, and the automaker node directly;
6. measures cold three-level resolution (top -> secondary -> enterprise, nothing cached) on
   ``recursive-cold`` with sequential requests, and a miss on the normal recursive node whose
   referral is cached (one hop), and checks from ``/metrics`` how many upstream queries each took;
7. prints a table and writes everything to ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from rich.console import Console

from benchmarks.tools import (
    SECRET_ENV,
    WrkResult,
    command_parser,
    ensure_wrk,
    load_cpus,
    parse_prometheus,
    pin,
    report,
    request_path,
    results_table,
    row_label,
    run_wrk,
    summarize,
    write_paths,
)
from benchmarks.topology import COLD_RECURSIVE, Cluster, cluster, free_port, register, wait_until

__all__ = ["bench_records", "machine", "main", "run"]

# What the table calls each target (the JSON keeps the keys).
TARGET_LABELS = {
    "recursive_hot": "recursive node, hot cache",
    "baseline_preencoded": "baseline, pre-encoded bytes",
    "baseline_encode": "baseline, json.dumps per request",
    "authoritative_automaker": "automaker node directly",
    "front_door_redirect": "front door: /{identifier} (302)",
    "front_door_page": "front door: record page (?noredirect)",
    "cold_three_level": "cold, nothing cached (3 hops)",
    "miss_referral_cached": "miss, referral cached (1 hop)",
}
SUMMARY = "Hot-cache and cold resolution through the recursive node, against a bare aiohttp baseline (wrk)."
ENTERPRISES = (("automaker", "88.118.8"), ("batterymaker", "88.119.6"))
# Targets of issue 5.
HOT_RATIO_TARGET = 0.9
COLD_P99_TARGET_MS = 5.0


def bench_records(prefix: str, count: int, tag: str = "BENCH") -> list[tuple[str, list[dict[str, Any]]]]:
    """``count`` records under ``prefix`` shaped like the demo car: a URL, three descriptive values and
    the enterprise's admin value (about 600 bytes of JSON each)."""

    def v(index: int, vtype: str, value: str) -> dict[str, Any]:
        return {"index": index, "type": vtype, "data": {"format": "string", "value": value}}

    admin = {
        "index": 100,
        "type": "HS_ADMIN",
        "data": {"format": "admin", "value": {"handle": f"0.NA/{prefix}", "index": 200, "permissions": "011111110011"}},
    }
    out = []
    for i in range(count):
        serial = f"{tag}-{i:07d}"
        out.append(
            (
                f"{prefix}/{serial}",
                [
                    v(1, "URL", f"https://example.cn/{prefix}/items/{serial}"),
                    v(2, "MODEL", "CQ-EV7 electric SUV"),
                    v(3, "BATCH", f"2026-{i % 12 + 1:02d}-{i % 997:04d}"),
                    v(4, "PRODUCTION_DATE", f"2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}"),
                    admin,
                ],
            )
        )
    return out


def machine() -> dict[str, Any]:
    """The facts docs/benchmarks.md reports with the figures."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "wrk": wrk.split(" [")[0],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- steps ------------------------------------------------------------------------------------------


async def _register_all(bench: Cluster, per_enterprise: int, cold: int) -> dict[str, Any]:
    started = time.perf_counter()
    methods = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
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


async def _warm(url: str, handles: Sequence[str], concurrency: int = 64) -> tuple[dict[str, Any], list[str]]:
    """Resolve every handle once through ``url``: handle -> JSON payload. A handle that fails is asked
    again (up to three times); the failures of the first tries are returned too, they are a finding."""
    payloads: dict[str, Any] = {}
    failures: list[str] = []

    async def worker(session: aiohttp.ClientSession, queue: Iterator[str], failed: list[str]) -> None:
        for handle in queue:
            async with session.get(url + request_path(handle)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    failed.append(handle)
                    failures.append(f"{handle}: HTTP {resp.status} {body[:300]!r}")
                    continue
                payloads[handle] = json.loads(body)

    pending = list(handles)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for _ in range(3):
            failed: list[str] = []
            queue = iter(pending)
            await asyncio.gather(*(worker(session, queue, failed) for _ in range(concurrency)))
            if not failed:
                return payloads, failures
            pending = failed
    raise RuntimeError(f"{len(pending)} identifiers did not resolve while warming, e.g. {failures[-3:]}")


async def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return parse_prometheus(await resp.text())


def _metric_sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


async def _sequential(url: str, handles: Sequence[str]) -> list[float]:
    """Latency in ms of each request, one at a time over one keep-alive connection."""
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for handle in handles:
            started = time.perf_counter()
            async with session.get(url + request_path(handle)) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{handle} via {url}: HTTP {resp.status}")
            out.append((time.perf_counter() - started) * 1000)
    return out


async def _cold(bench: Cluster, samples: int, warmup: int) -> dict[str, Any]:
    """Cold three-level resolution on recursive-cold, and a one-hop miss on the normal recursive node."""
    handles = [h for i in range(samples + warmup) for h in [f"{ENTERPRISES[i % 2][1]}/COLD-{i // 2:07d}"]]
    cold_url, hot_url = bench.url(COLD_RECURSIVE), bench.url("recursive")
    await _sequential(cold_url, handles[:warmup])  # code paths and keep-alive connections warm, not the cache
    before = await _metrics(cold_url)
    cold_ms = await _sequential(cold_url, handles[warmup:])
    after = await _metrics(cold_url)
    queries = _metric_sum(after, "idres_upstream_rtt_seconds_count") - _metric_sum(
        before, "idres_upstream_rtt_seconds_count"
    )
    before = await _metrics(hot_url)
    miss_ms = await _sequential(hot_url, handles[warmup:])  # never asked there: answer missing, referral cached
    after = await _metrics(hot_url)
    miss_queries = _metric_sum(after, "idres_upstream_rtt_seconds_count") - _metric_sum(
        before, "idres_upstream_rtt_seconds_count"
    )
    breakdown = await _hops(cold_url, handles[: min(200, len(handles))])
    return {
        "cold_three_level": {
            **summarize(cold_ms),
            "upstream_queries_per_request": queries / len(cold_ms),
            "median_hop_ms": breakdown,
        },
        "miss_referral_cached": {**summarize(miss_ms), "upstream_queries_per_request": miss_queries / len(miss_ms)},
    }


async def _hops(url: str, handles: Sequence[str]) -> dict[str, float]:
    """Median milliseconds of each hop of a cold resolution, from ``trace=true`` (as the recursive node
    timed them: request, reply and parsing), and of everything else (client, recursive node itself)."""
    columns: dict[str, list[float]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for handle in handles:
            started = time.perf_counter()
            async with session.get(url + request_path(handle) + "?trace=true") as resp:
                body = await resp.json()
            total = (time.perf_counter() - started) * 1000
            hops = body.get("trace", [])
            for number, hop in enumerate(hops, 1):
                columns.setdefault(f"hop{number}_{hop.get('outcome', '?')}", []).append(float(hop["ms"]))
            columns.setdefault("rest", []).append(total - sum(float(h["ms"]) for h in hops))
    return {name: round(statistics.median(values), 3) for name, values in columns.items()}


def _start_baseline(records: Path, mode: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.baseline", "--port", str(port), "--records", str(records), "--mode", mode]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the {mode} baseline exited: {err[-500:]}")
        try:
            import urllib.request

            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    wait_until(up, f"the {mode} baseline on {url}", 30)
    return proc, url


async def _same_bytes(a: str, b: str, handles: Sequence[str]) -> None:
    async with aiohttp.ClientSession() as session:
        for handle in handles:
            bodies = []
            for url in (a, b):
                async with session.get(url + request_path(handle)) as resp:
                    bodies.append((resp.status, resp.headers.get("Content-Type"), await resp.read()))
            if bodies[0] != bodies[1]:
                raise RuntimeError(f"the baseline on {b} does not answer {handle} as {a} does: {bodies}")


def _median_run(runs: list[WrkResult]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r.rps)
    middle = ordered[len(ordered) // 2]
    return {
        "rps": round(middle.rps),
        "rps_runs": [round(r.rps) for r in runs],
        "rps_median": round(statistics.median(r.rps for r in runs)),
        "latency_ms": {k: round(v, 3) for k, v in middle.latency_ms.items()},
        "failed": sum(r.failed for r in runs),
        "non_2xx": sum(r.non_2xx for r in runs),
        "command": middle.command,
    }


# -- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    ensure_wrk()
    per_enterprise = args.identifiers // len(ENTERPRISES)
    cold_count = (args.cold_samples + args.cold_warmup) // 2 + 1
    result: dict[str, Any] = {"machine": machine(), "command": "python -m benchmarks resolve " + " ".join(args.argv)}
    server_cpu, load_cpu = load_cpus()
    with cluster(topology=args.running, running=args.running is not None) as bench:
        work = bench.path.parent
        console.print(f"registering {per_enterprise * 2:,} identifiers (+{cold_count * 2:,} for cold runs)...")
        result["registration"] = asyncio.run(_register_all(bench, per_enterprise, cold_count))
        console.print(f"  {result['registration']}")
        handles = [h for _, prefix in ENTERPRISES for h, _ in bench_records(prefix, per_enterprise)]
        # Interleave the enterprises so the load alternates between the two delegations.
        handles = [h for pair in zip(handles[:per_enterprise], handles[per_enterprise:], strict=True) for h in pair]
        recursive = bench.url("recursive")
        console.print(f"warming {recursive} with {len(handles):,} identifiers...")
        started = time.perf_counter()
        payloads, warm_failures = asyncio.run(_warm(recursive, handles))
        result["warm"] = {
            "seconds": round(time.perf_counter() - started, 2),
            "failed_first_tries": len(warm_failures),
            "failures": warm_failures[:10],
        }
        if warm_failures:
            console.print(f"  {len(warm_failures)} warming requests failed and were retried: {warm_failures[:2]}")
        records_file = work / "records.msgpack"
        records_file.write_bytes(msgpack.packb(payloads, use_bin_type=True))
        all_paths = work / "all.paths"
        write_paths(all_paths, handles)
        automaker_paths = work / "automaker.paths"
        write_paths(automaker_paths, [h for h in handles if h.startswith(ENTERPRISES[0][1] + "/")])

        baselines = {mode: _start_baseline(records_file, mode) for mode in ("preencoded", "encode")}
        try:
            for _, url in baselines.values():
                asyncio.run(_same_bytes(recursive, url, handles[:50]))
            targets = {
                "recursive_hot": (recursive, all_paths, bench.pid("recursive") if not args.running else None),
                "baseline_preencoded": (baselines["preencoded"][1], all_paths, baselines["preencoded"][0].pid),
                "baseline_encode": (baselines["encode"][1], all_paths, baselines["encode"][0].pid),
            }
            if not args.running:
                targets["authoritative_automaker"] = (bench.url("automaker"), automaker_paths, bench.pid("automaker"))
            # Issue 14: what a person's browser costs the recursive node, on the same hot cache.
            pid = bench.pid("recursive") if not args.running else None
            for name, query in (("front_door_redirect", ""), ("front_door_page", "?noredirect")):
                door = work / f"{name}.paths"
                door.write_text("".join(f"{request_path(h).removeprefix('/api/handles')}{query}\n" for h in handles))
                targets[name] = (recursive, door, pid)
            runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
            hits_before = asyncio.run(_metrics(recursive))
            for round_no in range(args.rounds):
                for name, (url, paths, pid) in targets.items():
                    if pid is not None:
                        pin(pid, server_cpu)
                    try:
                        res = run_wrk(url, paths, duration=args.duration, connections=args.connections, cpus=load_cpu)
                    finally:
                        if pid is not None:
                            pin(pid, None)
                    runs[name].append(res)
                    console.print(
                        f"  round {round_no + 1} {name:24} {res.rps:9,.0f} req/s"
                        f"  p99 {res.latency_ms.get('p99', 0):.2f} ms"
                        f"  errors {res.failed} non-2xx {res.non_2xx}"
                    )
            hits_after = asyncio.run(_metrics(recursive))
        finally:
            for proc, _ in baselines.values():
                proc.terminate()
                proc.wait(timeout=10)
        result["load"] = {name: _median_run(r) for name, r in runs.items()}
        misses = _metric_sum(hits_after, "idres_cache_misses_total") - _metric_sum(
            hits_before, "idres_cache_misses_total"
        )
        hits = _metric_sum(hits_after, "idres_cache_hits_total") - _metric_sum(hits_before, "idres_cache_hits_total")
        result["load"]["recursive_hot"]["cache_hits"] = hits
        result["load"]["recursive_hot"]["cache_misses"] = misses
        console.print("cold resolution (sequential requests)...")
        result["cold"] = asyncio.run(_cold(bench, args.cold_samples, args.cold_warmup))
    load = result["load"]
    strict = load["baseline_preencoded"]["rps_median"]
    paired = [
        r / b for r, b in zip(load["recursive_hot"]["rps_runs"], load["baseline_preencoded"]["rps_runs"], strict=True)
    ]
    result["targets"] = {
        "hot_ratio_vs_preencoded": round(load["recursive_hot"]["rps_median"] / strict, 3),
        # Each round runs the recursive node and then the baseline back to back: the median of those
        # ratios is the least disturbed by other work on the machine drifting in and out.
        "hot_ratio_vs_preencoded_paired_median": round(statistics.median(paired), 3),
        "hot_ratio_vs_preencoded_paired": [round(x, 3) for x in paired],
        "hot_ratio_vs_encode": round(load["recursive_hot"]["rps_median"] / load["baseline_encode"]["rps_median"], 3),
        "hot_ratio_target": HOT_RATIO_TARGET,
        "cold_p99_ms": round(result["cold"]["cold_three_level"]["p99"], 3),
        "cold_p99_target_ms": COLD_P99_TARGET_MS,
    }
    result["setup"] = {
        "identifiers": len(handles),
        "duration_s": args.duration,
        "connections": args.connections,
        "wrk_threads": 1,
        "rounds": args.rounds,
        "server_cpu": sorted(server_cpu) if server_cpu else None,
        "wrk_cpu": sorted(load_cpu) if load_cpu else None,
    }
    return result


def print_table(result: dict[str, Any], console: Console) -> None:
    # Short headers and the rounds below the table, so the rows fit 80 columns with their labels whole.
    table = results_table(
        "idres resolve benchmark (wrk -t1, server pinned to one core): req/s of the median round, "
        "latencies in ms; sequential requests for the cold rows",
        ("target", "req/s", "p50", "p90", "p99", "p99.9", "errors"),
    )
    for name, figures in result["load"].items():
        lat = figures["latency_ms"]
        table.add_row(
            TARGET_LABELS.get(name, row_label(name)),
            f"{figures['rps_median']:,}",
            *(f"{lat.get(p, float('nan')):.2f}" for p in ("p50", "p90", "p99", "p99.9")),
            # wrk counts a 302 among its "non-2xx or 3xx" answers: the redirects are the answer there.
            str(figures["failed"] + (0 if name == "front_door_redirect" else figures["non_2xx"])),
        )
    for name, figures in result["cold"].items():
        table.add_row(
            f"{TARGET_LABELS.get(name, row_label(name))}, {int(figures['count'])} samples",
            f"{1000 / figures['mean']:,.0f}",
            *(f"{figures[p]:.2f}" for p in ("p50", "p90", "p99", "p99.9")),
            f"{figures['upstream_queries_per_request']:.2f} hops",
        )
    console.print(table)
    for name, figures in result["load"].items():
        rounds = " / ".join(f"{r:,}" for r in figures["rps_runs"])
        console.print(f"rounds, req/s: {TARGET_LABELS.get(name, row_label(name))}: {rounds}")
    t = result["targets"]
    ok_hot = t["hot_ratio_vs_preencoded_paired_median"] >= t["hot_ratio_target"]
    ok_cold = t["cold_p99_ms"] <= t["cold_p99_target_ms"]
    console.print(
        f"hot cache / pre-encoded baseline: {t['hot_ratio_vs_preencoded']:.3f} (medians), "
        f"{t['hot_ratio_vs_preencoded_paired_median']:.3f} (median of the rounds' ratios "
        f"{t['hot_ratio_vs_preencoded_paired']}); target >= {t['hot_ratio_target']} "
        f"{'MET' if ok_hot else 'MISSED'}; / per-request-encoding baseline: {t['hot_ratio_vs_encode']:.3f}"
    )
    console.print(
        f"cold three-level p99: {t['cold_p99_ms']:.2f} ms (target <= {t['cold_p99_target_ms']} ms) "
        f"{'MET' if ok_cold else 'MISSED'}"
    )


def parser() -> argparse.ArgumentParser:
    p = command_parser("resolve", SUMMARY, refuse_secret=True)
    p.add_argument(
        "--identifiers", type=int, default=100_000, metavar="N", help="Identifiers registered and spread over."
    )
    p.add_argument("--duration", type=float, default=10.0, metavar="SECONDS", help="Seconds of each wrk run.")
    p.add_argument("--connections", type=int, default=64, metavar="N", help="wrk connections.")
    p.add_argument(
        "--rounds", type=int, default=5, metavar="N", help="Interleaved rounds of every wrk target (median reported)."
    )
    p.add_argument("--cold-samples", type=int, default=2000, metavar="N", help="Sequential cold resolutions timed.")
    p.add_argument(
        "--cold-warmup", type=int, default=200, metavar="N", help="Cold resolutions before timing (not counted)."
    )
    p.add_argument(
        "--running",
        type=Path,
        default=None,
        metavar="TOPOLOGY",
        help=f"Use the nodes of this topology file, already running, instead of starting them (their operator "
        f"secret in ${SECRET_ENV}).",
    )
    p.add_argument(
        "--json", type=Path, default=Path("bench-results/resolve.json"), metavar="PATH", help="Where the figures go."
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    return report(args, run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
