"""``python -m benchmarks failover``: steady load through the recursive node while a node is SIGKILLed and restarted.

Two scenarios, each on the same topology (the default one on free ports, plus ``automaker-mirror``):

- ``top``: chongqing-top is killed, chengdu-top (its mirror) must carry the load, then chongqing-top
  is restarted and must take it back. The load is identifiers ``88/FO-...`` stored on chongqing-top
  and replicated to chengdu-top, each asked exactly once: every request is a cache miss that the
  recursive node must take to the top level (the zone ``88`` belongs to the root servers themselves,
  so no cached referral lets a request skip the top). That is the worst case for this failover; a
  cached identifier would never notice it (``--hot-fraction`` mixes such requests in to show that).
- ``enterprise``: the automaker node (``88.118.8``) is killed and its mirror must answer, with the
  same kind of load on ``88.118.8/FO-...`` (the recursive node has the referral to both sites cached).

The load is open-loop: request ``i`` is due at ``start + i / rate`` whatever happened to the others,
and its latency is measured from that due time, so a stall is not hidden by the load generator
waiting for it (no coordinated omission, unlike wrk). Every request asks ``trace=true`` so the answer
says which server gave it. Reported: failed requests, p50/p99/max per second, when the backup gave
its first answer after the kill, when latency was back to normal, and when the restarted primary
answered again; a PNG shows latency over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from benchmarks.tools import command_parser, percentile, request_path, results_table
from benchmarks.topology import AUTOMAKER_MIRROR, Cluster, cluster, register

__all__ = ["Sample", "analyse", "main", "per_second"]

SUMMARY = "SIGKILL chongqing-top (and an enterprise node with a mirror) under load, restart it; latency over time."
# Target of issue 5: the p99 of the second in which the primary is killed.
KILL_SECOND_P99_TARGET_MS = 50.0
# What a request may take before it counts as failed (the recursive node's own deadline is 3 s).
CLIENT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    victim: str  # the node killed and restarted
    backup: str  # the node that must answer meanwhile
    node: str  # where the identifiers are registered
    prefix: str  # of the identifiers (and of the operator registering them)


SCENARIOS = {
    "top": Scenario("top", "chongqing-top", "chengdu-top", "chongqing-top", "88"),
    "enterprise": Scenario("enterprise", "automaker", AUTOMAKER_MIRROR, "automaker", "88.118.8"),
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: times in seconds since the load started (``due`` is when it should have been sent)."""

    due: float
    end: float
    status: int  # 0 when no HTTP answer came back
    answered_by: str  # the node name from the trace, "" when unknown
    error: str = ""
    failed_over: bool = False  # a try inside this request failed and another server answered

    @property
    def latency_ms(self) -> float:
        return (self.end - self.due) * 1000

    @property
    def ok(self) -> bool:
        return self.status == 200


def _records(prefix: str, count: int, tag: str) -> list[tuple[str, list[dict[str, Any]]]]:
    return [
        (
            f"{prefix}/{tag}-{i:07d}",
            [
                {"index": 1, "type": "URL", "data": {"format": "string", "value": f"https://example.cn/{tag}/{i}"}},
                {"index": 2, "type": "BATCH", "data": {"format": "string", "value": f"FO-{i % 97:02d}"}},
            ],
        )
        for i in range(count)
    ]


async def _replicated(session: aiohttp.ClientSession, primary: str, mirror: str) -> bool:
    async with session.get(primary + "/healthz") as resp:
        last = (await resp.json())["lastSeq"]
    async with session.get(mirror + "/api/replication/status") as resp:
        status = await resp.json()
    return bool(int(status.get("appliedSeq", 0)) >= int(last))


async def _prepare(bench: Cluster, scenario: Scenario, count: int, hot: int) -> tuple[list[str], list[str]]:
    """Register ``count`` fresh identifiers (and ``hot`` ones, warmed in the recursive node's cache) and
    wait until the backup has every one of them."""
    tag = f"FO{int(time.time()) % 100000}"
    fresh = _records(scenario.prefix, count, tag)
    hot_records = _records(scenario.prefix, hot, tag + "H")
    async with aiohttp.ClientSession() as session:
        await register(session, bench.url(scenario.node), scenario.prefix, bench.secret, fresh + hot_records)
        deadline = time.monotonic() + 120
        while not await _replicated(session, bench.url(scenario.node), bench.url(scenario.backup)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{scenario.backup} did not catch up with {scenario.node} in 120 s")
            await asyncio.sleep(0.2)
        for handle, _ in hot_records:
            async with session.get(bench.url("recursive") + request_path(handle)) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"warming {handle}: HTTP {resp.status}")
    return [h for h, _ in fresh], [h for h, _ in hot_records]


async def _load(
    bench: Cluster,
    scenario: Scenario,
    fresh: list[str],
    hot: list[str],
    *,
    rate: float,
    duration: float,
    hot_fraction: float,
    kill_at: float,
    restart_at: float,
) -> tuple[list[Sample], dict[str, float]]:
    """Run the open-loop load; kill and restart the victim on schedule. Returns samples and event times."""
    names = {spec.url: name for name, spec in bench.topology.nodes.items()}
    url = bench.url("recursive")
    samples: list[Sample] = []
    events: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time()

        async def one(handle: str, due: float) -> None:
            status, by, error, failed_over = 0, "", "", False
            try:
                async with session.get(url + request_path(handle) + "?trace=true") as resp:
                    status = resp.status
                    body = await resp.json()
                if status == 200:
                    hops = body.get("trace", [])
                    answers = [hop for hop in hops if hop.get("outcome", "answer") == "answer"]
                    by = names.get(answers[-1]["address"], answers[-1]["address"]) if answers else ""
                    failed_over = any(hop.get("outcome") == "failure" for hop in hops)
                else:
                    error = str(body.get("message", ""))[:200]
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            samples.append(Sample(due, loop.time() - start, status, by, error, failed_over))

        async def chaos() -> None:
            await asyncio.sleep(max(0.0, start + kill_at - loop.time()))
            events["kill"] = loop.time() - start
            await asyncio.to_thread(bench.kill, scenario.victim)
            await asyncio.sleep(max(0.0, start + restart_at - loop.time()))
            events["restart"] = loop.time() - start
            await asyncio.to_thread(bench.restart, scenario.victim)
            events["restarted"] = loop.time() - start  # answering /healthz again

        chaos_task = asyncio.create_task(chaos())
        tasks: set[asyncio.Task[None]] = set()
        total = int(rate * duration)
        fresh_iter, hot_count = iter(fresh), 0
        hot_every = round(1 / hot_fraction) if hot_fraction > 0 else 0
        for i in range(total):
            due = i / rate
            delay = start + due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if hot_every and i % hot_every == 0:
                handle = hot[hot_count % len(hot)]
                hot_count += 1
            else:
                handle = next(fresh_iter)
            task = asyncio.create_task(one(handle, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        await chaos_task
    samples.sort(key=lambda s: s.due)
    return samples, events


def per_second(samples: Sequence[Sample], backup: str, primary: str) -> list[dict[str, Any]]:
    """p50/p99/max latency, failures and who answered, by second of due time."""
    buckets: dict[int, list[Sample]] = {}
    for s in samples:
        buckets.setdefault(int(s.due), []).append(s)
    out = []
    for second in sorted(buckets):
        group = buckets[second]
        latencies = sorted(s.latency_ms for s in group)
        out.append(
            {
                "second": second,
                "requests": len(group),
                "failed": sum(not s.ok for s in group),
                "p50_ms": round(percentile(latencies, 50), 3),
                "p99_ms": round(percentile(latencies, 99), 3),
                "max_ms": round(latencies[-1], 3),
                "by_primary": sum(s.answered_by == primary for s in group),
                "by_backup": sum(s.answered_by == backup for s in group),
            }
        )
    return out


def analyse(samples: Sequence[Sample], events: dict[str, float], scenario: Scenario) -> dict[str, Any]:
    """The figures of one scenario run (pure: tested without a topology)."""
    kill, restarted = events["kill"], events.get("restarted", float("inf"))
    before = sorted(s.latency_ms for s in samples if s.due < kill)
    normal_p99 = percentile(before, 99) if before else float("nan")
    # "Normal" latency: within twice the p99 before the kill (and at least 10 ms, loopback jitter).
    slow_ms = max(2 * normal_p99, 10.0) if before else 10.0
    after = [s for s in samples if kill <= s.due < restarted]
    first_backup = next((s for s in sorted(after, key=lambda s: s.end) if s.answered_by == scenario.backup), None)
    abnormal = [s for s in after if not s.ok or s.latency_ms > slow_ms]
    # Requests that still tried the dead node first: once they stop, the backup carries the load alone.
    detours = [s for s in after if s.failed_over or not s.ok]
    in_kill_second = sorted(s.latency_ms for s in samples if kill <= s.due < kill + 1)
    back = [s for s in samples if s.due >= events.get("restart", float("inf")) and s.answered_by == scenario.victim]
    failures = [s for s in samples if not s.ok]
    return {
        "requests": len(samples),
        "failed": len(failures),
        "failures": [{"due": round(s.due, 3), "status": s.status, "error": s.error} for s in failures[:20]],
        "p99_before_kill_ms": round(normal_p99, 3),
        "p99_kill_second_ms": round(percentile(in_kill_second, 99), 3),
        "max_kill_second_ms": round(in_kill_second[-1], 3) if in_kill_second else None,
        "first_backup_answer_after_kill_s": round(first_backup.end - kill, 4) if first_backup else None,
        "backup_alone_after_kill_s": round(max(s.end for s in detours) - kill, 4) if detours else 0.0,
        "requests_that_failed_over": len(detours),
        "last_slow_request_after_kill_s": round(max(s.end for s in abnormal) - kill, 4) if abnormal else 0.0,
        "slow_threshold_ms": round(slow_ms, 3),
        "restart_to_healthy_s": round(restarted - events["restart"], 3) if "restart" in events else None,
        "primary_again_after_restart_s": round(min(s.end for s in back) - events["restart"], 4) if back else None,
        "answered_by_primary_after_restart": len(back),
        "events": {k: round(v, 4) for k, v in events.items()},
    }


def draw(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Latency over time per scenario, with the kill and the restart marked (matplotlib, lazily)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("drawing needs matplotlib: pip install -e '.[bench]'") from exc
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.6 * len(results)), squeeze=False)
    for ax, (name, result) in zip(axes[:, 0], results.items(), strict=True):
        seconds = result["per_second"]
        xs = [row["second"] + 0.5 for row in seconds]
        ax.plot(xs, [row["p50_ms"] for row in seconds], marker=".", label="p50")
        ax.plot(xs, [row["p99_ms"] for row in seconds], marker=".", label="p99")
        ax.plot(xs, [row["max_ms"] for row in seconds], linestyle=":", label="max")
        events = result["figures"]["events"]
        ax.axvline(events["kill"], color="red", linestyle="--", label=f"SIGKILL {result['victim']}")
        if "restart" in events:
            ax.axvline(events["restart"], color="green", linestyle="--", label=f"restart {result['victim']}")
        failed = [(row["second"] + 0.5, row["failed"]) for row in seconds if row["failed"]]
        if failed:
            ax.bar([x for x, _ in failed], [n for _, n in failed], color="red", alpha=0.4, label="failed requests")
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel("latency (ms, from due time)")
        ax.set_title(
            f"{name}: {result['rate']:.0f} req/s through the recursive node; "
            f"{result['figures']['failed']} failed; kill-second p99 {result['figures']['p99_kill_second_ms']:.1f} ms"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with cluster(automaker_mirror=True) as bench:
        for name in args.scenario:
            scenario = SCENARIOS[name]
            count = int(args.rate * args.duration) + 10
            hot = 1000 if args.hot_fraction > 0 else 0
            console.print(f"[{name}] registering {count:,} identifiers on {scenario.node}...")
            fresh, hot_handles = asyncio.run(_prepare(bench, scenario, count, hot))
            console.print(
                f"[{name}] {args.rate:.0f} req/s for {args.duration:.0f} s; SIGKILL {scenario.victim} at "
                f"{args.kill_at:.0f} s, restart at {args.restart_at:.0f} s"
            )
            samples, events = asyncio.run(
                _load(
                    bench,
                    scenario,
                    fresh,
                    hot_handles,
                    rate=args.rate,
                    duration=args.duration,
                    hot_fraction=args.hot_fraction,
                    kill_at=args.kill_at,
                    restart_at=args.restart_at,
                )
            )
            results[name] = {
                "victim": scenario.victim,
                "backup": scenario.backup,
                "rate": args.rate,
                "duration": args.duration,
                "hot_fraction": args.hot_fraction,
                "figures": analyse(samples, events, scenario),
                "per_second": per_second(samples, scenario.backup, scenario.victim),
            }
    return results


def print_results(results: dict[str, Any], console: Console) -> None:
    for name, result in results.items():
        f = result["figures"]
        table = results_table(
            f"failover '{name}': kill {result['victim']}, backup {result['backup']}",
            ("second", "requests", "failed", "p50 ms", "p99 ms", "max ms", "primary", "backup"),
        )
        for row in result["per_second"]:
            mark = " kill" if int(f["events"]["kill"]) == row["second"] else ""
            mark += " restart" if "restart" in f["events"] and int(f["events"]["restart"]) == row["second"] else ""
            table.add_row(
                f"{row['second']}{mark}",
                str(row["requests"]),
                str(row["failed"]),
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                f"{row['max_ms']:.2f}",
                str(row["by_primary"]),
                str(row["by_backup"]),
            )
        console.print(table)
        ok = f["failed"] == 0 and f["p99_kill_second_ms"] <= KILL_SECOND_P99_TARGET_MS
        console.print(
            f"{name}: {f['failed']} failed of {f['requests']}; p99 before the kill {f['p99_before_kill_ms']:.2f} ms, "
            f"in the kill second {f['p99_kill_second_ms']:.2f} ms (target <= {KILL_SECOND_P99_TARGET_MS:.0f}) "
            f"{'MET' if ok else 'MISSED'}; first backup answer {f['first_backup_answer_after_kill_s']} s after the "
            f"kill; {f['requests_that_failed_over']} requests failed over inside the request, the backup carried "
            f"the load alone {f['backup_alone_after_kill_s']} s after the kill; the restarted primary answered "
            f"again {f['primary_again_after_restart_s']} s after the restart began "
            f"({f['answered_by_primary_after_restart']} answers from it after that)"
        )


def parser() -> argparse.ArgumentParser:
    p = command_parser("failover", SUMMARY, refuse_secret=True)
    p.add_argument(
        "--scenario",
        nargs="+",
        choices=sorted(SCENARIOS),
        default=["top", "enterprise"],
        metavar="NAME",
        help="Scenarios to run, in order: top (kill chongqing-top; chengdu-top answers meanwhile), enterprise "
        "(kill automaker; automaker-mirror answers).",
    )
    p.add_argument("--rate", type=float, default=300.0, metavar="N", help="Requests per second offered (open loop).")
    p.add_argument("--duration", type=float, default=30.0, metavar="SECONDS", help="Seconds of load per scenario.")
    p.add_argument(
        "--kill-at", type=float, default=10.0, metavar="SECONDS", help="Second at which the node is SIGKILLed."
    )
    p.add_argument("--restart-at", type=float, default=20.0, metavar="SECONDS", help="Second at which it is restarted.")
    p.add_argument(
        "--hot-fraction", type=float, default=0.0, metavar="F", help="Share of requests for cached identifiers."
    )
    p.add_argument(
        "--json", type=Path, default=Path("bench-results/failover.json"), metavar="PATH", help="Where the figures go."
    )
    p.add_argument(
        "--png", type=Path, default=Path("bench-results/failover.png"), metavar="PATH", help="Where the plot goes."
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if not 0 < args.kill_at < args.restart_at < args.duration:
        raise SystemExit("need 0 < --kill-at < --restart-at < --duration")
    console = Console()
    results = run(args, console)
    print_results(results, console)
    out = {"command": "python -m benchmarks failover " + " ".join(argv), "scenarios": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    draw(results, args.png)
    console.print(f"figures written to {args.json}, latency over time drawn in {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
