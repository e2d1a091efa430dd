"""Topologies for the benchmarks: the default one copied onto free ports, started, seeded, killed and restarted.

A benchmark never uses the default ports (tests or a user's ``idres up`` may hold them): it copies the
default topology the way a user would, moves every node to a free port, and can add nodes to it:

- ``recursive-cold``: a recursive node whose cache keeps nothing (``max_ttl = 0``, ``stale_window = 0``),
  so every request walks top -> secondary -> enterprise. That is what "nothing cached" means, measured
  on a warm process with warm keep-alive connections, without an operator endpoint to flush a cache
  and without restarting a process per sample (which would time Python start-up, not resolution);
- ``automaker-mirror``: a mirror of the automaker enterprise node, for the enterprise failover scenario.

With ``tls``, every node serves HTTPS with a certificate of a local CA made under the cluster's data
directory (``nodes.running.local_ca``, what ``idres up --tls`` runs on), and the nodes talk to each
other over HTTPS; clients trust ``Cluster.topology.tls_ca``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from rich.console import Console

from nodes.running.launcher import NodeProcess, seed_running_nodes, start_nodes, stop_nodes, wait_healthy
from nodes.running.local_ca import ensure_local_tls
from nodes.running.operator_secrets import ENV_SECRET
from nodes.running.topology_file import DEFAULT_TOPOLOGY, load_topology
from resolver.client import basic_auth
from resolver.config import Topology
from resolver.names import prefix_handle
from resolver.tls import client_connector

__all__ = ["COLD_RECURSIVE", "Cluster", "cluster", "register", "topology_text"]

COLD_RECURSIVE = "recursive-cold"
AUTOMAKER_MIRROR = "automaker-mirror"
DEFAULT_SECRET = "benchmark-operator-secret"

_COLD_NODE = """
[nodes.{name}]
role = "recursive"
listen = "127.0.0.1:{port}"
root_hints = ["chongqing-top", "chengdu-top"]
description = "Benchmark recursive node that caches nothing"

[nodes.{name}.cache]
min_ttl = 0
max_ttl = 0        # every answer and referral expires as it is stored
stale_window = 0   # and is never served stale
"""

_MIRROR_NODE = """
[nodes.{name}]
mirror_of = "automaker"
listen = "127.0.0.1:{port}"
description = "Mirror of the carmaker's enterprise node"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def topology_text(base: str, *, cold: bool = True, automaker_mirror: bool = False, move_ports: bool = True) -> str:
    """The topology file ``base`` with every node on a free port and the benchmark's nodes added."""
    text = base
    if move_ports:
        text = re.sub(r'listen = "127\.0\.0\.1:\d+"', lambda _: f'listen = "127.0.0.1:{free_port()}"', text)
    if cold:
        text += _COLD_NODE.format(name=COLD_RECURSIVE, port=free_port())
    if automaker_mirror:
        text += _MIRROR_NODE.format(name=AUTOMAKER_MIRROR, port=free_port())
    return text


@dataclass
class Cluster:
    """A topology whose node processes this benchmark started (or some of them: ``attached``)."""

    topology: Topology
    path: Path
    data: Path
    secret: str
    nodes: list[NodeProcess] = field(default_factory=list)
    tls: bool = False  # every node on HTTPS, its certificates from the local CA under ``data``

    def url(self, name: str) -> str:
        return self.topology.node(name).url

    def process(self, name: str) -> NodeProcess:
        for node in self.nodes:
            if node.spec.name == name:
                return node
        raise KeyError(f"node {name} was not started by this benchmark")

    def pid(self, name: str) -> int:
        return self.process(name).process.pid

    def kill(self, name: str) -> None:
        """SIGKILL: no graceful shutdown, connections reset, exactly a crash."""
        node = self.process(name)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)

    def restart(self, name: str, timeout: float = 30.0) -> None:
        node = self.process(name)
        cmd = [sys.executable, "-m", "nodes", "serve", "--node", name, "--topology", str(self.path)]
        cmd += ["--data", str(self.data)]
        if self.tls:
            cmd.append("--tls")
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        asyncio.run(_wait_healthy([node], timeout, self.topology.tls_ca))

    def stop(self) -> None:
        stop_nodes(self.nodes)


async def _wait_healthy(nodes: list[NodeProcess], timeout: float, cafile: str | None = None) -> None:
    async with aiohttp.ClientSession(connector=client_connector(cafile)) as session:
        await wait_healthy(session, nodes, timeout)


@contextmanager
def cluster(
    *,
    topology: Path | None = None,
    running: bool = False,
    data: Path | None = None,
    automaker_mirror: bool = False,
    tls: bool = False,
) -> Iterator[Cluster]:
    """Start (and at the end stop) a benchmark topology.

    By default: the default topology on free ports plus ``recursive-cold`` (and ``automaker-mirror``
    when asked), seeded with the delegations. With ``running``, ``topology`` names a topology whose
    nodes already run: only ``recursive-cold`` is started beside it. The operator secret is
    ``$IDRES_ADMIN_SECRET`` (the running nodes'), else ``DEFAULT_SECRET`` for the nodes started here;
    never an option, which ``ps`` and shell histories would show.
    With ``tls``, every node serves HTTPS (a local CA under the data directory); not with ``running``.
    """
    if tls and running:
        raise ValueError("tls starts its own nodes with their own CA: it cannot be combined with running")
    secret = os.environ.get(ENV_SECRET) or DEFAULT_SECRET
    with tempfile.TemporaryDirectory(prefix="idres-bench-") as tmp:
        work = Path(tmp)
        data = data or work / "data"
        base = (topology or DEFAULT_TOPOLOGY).read_text(encoding="utf-8")
        path = work / "topology.toml"
        path.write_text(topology_text(base, automaker_mirror=automaker_mirror, move_ports=not running))
        spec = ensure_local_tls(load_topology(path), data) if tls else load_topology(path)
        previous = os.environ.get(ENV_SECRET)
        os.environ[ENV_SECRET] = secret  # the node processes inherit it: a known operator secret
        try:
            if running:
                only = Topology({COLD_RECURSIVE: spec.node(COLD_RECURSIVE)})
                nodes = start_nodes(only, path, data)
            else:
                nodes = start_nodes(spec, path, data, tls=tls)
            bench = Cluster(spec, path, data, secret, nodes, tls=tls)
            try:
                asyncio.run(_wait_healthy(nodes, 60.0, spec.tls_ca))
                if not running and seed_running_nodes(spec, data, Console(quiet=True), demo=True, timeout=30) != 0:
                    raise RuntimeError(f"seeding the benchmark topology failed (logs in {data / 'logs'})")
                yield bench
            finally:
                bench.stop()
        finally:
            if previous is None:
                os.environ.pop(ENV_SECRET, None)
            else:
                os.environ[ENV_SECRET] = previous


# -- registering identifiers ------------------------------------------------------------------------

BATCH_OPS = 10_000  # the most operations one POST /api/batch takes (DESIGN §4)
PUT_CONCURRENCY = 32


async def register(
    session: aiohttp.ClientSession,
    url: str,
    prefix: str,
    secret: str,
    records: Sequence[tuple[str, list[dict[str, Any]]]],
) -> str:
    """Store ``records`` on the node at ``url`` as the operator of ``prefix``: ``POST /api/batch`` when
    the node has it, else concurrent PUTs. Returns the method used ("batch" or "put")."""
    auth = basic_auth(f"300:{prefix_handle(prefix)}", secret)
    if await _batch(session, url, auth, records[:1]):
        for start in range(1, len(records), BATCH_OPS):
            if not await _batch(session, url, auth, records[start : start + BATCH_OPS]):
                raise RuntimeError(f"POST {url}/api/batch stopped working half-way")
        return "batch"
    await _put_all(session, url, auth, records)
    return "put"


async def _batch(
    session: aiohttp.ClientSession, url: str, auth: str, records: Sequence[tuple[str, list[dict[str, Any]]]]
) -> bool:
    body = msgpack.packb(
        {"operations": [{"op": "upsert", "handle": h, "values": v} for h, v in records]}, use_bin_type=True
    )
    headers = {"Authorization": auth, "Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    async with session.post(url + "/api/batch", data=body, headers=headers) as resp:
        if resp.status in (404, 405):
            return False  # no batch endpoint on this node yet
        payload = msgpack.unpackb(await resp.read(), raw=False) if resp.status == 200 else None
    if not isinstance(payload, dict):
        raise RuntimeError(f"POST {url}/api/batch answered HTTP {resp.status}")
    results = payload.get("results", [])
    bad = [r for r in results if isinstance(r, dict) and r.get("responseCode") != 1]
    if bad or len(results) != len(records):
        raise RuntimeError(f"POST {url}/api/batch: {len(bad)} of {len(records)} operations failed, e.g. {bad[:2]}")
    return True


async def _put_all(
    session: aiohttp.ClientSession, url: str, auth: str, records: Iterable[tuple[str, list[dict[str, Any]]]]
) -> None:
    queue = iter(records)
    headers = {"Authorization": auth, "Content-Type": "application/msgpack", "Accept": "application/msgpack"}

    async def worker() -> None:
        for handle, values in queue:  # one shared iterator: each record is taken by one worker
            body = msgpack.packb({"values": values}, use_bin_type=True)
            for attempt in range(3):
                try:
                    async with session.put(
                        f"{url}/api/handles/{handle}?overwrite=true", data=body, headers=headers
                    ) as resp:
                        if resp.status in (200, 201):
                            break
                        text = await resp.read()
                        raise RuntimeError(f"PUT {handle} on {url}: HTTP {resp.status} {text[:200]!r}")
                except aiohttp.ClientError:
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(worker() for _ in range(PUT_CONCURRENCY)))


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")
