"""``idres up``: every node of a topology as its own process, registered, seeded, and stopped together."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from nodes.running.operator_secrets import (
    ENV_SECRET,
    SECRETS_FILE,
    operator_secrets,
    secret_mismatches,
    secret_source,
)
from nodes.running.seeding import Seeded, register_topology
from nodes.running.serve import LAUNCHER_PID_ENV, db_path
from nodes.running.summary import idres_words, print_command, print_summary, say, shown_path
from resolver.client import HandleClient
from resolver.config import NodeSpec, Topology
from resolver.errors import ConfigError, HandleError
from resolver.tls import node_session

__all__ = [
    "NodeProcess",
    "busy_ports",
    "checked_secrets",
    "refuse_other_secrets",
    "seed_running_nodes",
    "start_nodes",
    "stop_nodes",
    "up",
]

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


def busy_ports(topology: Topology) -> str | None:
    """Why ``idres up`` cannot start when something already listens on a node's address, else None.
    Asked before anything is created: a refused start leaves no data directory behind."""
    busy = ports_in_use(topology)
    if not busy:
        return None
    return (
        "; ".join(f"{spec.host}:{spec.port} ({spec.name}) is in use" for spec in busy)
        + ". Is another `idres up` running? Stop it, or give the nodes other ports with --topology."
    )


def checked_secrets(
    topology: Topology, data_dir: Path, *, create: bool, replace_secrets: bool | None = None
) -> dict[str, str]:
    """The primaries' operator secrets (``operator_secrets``), refused with a ConfigError when a node's
    database holds another one (``refuse_other_secrets``)."""
    secrets = operator_secrets(data_dir, [n.name for n in topology.primaries()], create=create)
    if not replace_secrets:
        refuse_other_secrets(topology, data_dir, secrets, replace_secrets=replace_secrets)
    return secrets


def refuse_other_secrets(
    topology: Topology, data_dir: Path, secrets: dict[str, str], *, replace_secrets: bool | None = None
) -> None:
    """A ConfigError if a primary's database holds another operator secret than ``secrets`` gives it:
    a node must not take a secret it was not started with by mistake. ``replace_secrets`` False: the
    refusal names ``idres up --replace-secrets``; None: the caller has no such choice (``idres seed``)."""
    wrong = secret_mismatches(data_dir, {n.name: n.prefix or "" for n in topology.primaries()}, secrets)
    if not wrong:
        return
    source = secret_source(data_dir)
    message = (
        f"{', '.join(wrong)} {'were' if len(wrong) > 1 else 'was'} last started with another operator secret "
        f"than the one from {source} (see {db_path(data_dir, wrong[0])}). Use the secret "
        f"{'they were' if len(wrong) > 1 else 'it was'} started with"
    )
    if source.startswith("$") and (data_dir / SECRETS_FILE).exists():
        message += f" ({ENV_SECRET} is set in this shell: unset it to use {data_dir / SECRETS_FILE})"
    if replace_secrets is False:
        message += "; to change it on purpose: idres up --replace-secrets"
    raise ConfigError(message)


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
    ``nodes.running.local_ca``). Each writes and rotates its own log, ``DATA/logs/NAME.log``, and its
    access log beside it (``nodes.shared.logs``); what it cannot log (the last words of a crash, a
    library's warning) goes to ``NAME.stderr.log``, begun afresh at each start. The log level and the
    access log's switch reach them through the environment (``IDRES_LOG_LEVEL``, ``IDRES_ACCESS_LOG``)."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    env = {**os.environ, LAUNCHER_PID_ENV: str(os.getpid())}
    for spec in topology.nodes.values():
        log_path = logs / f"{spec.name}.log"
        cmd = [sys.executable, "-m", "nodes", *_serve_args(spec.name, topology_path, data_dir, tls)]
        with open(_stderr_path(log_path), "wb") as out:
            # Own process group: a Ctrl-C reaches the launcher, which stops every node in order.
            proc = subprocess.Popen(
                [*cmd, "--log-file", str(log_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
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


def _stderr_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name.removesuffix(".log") + ".stderr.log")


def _last_lines(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - 64 * 1024))  # a rotating log can be 10 MiB
            return file.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _tail(path: Path, lines: int = 15) -> str:
    """What explains a node's exit: the end of its log (``path``: what it was doing, and a crash's
    traceback), then, if it wrote any this start, the end of its stderr (why it refused to start,
    and what it could not log: a warning of the multiprocessing resource tracker, say)."""
    said = _last_lines(path, lines)
    errors = _last_lines(_stderr_path(path), lines)
    if errors:
        said += [f"-- and its stderr ({_stderr_path(path)}):", *errors]
    return "\n".join(said)


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
    """Register delegations, hosted prefixes and (optionally) demo data on nodes already running, with
    the secrets they were started with: none is ever made here, so a mistyped --data creates nothing."""
    data_dir = data_dir.resolve()
    try:
        secrets = operator_secrets(data_dir, [n.name for n in topology.primaries()], create=False)
    except ConfigError as exc:
        say(console, str(exc), lead="idres seed cannot start:")
        return 1

    async def run() -> list[Seeded]:
        async with node_session(topology.tls_ca) as session:
            await wait_reachable(session, topology.primaries(), timeout)
            # Once they serve: a node writes the secret it was started with before it serves.
            await asyncio.to_thread(refuse_other_secrets, topology, data_dir, secrets)
            return await register_topology(HandleClient(session), topology, secrets, demo=demo)

    try:
        done = asyncio.run(run())
    except (ConfigError, HandleError) as exc:
        say(console, str(exc), lead="idres seed failed:")
        return 1
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("node", "record", "what"):
        table.add_column(column, overflow="fold")
    for item in done:
        table.add_row(item.node, item.handle, item.what)
    console.print(table)
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
    async with node_session(topology.tls_ca) as session:
        await wait_healthy(session, nodes)
        return await register_topology(HandleClient(session), topology, secrets)


class _EnterKey:
    """Enter pressed in the terminal of ``idres up`` (or a line on its stdin): start the nodes that
    exited again, as children of ``idres up``, so Ctrl-C stops them with the others (issue 13,
    finding 6: a node restarted by hand with ``idres serve`` is not ``idres up``'s to stop)."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = sys.stdin.fileno() if sys.stdin is not None else None
        except (OSError, ValueError):
            self.fd = None

    def _ours(self, fd: int) -> bool:
        # A background job that reads its terminal is stopped (SIGTTIN): read only in the foreground.
        if not os.isatty(fd):
            return True
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            return False

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True if Enter was pressed meanwhile."""
        fd = self.fd
        if fd is None or not self._ours(fd):
            time.sleep(seconds)
            return False
        ready, _, _ = select.select([fd], [], [], seconds)
        if not ready:
            return False
        if not os.read(fd, 4096):
            self.fd = None  # end of input (stdin is /dev/null, say): nothing more will come
            return False
        return True


def _restart_words(node: NodeProcess, topology_path: Path | None, data_dir: Path, tls: bool) -> list[str]:
    """The ``idres serve`` command a user types to run the node by hand, its paths as short as they go."""
    short = {str(data_dir): shown_path(data_dir)}
    if topology_path is not None:
        short[str(topology_path)] = shown_path(topology_path)
    args = _serve_args(node.spec.name, topology_path, data_dir, tls)
    return [*idres_words(), *(short.get(arg, arg) for arg in args)]


def _report_exited(console: Console, node: NodeProcess, topology_path: Path | None, data_dir: Path, tls: bool) -> None:
    say(
        console,
        "the other nodes keep running. Its log ends with:",
        lead=f"node {node.spec.name} exited with status {node.process.returncode};",
    )
    console.print(_tail(node.log_path), markup=False, highlight=False)
    say(console, f"Press Enter here to start {node.spec.name} again: Ctrl-C then stops it with the others.")
    console.print("Or start it yourself (then Ctrl-C here will not stop it):")
    print_command(console, _restart_words(node, topology_path, data_dir, tls))


def _report_strays(console: Console, topology: Topology) -> None:
    """Nodes that still listen once every node of ours stopped: started by hand, so not ours to stop."""
    for spec in ports_in_use(topology):
        say(
            console,
            f"{spec.name} still runs at {spec.url}: this `idres up` did not start it (started by hand "
            "with `idres serve`?), so it did not stop it. Stop it where it runs.",
        )


def up(
    topology: Topology,
    topology_path: Path | None,
    data_dir: Path,
    console: Console,
    *,
    tls: bool = False,
    replace_secrets: bool = False,
) -> int:
    """Run the topology until Ctrl-C or SIGTERM (``tls``: its nodes started with ``--tls``, so
    ``topology`` is the one ``local_ca.ensure_local_tls`` returned); every node is stopped before
    this returns. The data directory is made here if it is new: ``idres up`` is what initialises
    one (``replace_secrets``: nodes may take operator secrets other than those they were started with)."""
    data_dir = data_dir.resolve()
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
        refusal = busy_ports(topology)
        if refusal is not None:
            say(console, refusal, lead="idres up cannot start:")
            return 1
        new = not any(data_dir.glob("*.sqlite3"))
        try:
            secrets = checked_secrets(topology, data_dir, create=True, replace_secrets=replace_secrets)
        except ConfigError as exc:
            say(console, str(exc), lead="idres up cannot start:")
            return 1
        nodes = start_nodes(topology, topology_path, data_dir, tls=tls)
        try:
            seeded = asyncio.run(_bring_up(topology, nodes, secrets))
        except (ConfigError, HandleError) as exc:
            say(console, str(exc), lead="idres up failed:")
            return 1
        print_summary(console, topology, data_dir, seeded, secrets, new=new)
        console.print("\nPress Ctrl-C to stop every node.")
        _watch(console, topology, topology_path, data_dir, tls, nodes)
        console.print("[red]every node has exited[/red]")
        return 1
    except KeyboardInterrupt:
        console.print("Stopping every node...")
        stop_nodes(nodes)
        if nodes:
            _report_strays(console, topology)
        return 0
    finally:
        stop_nodes(nodes)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _watch(
    console: Console,
    topology: Topology,
    topology_path: Path | None,
    data_dir: Path,
    tls: bool,
    nodes: list[NodeProcess],
) -> None:
    """Until every node has exited: report each that exits, and start those again on Enter. A node
    that dies is not fatal: the others keep serving (that is what mirrors and failover are for)."""
    reported: set[str] = set()
    enter = _EnterKey()
    while len(reported) < len(nodes):
        for node in nodes:
            if node.process.poll() is not None and node.spec.name not in reported:
                reported.add(node.spec.name)
                _report_exited(console, node, topology_path, data_dir, tls)
        if enter.wait(0.5) and reported:
            for node in nodes:
                if node.spec.name in reported:
                    only = replace(topology, nodes={node.spec.name: node.spec})
                    node.process = start_nodes(only, topology_path, data_dir, tls=tls)[0].process
                    reported.discard(node.spec.name)
                    say(console, f"Starting {node.spec.name} again (log: {shown_path(node.log_path)}).")
