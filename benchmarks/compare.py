"""``python -m benchmarks compare --against REV``: the recursive node's hot path, this checkout vs REV.

A refactor must not slow the hot path, but ``python -m benchmarks resolve`` measures it against a
bare-aiohttp baseline, and on a shared machine its rounds spread by ±10%: too coarse to tell two
versions of the code apart. This benchmark runs both versions side by side on identical input and
compares them directly:

1. a git worktree of REV in a temporary directory (removed at the end);
2. a stub top-level node (``benchmarks.baseline``, bare aiohttp) that answers every identifier with
   the same four-value record; the recursive nodes only ask it while warming;
3. two recursive nodes of one topology whose root hint is the stub: REV's code and this checkout's,
   each pinned to CPU 0, each warmed twice over every identifier (the second pass finds them cached,
   so every later request is a hot-path hit);
4. wrk (``spread.lua``, CPU 1) against each node in turn, ``--rounds`` times: a disturbance of the
   machine hits both alike, and the figure is the median of the rounds' ratios (this / REV).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import msgpack

from benchmarks.tools import command_parser, load_cpus, pin, run_wrk, write_paths

__all__ = ["main", "parser"]

SUMMARY = "The recursive node's hot path, this checkout against a git revision (--against REV), side by side."
ROOT = Path(__file__).resolve().parents[1]
# A recursive node of a two-node topology, served the way `idres serve` does; this code runs under
# both versions, so it finds serve_node where each keeps it.
_SERVE = """
import sys
from pathlib import Path
from resolver.config import parse_topology
try:
    from nodes.running.serve import serve_node
except ImportError:  # before the layout by role
    from nodes.serve import serve_node
port, top = sys.argv[1], sys.argv[2]
topology = parse_topology({"nodes": {
    "top": {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{top}"},
    "recursive": {"role": "recursive", "listen": f"127.0.0.1:{port}", "root_hints": ["top"]},
}})
serve_node(topology, "recursive", Path(sys.argv[3]))
"""
_RECORD = [
    {"index": 1, "type": "URL", "data": {"format": "string", "value": "https://automaker.example.cn/v/1"}},
    {"index": 2, "type": "MODEL", "data": {"format": "string", "value": "CQ-EV7 electric SUV"}},
    {"index": 3, "type": "BATCH", "data": {"format": "string", "value": "2026-11-CQ-0417"}},
    {
        "index": 100,
        "type": "HS_ADMIN",
        "data": {"format": "admin", "value": {"handle": "0.NA/88.118.8", "index": 200, "permissions": "011111110011"}},
    },
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _worktree(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="idres-compare-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def _start(args: list[str], tree: Path, log: Path, cpus: set[int] | None) -> subprocess.Popen[bytes]:
    """``python ARGS`` with ``tree``'s code, pinned to ``cpus``, its output in ``log``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    pin(proc.pid, cpus)
    return proc


async def _warm(urls: list[str], stub: str, paths: list[str], deadline: float) -> None:
    """Once the stub and both nodes answer ``/healthz``, resolve every path twice through each node."""
    async with aiohttp.ClientSession() as session:
        for url in (stub, *urls):
            while True:  # until it listens
                try:
                    async with session.get(url + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not start")
                await asyncio.sleep(0.2)
        gate = asyncio.Semaphore(64)

        async def one(url: str, path: str) -> None:
            async with gate, session.get(url + path) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}{path}: HTTP {r.status}")

        for url in urls:
            for _ in range(2):  # the second pass is answered from the cache and kept for the hot path
                await asyncio.gather(*(one(url, p) for p in paths))


def compare(rev: str, identifiers: int, rounds: int, duration: float, out: Path | None) -> dict[str, object]:
    handles = [f"88.118.8/AB-{i:07d}" for i in range(identifiers)]
    with _worktree(rev) as before_tree, tempfile.TemporaryDirectory(prefix="idres-compare-run-") as tmp:
        work = Path(tmp)
        paths_file = work / "paths.txt"
        write_paths(paths_file, handles)
        records = work / "records.msgpack"
        records.write_bytes(msgpack.packb({h: {"responseCode": 1, "handle": h, "values": _RECORD} for h in handles}))
        server_cpus, load_cpus_ = load_cpus()
        top = _free_port()
        ports = {"before": _free_port(), "after": _free_port()}
        trees = {"before": before_tree, "after": ROOT}
        stub = ["-m", "benchmarks.baseline", "--port", str(top), "--records", str(records)]
        procs = [_start(stub, ROOT, work / "top.log", load_cpus_)]
        try:
            for side, port in ports.items():
                args = ["-c", _SERVE, str(port), str(top), str(work / side)]
                procs.append(_start(args, trees[side], work / f"{side}.log", server_cpus))
            urls = {side: f"http://127.0.0.1:{port}" for side, port in ports.items()}
            paths = [line for line in paths_file.read_text().splitlines() if line]
            print(f"warming both nodes with {identifiers:,} identifiers...", flush=True)
            asyncio.run(_warm(list(urls.values()), f"http://127.0.0.1:{top}", paths, time.monotonic() + 60))
            rates: dict[str, list[float]] = {"before": [], "after": []}
            for n in range(1, rounds + 1):
                for side in ("before", "after"):
                    result = run_wrk(urls[side], paths_file, duration=duration, cpus=load_cpus_)
                    if result.failed or result.non_2xx:
                        raise RuntimeError(f"{side}: {result.failed} failed and {result.non_2xx} non-2xx answers")
                    rates[side].append(result.rps)
                    print(f"  round {n} {side:<6} {result.rps:>10,.0f} req/s", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=10)
    ratios = [a / b for a, b in zip(rates["after"], rates["before"], strict=True)]
    figures: dict[str, object] = {
        "against": rev,
        "identifiers": identifiers,
        "rounds": rounds,
        "duration": duration,
        "before_rps": rates["before"],
        "after_rps": rates["after"],
        "ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        "ratio_of_medians": round(statistics.median(rates["after"]) / statistics.median(rates["before"]), 3),
    }
    print(
        f"this checkout / {rev}: {figures['median_ratio']} (median of the rounds' ratios {figures['ratios']}), "
        f"{figures['ratio_of_medians']} (ratio of the medians: {statistics.median(rates['after']):,.0f} / "
        f"{statistics.median(rates['before']):,.0f} req/s)"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2))
    return figures


def parser() -> argparse.ArgumentParser:
    p = command_parser("compare", SUMMARY)
    p.add_argument("--against", required=True, metavar="REV", help="Git revision to compare this checkout with.")
    p.add_argument(
        "--identifiers", type=int, default=100_000, metavar="N", help="Cached identifiers the load spreads over."
    )
    p.add_argument("--rounds", type=int, default=10, metavar="N", help="Interleaved wrk runs of each version.")
    p.add_argument("--duration", type=float, default=5.0, metavar="SECONDS", help="Seconds of each wrk run.")
    p.add_argument(
        "--json", type=Path, default=Path("bench-results/compare.json"), metavar="PATH", help="Where the figures go."
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    compare(args.against, args.identifiers, args.rounds, args.duration, args.json)
    return 0
