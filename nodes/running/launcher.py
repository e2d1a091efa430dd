"""``idres up``: every node of a topology as its own process, registered, seeded, and stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from nodes.running.operator_secrets import ENV_SECRET, SECRETS_FILE, operator_secrets
from nodes.running.seeding import DEMO_CAR, Seeded, register_topology
from nodes.running.serve import LAUNCHER_PID_ENV
from resolver.client import HandleClient
from resolver.config import NodeSpec, Topology
from resolver.errors import ConfigError, HandleError
from resolver.names import prefix_handle
from resolver.tls import client_connector

__all__ = ["NodeProcess", "seed_running_nodes", "start_nodes", "stop_nodes", "up"]

# A node opens its SQLite file and binds its port in well under a second; 30 s leaves room for a
# slow disk or a loaded CI machine before we call it broken.
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(slots=True)
class NodeProcess:
    spec: NodeSpec
    process: subprocess.Popen[bytes]
    log_path: Path


def ports_in_use(topology: Topology) -> list[NodeSpec]:
    """Nodes whose address something else already listens on (checked before starting anything, so
    a second `idres up` fails clearly instead of talking to the first one's nodes)."""
    busy = []
    for spec in topology.nodes.values():
        with socket.socket(socket.AF_INET6 if ":" in spec.host else socket.AF_INET) as probe:
            # As the nodes themselves bind (aiohttp sets SO_REUSEADDR): TIME_WAIT is not "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((spec.host, spec.port))
            except OSError:
                busy.append(spec)
    return busy


def _serve_args(name: str, topology_path: Path | None, data_dir: Path, tls: bool) -> list[str]:
    """The arguments of ``idres serve`` that run node ``name`` as ``idres up`` does."""
    args = ["serve", "--node", name, "--data", str(data_dir)]
    if topology_path is not None:
        args += ["--topology", str(topology_path)]
    return [*args, "--tls"] if tls else args


def start_nodes(
    topology: Topology, topology_path: Path | None, data_dir: Path, *, tls: bool = False
) -> list[NodeProcess]:
    """Start one ``idres serve`` process per node (``--tls``: on the local CA's HTTPS, see
    ``nodes.running.local_ca``); each writes its log to ``DATA/logs/NAME.log``."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    env = {**os.environ, LAUNCHER_PID_ENV: str(os.getpid())}
    for spec in topology.nodes.values():
        cmd = [sys.executable, "-m", "nodes", *_serve_args(spec.name, topology_path, data_dir, tls)]
        log_path = logs / f"{spec.name}.log"
        with open(log_path, "ab") as log:
            # Own process group: a Ctrl-C reaches the launcher, which stops every node in order.
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )
        started.append(NodeProcess(spec, proc, log_path))
    return started


def stop_nodes(nodes: list[NodeProcess]) -> None:
    """SIGTERM every node, wait for them to close their databases, SIGKILL any that hang."""
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_reachable(session: aiohttp.ClientSession, specs: list[NodeSpec], timeout: float) -> None:
    """Wait until every node answers /healthz (nodes started by someone else, e.g. docker compose)."""
    deadline = time.monotonic() + timeout
    pending = list(specs)
    while pending:
        for spec in list(pending):
            try:
                async with session.get(spec.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        pending.remove(spec)
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
        if pending and time.monotonic() > deadline:
            raise ConfigError(f"nodes not reachable after {timeout:.0f} s: " + ", ".join(s.url for s in pending))
        if pending:
            await asyncio.sleep(0.2)


def seed_running_nodes(topology: Topology, data_dir: Path, console: Console, *, demo: bool, timeout: float) -> int:
    """Register delegations, hosted prefixes and (optionally) demo data on nodes already running."""
    secrets = operator_secrets(data_dir.resolve(), [n.name for n in topology.primaries()])

    async def run() -> list[Seeded]:
        async with aiohttp.ClientSession(connector=client_connector(topology.tls_ca)) as session:
            await wait_reachable(session, topology.primaries(), timeout)
            return await register_topology(HandleClient(session), topology, secrets, demo=demo)

    try:
        done = asyncio.run(run())
    except (ConfigError, HandleError) as exc:
        console.print(f"[red]idres seed failed:[/red] {exc}")
        return 1
    for item in done:
        console.print(f"{item.node:16} {item.handle:40} {item.what}")
    return 0


async def wait_healthy(
    session: aiohttp.ClientSession, nodes: list[NodeProcess], timeout: float = STARTUP_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for node in list(pending):
            if node.process.poll() is not None:
                raise ConfigError(
                    f"node {node.spec.name} exited with status {node.process.returncode}; "
                    f"its log ({node.log_path}) ends with:\n{_tail(node.log_path)}"
                )
            try:
                async with session.get(node.spec.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        pending.remove(node)
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
        if pending and time.monotonic() > deadline:
            names = ", ".join(n.spec.name for n in pending)
            raise ConfigError(f"nodes not healthy after {timeout:.0f} s: {names} (see {nodes[0].log_path.parent})")
        if pending:
            await asyncio.sleep(0.1)


async def _bring_up(topology: Topology, nodes: list[NodeProcess], secrets: dict[str, str]) -> list[Seeded]:
    async with aiohttp.ClientSession(connector=client_connector(topology.tls_ca)) as session:
        await wait_healthy(session, nodes)
        return await register_topology(HandleClient(session), topology, secrets)


def _print_summary(
    console: Console, topology: Topology, data_dir: Path, seeded: list[Seeded], secrets: dict[str, str]
) -> None:
    table = Table(title="idres: nodes running")
    for column in ("node", "role", "prefix", "URL", "operator identity"):
        table.add_column(column)
    for spec in topology.nodes.values():
        role = f"mirror of {spec.mirror_of}" if spec.mirror_of else spec.role
        table.add_row(
            spec.name,
            role,
            spec.prefix or "-",
            spec.url,
            f"300:{prefix_handle(spec.prefix)}" if spec.prefix and not spec.is_mirror else "-",
        )
    console.print(table)
    console.print(f"Data directory: {data_dir} (logs in {data_dir / 'logs'})")
    if os.environ.get(ENV_SECRET):
        console.print(f"Operator secrets: all nodes use ${ENV_SECRET}.")
    else:
        console.print(f"Operator secrets (kept in {data_dir / SECRETS_FILE}, mode 0600):")
        for name, secret in secrets.items():
            console.print(f"  {name:16} {secret}")
    console.print(f"Registered: {len(seeded)} delegations, hosted prefixes and demo identifiers.")
    root = topology.roots()[0].url if topology.roots() else "http://127.0.0.1:8100"
    recursive = next((n for n in topology.nodes.values() if n.role == "recursive"), None)
    cacert = f" --cacert {topology.tls_ca}" if topology.tls_ca else ""
    if topology.tls_ca:
        console.print(f"HTTPS: certificates from the local CA {topology.tls_ca}; clients verify against it.")
    console.print("\nTry:")
    if recursive is not None:
        console.print(f"  idres resolve {DEMO_CAR} --server {recursive.url}{cacert}")
        console.print(f"  curl -s{cacert} '{recursive.url}/api/handles/{DEMO_CAR}?trace=true'")
    console.print(f"  idres resolve {DEMO_CAR} --server {root}{cacert}")
    console.print(f"  curl -s{cacert} {root}/api/handles/0.NA/88.118")
    automaker = next((n for n in topology.primaries() if n.prefix == "88.118.8"), None)
    if automaker is not None:
        console.print(f"  curl -s{cacert} {automaker.url}/api/handles/{DEMO_CAR}")
    console.print("\nPress Ctrl-C to stop every node.")


def up(topology: Topology, topology_path: Path | None, data_dir: Path, console: Console, *, tls: bool = False) -> int:
    """Run the topology until Ctrl-C or SIGTERM (``tls``: its nodes started with ``--tls``, so
    ``topology`` is the one ``local_ca.ensure_local_tls`` returned); every node is stopped before
    this returns."""
    data_dir = data_dir.resolve()
    primaries = [n.name for n in topology.primaries()]
    secrets = operator_secrets(data_dir, primaries)
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, request_stop)
    # Ctrl-C too, explicitly: a process started in the background by a shell without job control
    # inherits SIGINT ignored, and `kill -INT` must still stop every node.
    previous_int = signal.signal(signal.SIGINT, request_stop)
    nodes: list[NodeProcess] = []
    try:
        busy = ports_in_use(topology)
        if busy:
            console.print(
                "[red]idres up cannot start:[/red] "
                + "; ".join(f"{spec.host}:{spec.port} ({spec.name}) is in use" for spec in busy)
                + ". Is another `idres up` running? Stop it, or give the nodes other ports with --topology."
            )
            return 1
        nodes = start_nodes(topology, topology_path, data_dir, tls=tls)
        try:
            seeded = asyncio.run(_bring_up(topology, nodes, secrets))
        except (ConfigError, HandleError) as exc:
            console.print(f"[red]idres up failed:[/red] {exc}")
            return 1
        _print_summary(console, topology, data_dir, seeded, secrets)
        reported: set[str] = set()
        while True:
            # A node that dies is reported, not fatal: the others keep serving (that is what mirrors
            # and failover are for), and the operator restarts it with the command shown.
            for node in nodes:
                if node.process.poll() is not None and node.spec.name not in reported:
                    reported.add(node.spec.name)
                    restart = " ".join(["idres", *_serve_args(node.spec.name, topology_path, data_dir, tls)])
                    console.print(
                        f"[red]node {node.spec.name} exited with status {node.process.returncode}[/red]; "
                        f"the other nodes keep running. Its log ends with:\n{_tail(node.log_path)}\n"
                        f"Restart it with: {restart}"
                    )
            if len(reported) == len(nodes):
                console.print("[red]every node has exited[/red]")
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("Stopping every node...")
        return 0
    finally:
        stop_nodes(nodes)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
