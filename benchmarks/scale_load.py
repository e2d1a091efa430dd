"""The scale benchmark's load: datagen's records in chunks through `idres register`, and processes' memory.

The records are generated once, in file order, by one ``datagen.rows`` generator; each chunk is
written to its own CSV file, registered with ``idres register`` (timed), and deleted, so at 10M
neither the file (1.5 GB) nor the records are ever held whole, and each chunk's time is a load rate
at that size. On the way, a seeded random sample of the handles is kept for the GET runs: one over
everything loaded, one over the first ``checkpoint`` records (the same node measured at 100k).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.bulk import _children, _rss_kib
from benchmarks.datagen import COLUMNS, rows
from resolver.names import prefix_handle

__all__ = ["PREFIX", "Loaded", "PeakRss", "database_bytes", "first_handles", "load", "tree_rss_kib"]

PREFIX = "88.118.8"  # the automaker's prefix in the default topology
OPERATOR = f"300:{prefix_handle(PREFIX)}"


@dataclass
class Loaded:
    """What the load did: one entry per chunk, and the handles kept for the GET runs."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    sample: list[str] = field(default_factory=list)  # random over every record loaded
    early: list[str] = field(default_factory=list)  # random over the first ``checkpoint`` records
    last: str = ""  # the last handle of the file: outside the recursive fill's first identifiers
    at_checkpoint: dict[str, Any] = field(default_factory=dict)


def _boundaries(total: int, chunk: int, checkpoint: int) -> list[int]:
    """Where the chunks end: every ``chunk`` records, at ``checkpoint`` (when inside), and at ``total``."""
    ends = set(range(chunk, total, chunk)) | {total}
    if 0 < checkpoint < total:
        ends.add(checkpoint)
    return sorted(ends)


def _register(path: Path, url: str, secret: str, concurrency: int) -> None:
    cmd = [sys.executable, "-m", "nodes", "register", str(path), "--server", url, "--user", OPERATOR]
    cmd += ["--quiet", "--concurrency", str(concurrency)]
    done = subprocess.run(cmd, env={**os.environ, "IDRES_SECRET": secret}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = f"{done.stdout[-500:]} {done.stderr[-500:]}"
        raise RuntimeError(f"idres register {path.name} failed ({done.returncode}): {output}")


def load(
    url: str,
    secret: str,
    total: int,
    work: Path,
    *,
    chunk: int,
    checkpoint: int,
    sample_size: int,
    concurrency: int,
    seed: int,
    at_checkpoint: Callable[[list[str]], dict[str, Any]],
    progress: Callable[[str], None],
) -> Loaded:
    """Register ``total`` datagen records on the node at ``url`` in chunks; ``at_checkpoint`` is called
    with the early sample once the first ``checkpoint`` records are in (its answer is kept)."""
    draw = random.Random(seed)
    wanted = set(draw.sample(range(total), min(total, sample_size)))
    wanted_early = set(draw.sample(range(checkpoint), min(checkpoint, sample_size))) if checkpoint else set()
    out = Loaded()
    source = rows(total, PREFIX, seed)
    header = ",".join(["handle", *COLUMNS]) + "\n"
    done = 0
    for end in _boundaries(total, chunk, checkpoint):
        path = work / f"chunk-{done:09d}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            f.write(header)
            lines: list[str] = []
            for number in range(done, end):
                row = next(source)
                if number in wanted:
                    out.sample.append(row[0])
                if number in wanted_early:
                    out.early.append(row[0])
                lines.append(",".join(row))  # datagen's CSV: no cell holds a comma, quote or newline
                if len(lines) >= 10_000:
                    f.write("\n".join(lines) + "\n")
                    lines.clear()
            if lines:
                f.write("\n".join(lines) + "\n")
        started = time.perf_counter()
        _register(path, url, secret, concurrency)
        seconds = time.perf_counter() - started
        path.unlink()
        records = end - done
        out.chunks.append(
            {"from": done, "to": end, "seconds": round(seconds, 2), "per_second": round(records / seconds)}
        )
        progress(f"  {done:>12,} - {end:>12,}: {records / seconds:>9,.0f} records/s ({seconds:.1f} s)")
        out.last = row[0]
        done = end
        if end == checkpoint:
            draw.shuffle(out.early)
            out.at_checkpoint = at_checkpoint(out.early)
    draw.shuffle(out.sample)  # file order is key order within a batch: spread.lua would walk the index in order
    return out


def first_handles(total: int, count: int, seed: int) -> Iterator[str]:
    """The first ``count`` handles ``load`` registered (the same generator, so the same names)."""
    for number, row in enumerate(rows(total, PREFIX, seed)):
        if number >= count:
            return
        yield row[0]


def database_bytes(data: Path, node: str) -> dict[str, int]:
    """Sizes of a node's SQLite file and its write-ahead log (and shared-memory index)."""
    sizes = {"database": 0, "wal": 0, "shm": 0}
    for path in data.glob(f"{node}.sqlite3*"):
        kind = "wal" if path.name.endswith("-wal") else "shm" if path.name.endswith("-shm") else "database"
        sizes[kind] += path.stat().st_size
    return sizes


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants (a node's batch or recursive workers)."""
    return _rss_kib(pid) + sum(tree_rss_kib(child) for child in _children(pid))


class PeakRss:
    """Samples named processes' resident memory (own, and with their descendants) every ``interval``
    seconds in a thread, for ``with`` block; ``peak`` and ``last`` in KiB."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.peak_tree: dict[str, int] = dict.fromkeys(pids, 0)
        self.last: dict[str, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for name, pid in self.pids.items():
                own, tree = _rss_kib(pid), tree_rss_kib(pid)
                self.last[name] = own
                self.peak[name] = max(self.peak[name], own)
                self.peak_tree[name] = max(self.peak_tree[name], tree)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
