"""The ``idres`` command line: ``up``, ``serve`` and ``resolve``."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click
from rich.console import Console

from resolver.config import Topology
from resolver.errors import ConfigError, HandleError

__all__ = ["main"]

DEFAULT_DATA = Path("idres-data")
DEFAULT_SERVER = "http://127.0.0.1:8000"  # the default topology's recursive node

topology_option = click.option(
    "--topology",
    "topology_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Topology file (TOML). Default: the built-in default topology (see `idres topology`).",
)
data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="Directory for the nodes' SQLite files, logs and operator secrets.",
)
tls_option = click.option(
    "--tls",
    is_flag=True,
    help="Serve HTTPS: a local CA and a certificate per node under DATA/tls, made on first use "
    "(clients trust DATA/tls/ca.pem). Certificates of your own go in the topology instead.",
)


def _topology(topology_path: Path | None, data_dir: Path, tls: bool) -> Topology:
    """The topology file's nodes, on the local CA's HTTPS with ``--tls``; a ClickException if it is wrong."""
    from nodes.running.local_ca import ensure_local_tls
    from nodes.running.topology_file import load_topology

    try:
        topology = load_topology(topology_path)
        return ensure_local_tls(topology, data_dir) if tls else topology
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


cacert_option = click.option(
    "--cacert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA certificates (PEM) to verify HTTPS servers against, e.g. DATA/tls/ca.pem of `idres up --tls`. "
    "Default: the system's.",
)


@click.group()
@click.version_option(package_name="idres")
def main() -> None:
    """Industrial internet identifier resolution: Handle-compatible nodes and tools."""


@main.command()
@topology_option
@data_option
@tls_option
def up(topology_path: Path | None, data_dir: Path, tls: bool) -> None:
    """Start every node of the topology, register delegations and demo data; Ctrl-C stops them all."""
    from nodes.running.launcher import up as run_up

    topology = _topology(topology_path, data_dir, tls)
    path = topology_path.resolve() if topology_path else None
    sys.exit(run_up(topology, path, data_dir, Console(), tls=tls))


@main.command()
@click.option("--node", "name", required=True, help="Name of the node in the topology.")
@topology_option
@data_option
@tls_option
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Recursive node: processes serving its port together (SO_REUSEPORT), each with its own cache. "
    "Default: the topology's `workers` (1).",
)
# Internal: how `idres serve` starts each of a recursive node's workers (nodes.running.workers).
@click.option("--worker", "worker_index", type=click.IntRange(0, 63), default=None, hidden=True)
@click.option("--worker-dir", type=click.Path(file_okay=False, path_type=Path), default=None, hidden=True)
def serve(
    name: str,
    topology_path: Path | None,
    data_dir: Path,
    tls: bool,
    workers: int | None,
    worker_index: int | None,
    worker_dir: Path | None,
) -> None:
    """Run one node of the topology in the foreground (a recursive node with `workers` > 1: its
    worker processes, restarted if one dies)."""
    from nodes.running.serve import serve as run_serve
    from nodes.running.serve import serve_worker

    topology = _topology(topology_path, data_dir, tls)
    try:
        if worker_index is not None:
            if worker_dir is None or workers is None or worker_index >= workers:
                raise click.UsageError("--worker is given by `idres serve` to the workers it starts, with --worker-dir")
            serve_worker(topology, name, data_dir, worker_index, workers, worker_dir)
            return
        cli_args = ["--data", str(data_dir.resolve()), *(["--tls"] if tls else [])]
        cli_args += ["--topology", str(topology_path.resolve())] if topology_path is not None else []
        sys.exit(run_serve(topology, name, data_dir, workers, cli_args))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@topology_option
@data_option
@click.option("--node", "names", multiple=True, help="Only this node (repeatable). Default: every authoritative node.")
def check(topology_path: Path | None, data_dir: Path, names: tuple[str, ...]) -> None:
    """Run SQLite's full integrity check on the nodes' databases, one line per node.
    Exit status 0 when every file is whole, 1 when any is damaged, emptied or missing."""
    from nodes.running.check import run_check
    from nodes.running.topology_file import load_topology

    try:
        sys.exit(run_check(load_topology(topology_path), data_dir, names, click.echo))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@topology_option
@data_option
@click.option("--demo/--no-demo", default=True, show_default=True, help="Also register the demo identifiers.")
@click.option("--wait", "wait_seconds", default=60.0, show_default=True, help="Seconds to wait for the nodes.")
@tls_option
def seed(topology_path: Path | None, data_dir: Path, demo: bool, wait_seconds: float, tls: bool) -> None:
    """Register the topology's delegations and hosted prefixes on nodes that are already running
    (started with `idres serve` or docker compose), with the operators' credentials; idempotent."""
    from nodes.running.launcher import seed_running_nodes

    topology = _topology(topology_path, data_dir, tls)
    sys.exit(seed_running_nodes(topology, data_dir, Console(), demo=demo, timeout=wait_seconds))


@main.command()
def topology() -> None:
    """Print the default topology file, to copy and edit."""
    from nodes.running.topology_file import DEFAULT_TOPOLOGY

    click.echo(DEFAULT_TOPOLOGY.read_text(encoding="utf-8"), nl=False)


@main.command()
@click.argument("handle")
@click.option("--server", default=DEFAULT_SERVER, show_default=True, help="Node to start from.")
@click.option("--type", "types", multiple=True, help="Only values of this type (repeatable).")
@click.option("--index", "indexes", multiple=True, type=int, help="Only the value at this index (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer body (JSON) instead of tables.")
@cacert_option
def resolve(
    handle: str, server: str, types: tuple[str, ...], indexes: tuple[int, ...], as_json: bool, cacert: str | None
) -> None:
    """Resolve HANDLE, following referrals from SERVER down to the node that holds it; every hop is shown.
    Exit status 1 when HANDLE does not exist, no value matches, or it cannot be resolved."""
    from nodes.cli.resolve_view import print_walk, walk_from

    try:
        # A recursive node, asked for its trace, says which nodes it asked on our behalf.
        walked = asyncio.run(walk_from(server, handle, types=types, indexes=indexes, trace=not as_json, cafile=cacert))
    except HandleError as exc:
        raise click.ClickException(exc.message) from exc
    if not as_json:
        print_walk(Console(), handle, walked)
    if walked.error is not None:
        raise click.ClickException(walked.error.message)
    if as_json:
        click.echo(json.dumps(walked.body, ensure_ascii=False, indent=2))
    if not walked.found:
        sys.exit(1)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--server", required=True, help="The node that owns the identifiers' prefix (its primary).")
@click.option("--user", "identity", required=True, help="Who registers: INDEX:HANDLE, e.g. 300:0.NA/88.118.8.")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None, help="Default: from FILE's extension."
)
@click.option("--op", type=click.Choice(["create", "upsert"]), default="create", show_default=True)
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64), help="Batches in flight.")
@click.option("--retries", default=5, show_default=True, type=click.IntRange(0, 100), help="Per failed batch.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds a batch.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where rejected items go, one JSON line each. Default: FILE.rejected.jsonl.",
)
@click.option("--resume", is_flag=True, help="Go on from FILE.idres-checkpoint, left by an interrupted run.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cacert_option
def register(
    file: Path,
    server: str,
    identity: str,
    fmt: str | None,
    op: str,
    batch_size: int,
    concurrency: int,
    retries: int,
    timeout: float,
    report: Path | None,
    resume: bool,
    quiet: bool,
    cacert: str | None,
) -> None:
    """Register the identifiers in FILE (CSV or JSON Lines) on SERVER, in concurrent batches.

    The secret comes from the environment variable IDRES_SECRET, else from a prompt; never from the
    command line. Exit status: 0 when every record was registered, 1 when any was rejected (they are
    listed in the report), 2 when registration could not go on (it can then be resumed with --resume).
    See docs/bulk-registration.md for the file formats.
    """
    import os

    from nodes.cli.register_run import run, show_progress_for
    from resolver.bulk.register import RegisterOptions, format_for
    from resolver.bulk.sender import RetryPolicy
    from resolver.names import parse_identity

    try:
        parse_identity(identity)
    except HandleError as exc:
        raise click.BadParameter(exc.message, param_hint="--user") from exc
    fmt = fmt or format_for(file.name)
    if fmt is None:
        raise click.BadParameter(f"cannot tell the format of {file.name} from its name", param_hint="--format")
    secret = os.environ.get("IDRES_SECRET") or click.prompt(f"Secret of {identity}", hide_input=True, err=True)
    console = Console(stderr=True)
    options = RegisterOptions(
        file,
        server,
        identity,
        secret,
        fmt=fmt,
        op=op,
        batch_size=batch_size,
        concurrency=concurrency,
        policy=RetryPolicy(retries=retries, timeout=timeout),
        report=report,
        resume=resume,
        cafile=cacert,
    )
    sys.exit(run(options, console, show_progress=show_progress_for(console, quiet)))
