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
log_level_option = click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar="IDRES_LOG_LEVEL",
    help="Least severe lines the node logs (not the access log: --no-access-log). Also $IDRES_LOG_LEVEL.",
)
access_log_option = click.option(
    "--access-log/--no-access-log",
    default=None,
    envvar="IDRES_ACCESS_LOG",
    help="One JSON line per request. Default: the topology's `access_log` (on). Also $IDRES_ACCESS_LOG.",
)


def _topology(topology_path: Path | None, data_dir: Path, tls: bool, *, make_tls: bool = True) -> Topology:
    """The topology file's nodes, on the local CA's HTTPS with ``--tls`` (its files made if missing,
    unless ``make_tls`` is False: then the CA must be there already); a ClickException if it is wrong."""
    from nodes.running.local_ca import CA_FILE, ensure_local_tls, local_tls, tls_dir
    from nodes.running.topology_file import load_topology

    try:
        topology = load_topology(topology_path)
        if not tls:
            return topology
        if make_tls:
            return ensure_local_tls(topology, data_dir)
        if not (tls_dir(data_dir) / CA_FILE).is_file():
            raise ConfigError(
                f"no local CA in {tls_dir(data_dir)}: give the --data directory of the nodes started with --tls"
            )
        return local_tls(topology, data_dir)
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
@click.option(
    "--replace-secrets",
    is_flag=True,
    help="Start nodes whose operator secret is not the one they were last started with: they store "
    "the new one, and the old one stops working. Without it such a start is refused.",
)
@log_level_option
@access_log_option
def up(
    topology_path: Path | None,
    data_dir: Path,
    tls: bool,
    replace_secrets: bool,
    log_level: str,
    access_log: bool | None,
) -> None:
    """Start every node of the topology, register delegations and demo data; Ctrl-C stops them all.
    Makes the data directory and the operator secrets when they are new."""
    import os

    # The nodes' `idres serve` reads these (each logs to DATA/logs/NAME.log, nodes.running.launcher).
    os.environ["IDRES_LOG_LEVEL"] = log_level
    if access_log is not None:
        os.environ["IDRES_ACCESS_LOG"] = "1" if access_log else "0"
    from nodes.running.launcher import busy_ports
    from nodes.running.launcher import up as run_up
    from nodes.running.summary import say

    console = Console()
    refusal = busy_ports(_topology(topology_path, data_dir, False))
    if refusal is not None:  # said before --tls makes its CA: a refused start creates nothing
        say(console, refusal, lead="idres up cannot start:")
        sys.exit(1)
    topology = _topology(topology_path, data_dir, tls)
    path = topology_path.resolve() if topology_path else None
    sys.exit(run_up(topology, path, data_dir, console, tls=tls, replace_secrets=replace_secrets))


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
@log_level_option
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the log to FILE and the access log beside it (NAME.log: NAME.access.log), each rotated "
    "(see --log-max-bytes). Default: the terminal (stderr; access log on stdout).",
)
@click.option(
    "--log-max-bytes",
    type=click.IntRange(min=0),
    default=10 * 1024 * 1024,
    show_default=True,
    envvar="IDRES_LOG_MAX_BYTES",
    help="With --log-file: rotate a log past this size (0: never).",
)
@click.option(
    "--log-backups",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    envvar="IDRES_LOG_BACKUPS",
    help="With --log-file: rotated files kept per log.",
)
@access_log_option
# Internal: how `idres serve` starts each of a recursive node's workers (nodes.running.workers).
@click.option("--worker", "worker_index", type=click.IntRange(0, 63), default=None, hidden=True)
@click.option("--worker-dir", type=click.Path(file_okay=False, path_type=Path), default=None, hidden=True)
def serve(
    name: str,
    topology_path: Path | None,
    data_dir: Path,
    tls: bool,
    workers: int | None,
    log_level: str,
    log_file: Path | None,
    log_max_bytes: int,
    log_backups: int,
    access_log: bool | None,
    worker_index: int | None,
    worker_dir: Path | None,
) -> None:
    """Run one node of the topology in the foreground (a recursive node with `workers` > 1: its
    worker processes, restarted if one dies)."""
    from nodes.running.serve import serve as run_serve
    from nodes.running.serve import serve_worker
    from nodes.shared.logs import LogSettings

    logs = LogSettings(log_level, log_file, log_max_bytes, log_backups, access_log)

    topology = _topology(topology_path, data_dir, tls)
    try:
        if worker_index is not None:
            if worker_dir is None or workers is None or worker_index >= workers:
                raise click.UsageError("--worker is given by `idres serve` to the workers it starts, with --worker-dir")
            serve_worker(topology, name, data_dir, worker_index, workers, worker_dir, logs)
            return
        cli_args = ["--data", str(data_dir.resolve()), *(["--tls"] if tls else [])]
        cli_args += ["--topology", str(topology_path.resolve())] if topology_path is not None else []
        sys.exit(run_serve(topology, name, data_dir, workers, cli_args, logs))
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
    (started with `idres serve` or docker compose), with the operators' credentials; idempotent.
    It makes no secret: they come from DATA/operator-secrets.json or $IDRES_ADMIN_SECRET."""
    from nodes.running.launcher import seed_running_nodes

    topology = _topology(topology_path, data_dir, tls, make_tls=False)
    sys.exit(seed_running_nodes(topology, data_dir, Console(), demo=demo, timeout=wait_seconds))


@main.command()
@topology_option
@data_option
@click.option("--tls", is_flag=True, help="The nodes run with `--tls`: ask over HTTPS, trusting DATA/tls/ca.pem.")
@cacert_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, for scripts.")
@click.option(
    "--timeout",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.1, 60),
    help="Seconds each request may take (every node is asked at once).",
)
@click.option(
    "--max-lag",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a mirror may go without every change before it needs attention.",
)
def status(
    topology_path: Path | None,
    data_dir: Path,
    tls: bool,
    cacert: str | None,
    as_json: bool,
    timeout: float,
    max_lag: float,
) -> None:
    """Show every node of the topology at once: up or down, role, epoch, prefix, records, change-log
    position, each mirror's lag and whether its data agrees with its primary's, the recursive node's
    cache and the upstreams it marks down.

    Record counts and digests need the operator secret: IDRES_ADMIN_SECRET, else DATA/operator-secrets.json
    (read only; never from the command line). Exit status: 0 when all is well, 1 when something needs
    attention (a node down, a mirror not following, lagging or disagreeing with its primary, an
    upstream marked down), 2 when the status could not be taken (bad options, topology or CA file).
    """
    from nodes.cli.status_view import run_status
    from nodes.running.local_ca import local_tls
    from nodes.running.topology_file import load_topology

    try:
        topology = load_topology(topology_path)
        topology = local_tls(topology, data_dir) if tls else topology
        code = run_status(
            topology, data_dir, cafile=cacert, as_json=as_json, timeout=timeout, max_lag=max_lag, console=Console()
        )
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


@main.command()
def topology() -> None:
    """Print the default topology file, to copy and edit."""
    from nodes.running.topology_file import DEFAULT_TOPOLOGY

    click.echo(DEFAULT_TOPOLOGY.read_text(encoding="utf-8"), nl=False)


def _server_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A ``--server`` that is a base URL with its scheme (``127.0.0.1:8300`` is refused, naming the fix)."""
    from resolver.bulk.preflight import url_problem

    problem = url_problem(value)
    if problem is not None:
        raise click.BadParameter(problem, ctx, param)
    return value


@main.command()
@click.argument("handle")
@click.option("--server", default=DEFAULT_SERVER, show_default=True, callback=_server_url, help="Node to start from.")
@click.option("--type", "types", multiple=True, help="Only values of this type (repeatable).")
@click.option("--index", "indexes", multiple=True, type=int, help="Only the value at this index (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer body (JSON) instead of tables.")
@cacert_option
def resolve(
    handle: str, server: str, types: tuple[str, ...], indexes: tuple[int, ...], as_json: bool, cacert: str | None
) -> None:
    """Resolve HANDLE, following referrals from SERVER down to the node that holds it; every hop is shown.
    Exit status 1 when HANDLE does not exist, no value matches, or it cannot be resolved."""
    from nodes.cli.resolve_view import print_error, print_walk, walk_from

    try:
        # A recursive node, asked for its trace, says which nodes it asked on our behalf.
        walked = asyncio.run(walk_from(server, handle, types=types, indexes=indexes, trace=not as_json, cafile=cacert))
    except HandleError as exc:
        raise click.ClickException(exc.message) from exc
    if not as_json:
        print_walk(Console(), handle, walked)
    if walked.error is not None:
        print_error(Console(stderr=True), walked.error.message)  # wrapped between words, never cut
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(walked.body, ensure_ascii=False, indent=2))
    if not walked.found:
        sys.exit(1)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--server",
    required=True,
    callback=_server_url,
    help="The node that owns the identifiers' prefix (its primary), e.g. http://127.0.0.1:8300.",
)
@click.option("--user", "identity", required=True, help="Who registers: INDEX:HANDLE, e.g. 300:0.NA/88.118.8.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"], case_sensitive=False),
    default=None,
    help="Default: from FILE's extension.",
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

    The secret comes from the environment variable IDRES_SECRET, else from a prompt at a terminal
    (with no terminal, as under cron, the command stops with exit status 2); never from the command
    line. Exit status: 0 when every record was registered, 1 when any was rejected (they are listed
    in the report), 2 when registration could not go on (it can then be resumed with --resume if a
    batch was acknowledged), 130 when interrupted. See docs/bulk-registration.md.
    """
    from nodes.cli.register_run import read_secret, run, show_progress_for
    from resolver.bulk.register import RegisterOptions, format_for
    from resolver.bulk.sender import RetryPolicy
    from resolver.names import parse_identity

    try:
        parse_identity(identity)
    except HandleError as exc:
        raise click.BadParameter(exc.message, param_hint="--user") from exc
    fmt = fmt or format_for(file.name)
    if fmt is None:
        raise click.BadParameter(
            f"cannot tell the format of {file.name} from its name (.csv is csv; .jsonl and .ndjson are jsonl): "
            "give --format csv or --format jsonl",
            param_hint="--format",
        )
    secret = read_secret(identity)
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
