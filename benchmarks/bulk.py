"""``python -m benchmarks bulk``: file -> `idres register` -> an enterprise node's SQLite, against sqlite3.

In one run: generate N records (``benchmarks.datagen``), start an enterprise node (``idres serve`` on a
copy of the default topology with free ports, its ``durability`` as ``--durability`` asks), time
``idres register`` loading the file over HTTP while sampling the resident memory of the node and of
its batch worker processes; then insert the same rows with plain ``sqlite3`` ``executemany`` in one
transaction at the same synchronous level (the baseline: no HTTP, no validation, no change log).
Prints both rates, their ratio, the peak RSS of the node (and with its workers) and the size of its
database, and writes them as JSON.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack

from benchmarks.datagen import write
from benchmarks.tools import SECRET_ENV
from nodes.running.topology_file import DEFAULT_TOPOLOGY

__all__ = ["DURABILITY", "run_bulk", "with_durability"]

SECRET = "bulk-benchmark-secret"  # of the node this benchmark starts, unless $IDRES_ADMIN_SECRET is set
DURABILITY = ("full", "normal")  # the topology's durability values (resolver.config.DURABILITY)


def with_durability(text: str, node: str, durability: str) -> str:
    """The topology file ``text`` with ``durability`` set on ``node`` (added first in its table)."""
    header = f"[nodes.{node}]\n"
    if text.count(header) != 1:
        raise ValueError(f"the topology has no single [nodes.{node}] table")
    return text.replace(header, f'{header}durability = "{durability}"\n')


def _free_ports(text: str) -> str:
    """The default topology with every node on a free port, so a running `idres up` is not disturbed."""

    def free(_: re.Match[str]) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f'listen = "127.0.0.1:{s.getsockname()[1]}"'

    return re.sub(r'listen = "127\.0\.0\.1:\d+"', free, text)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy")


def baseline_sqlite(csv_path: Path, db_path: Path, durability: str = "full") -> float:
    """Seconds to insert every row of ``csv_path`` (key + msgpack of its cells) with executemany, one
    transaction, WAL and the node's synchronous level: the floor of what SQLite itself costs."""
    started = time.perf_counter()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    db.execute("CREATE TABLE handles (key TEXT PRIMARY KEY, vals BLOB NOT NULL) WITHOUT ROWID")
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows)
        packb = msgpack.packb
        with db:
            db.executemany(
                "INSERT INTO handles VALUES (?, ?)",
                (
                    (
                        row[0],
                        packb([[i, t, v] for i, (t, v) in enumerate(zip(header[1:], row[1:], strict=True), 1) if v]),
                    )
                    for row in rows
                ),
            )
    db.close()
    return time.perf_counter() - started


def run_bulk(
    count: int, out_dir: Path | None, concurrency: int, batch_size: int, durability: str = "full"
) -> dict[str, Any]:
    if durability not in DURABILITY:
        raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, not {durability!r}")
    work = Path(tempfile.mkdtemp(prefix="idres-bulk-"))
    try:
        return _run_bulk(work, count, out_dir, concurrency, batch_size, durability)
    finally:
        # Each run writes its records twice (the node's file and the baseline's): ~900 MB at 1M,
        # which piled up in /tmp run after run while the directory was left behind.
        shutil.rmtree(work, ignore_errors=True)


def _run_bulk(
    work: Path, count: int, out_dir: Path | None, concurrency: int, batch_size: int, durability: str
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    data_file = work / "records.csv"
    started = time.perf_counter()
    with data_file.open("w", encoding="utf-8", newline="") as f:
        write(f, count, "88.118.8", fmt="csv")
    generated = time.perf_counter() - started

    topology = work / "topology.toml"
    topology.write_text(with_durability(_free_ports(DEFAULT_TOPOLOGY.read_text()), "automaker", durability))
    import tomllib

    url = "http://" + tomllib.loads(topology.read_text())["nodes"]["automaker"]["listen"]
    secret = os.environ.get(SECRET_ENV) or SECRET
    env = {**os.environ, SECRET_ENV: secret, "IDRES_SECRET": secret}
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodes",
            "serve",
            "--node",
            "automaker",
            "--topology",
            str(topology),
            "--data",
            str(work / "data"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    peak = workers_peak = total_peak = 0  # KiB: the node's process, its batch workers, both at once
    sampling = True

    def sample() -> None:
        nonlocal peak, workers_peak, total_peak
        while sampling:
            own = _rss_kib(node.pid)
            workers = sum(_rss_kib(child) for child in _children(node.pid))
            peak, workers_peak, total_peak = max(peak, own), max(workers_peak, workers), max(total_peak, own + workers)
            time.sleep(0.1)

    try:
        _wait_healthy(url)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        load = subprocess.run(
            [
                sys.executable,
                "-m",
                "nodes",
                "register",
                str(data_file),
                "--server",
                url,
                "--user",
                "300:0.NA/88.118.8",
                "--quiet",
                "--concurrency",
                str(concurrency),
                "--batch-size",
                str(batch_size),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        loaded = time.perf_counter() - started
        sampling = False
        sampler.join()
        if load.returncode != 0:
            raise RuntimeError(f"idres register failed ({load.returncode}): {load.stdout[-500:]} {load.stderr[-500:]}")
    finally:
        sampling = False
        node.terminate()
        node.wait(timeout=20)

    database = sum(f.stat().st_size for f in (work / "data").glob("automaker.sqlite3*"))
    base_seconds = baseline_sqlite(data_file, work / "baseline.sqlite3", durability)
    result = {
        "identifiers": count,
        "idres_register": {"seconds": round(loaded, 2), "per_second": round(count / loaded)},
        "sqlite3_executemany": {"seconds": round(base_seconds, 2), "per_second": round(count / base_seconds)},
        "ratio": round((count / loaded) / (count / base_seconds), 3),
        "node_peak_rss_mib": round(peak / 1024, 1),
        "workers_peak_rss_mib": round(workers_peak / 1024, 1),
        "database_mib": round(database / 1_048_576, 1),  # records and change log, after the node stopped
        "node_and_workers_peak_rss_mib": round(total_peak / 1024, 1),
        "generate_seconds": round(generated, 2),
        "options": {"concurrency": concurrency, "batch_size": batch_size, "durability": durability},
        "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "register_summary": load.stdout.strip().splitlines()[-1:] if load.stdout else [],
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bulk.json").write_text(json.dumps(result, indent=2))
    return result
