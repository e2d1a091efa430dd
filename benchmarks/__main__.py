"""``python -m benchmarks``: one click command per benchmark or data tool; add one with one function."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


@click.group()
def main() -> None:
    """Benchmarks of idres and the data they run on."""


@main.command()
@click.option("--count", type=click.IntRange(min=0), default=1000, show_default=True, help="Records to write.")
@click.option("--prefix", default="88.118.8", show_default=True, help="Prefix of every identifier.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Output format. Default: from --out's extension, else csv.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File to write. Default: stdout."
)
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed writes the same file.")
def datagen(count: int, prefix: str, fmt: str | None, out: Path | None, seed: int) -> None:
    """Write COUNT realistic records for `idres register`: production batches, cars and their parts,
    with BATCH and COMPONENT values linking them."""
    from benchmarks.datagen import write
    from resolver.bulk.reader import format_for
    from resolver.errors import InvalidHandle

    fmt = fmt or (format_for(str(out)) if out else None) or "csv"
    try:
        if out is None:
            write(sys.stdout, count, prefix, fmt=fmt, seed=seed)
        else:
            with out.open("w", encoding="utf-8", newline="") as f:
                write(f, count, prefix, fmt=fmt, seed=seed)
    except (InvalidHandle, ValueError) as exc:
        raise click.BadParameter(getattr(exc, "message", str(exc))) from exc


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None, help="FILE's format. Default: from its name."
)
@click.option(
    "--batch-size", default=5000, show_default=True, type=click.IntRange(1, 10_000), help="Records per batch."
)
def encode(file: Path, fmt: str | None, batch_size: int) -> None:
    """CPU per record of reading FILE into msgpack batches: the client side of `idres register`
    without the network."""
    import gc

    from resolver.bulk.reader import BatchReader, format_for
    from resolver.bulk.register import GC_THRESHOLD

    fmt = fmt or format_for(str(file)) or "csv"
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])  # as idres register runs it
    records = batches = body = 0
    started, cpu = time.perf_counter(), time.process_time()
    with file.open("rb") as source:
        for batch in BatchReader(source, fmt=fmt, op="create", batch_size=batch_size):
            records += batch.records
            batches += 1
            body += len(batch.body)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - started
    per_row = cpu / records * 1e6 if records else 0.0
    click.echo(
        f"{records:,} records in {batches:,} batches ({body / 1e6:,.1f} MB of msgpack): "
        f"{per_row:.2f} µs CPU a record, {records / wall if wall else 0:,.0f} records/s"
    )


@main.command()
@click.option(
    "--count", type=click.IntRange(min=1), default=1_000_000, show_default=True, help="Identifiers to register."
)
@click.option(
    "--concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Batches in flight (idres register --concurrency).",
)
@click.option(
    "--batch-size",
    default=5000,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Identifiers per batch (idres register --batch-size).",
)
@click.option(
    "--durability",
    type=click.Choice(["full", "normal"]),
    default="full",
    show_default=True,
    help="The enterprise node's topology key durability (SQLite synchronous FULL or NORMAL), and the "
    "baseline's synchronous level.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Directory for bulk.json.",
)
def bulk(count: int, concurrency: int, batch_size: int, durability: str, out: Path) -> None:
    """Register COUNT generated identifiers into an enterprise node with `idres register`, and the same
    rows with sqlite3 executemany in one transaction (the baseline); rates, ratio, node peak RSS."""
    from benchmarks.bulk import run_bulk

    result = run_bulk(count, out, concurrency, batch_size, durability)
    click.echo(f"identifiers            {result['identifiers']:>12,}")
    click.echo(f"durability             {durability:>12}")
    click.echo(
        f"idres register         {result['idres_register']['per_second']:>12,} /s "
        f"({result['idres_register']['seconds']} s, file -> HTTP -> node SQLite)"
    )
    click.echo(
        f"sqlite3 executemany    {result['sqlite3_executemany']['per_second']:>12,} /s "
        f"({result['sqlite3_executemany']['seconds']} s, baseline)"
    )
    click.echo(f"ratio                  {result['ratio']:>12}")
    click.echo(f"node peak RSS          {result['node_peak_rss_mib']:>10} MiB")
    click.echo(f"+ batch workers        {result['node_and_workers_peak_rss_mib']:>10} MiB (node and workers together)")
    click.echo(f"node database          {result['database_mib']:>10} MiB")
    load = result["load_average"]
    click.echo(f"load average           {load['before']:>12} before, {load['after']} after")


# The load benchmarks parse their own options (``python -m benchmarks resolve --help`` lists them).
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@main.command(context_settings=_PASS_THROUGH)
@click.pass_context
def resolve(ctx: click.Context) -> None:
    """Hot-cache and cold resolution through the recursive node, against a bare aiohttp baseline (wrk)."""
    from benchmarks.resolve import main as run

    sys.exit(run(ctx.args))


@main.command(context_settings=_PASS_THROUGH)
@click.pass_context
def failover(ctx: click.Context) -> None:
    """SIGKILL chongqing-top (and an enterprise node with a mirror) under load, restart it; latency over time."""
    from benchmarks.failover import main as run

    sys.exit(run(ctx.args))


@main.command(context_settings=_PASS_THROUGH)
@click.pass_context
def workers(ctx: click.Context) -> None:
    """The recursive node's hot-cache throughput with 1 and with N worker processes (--workers N), side by side."""
    from benchmarks.workers import main as run

    sys.exit(run(ctx.args))


@main.command(context_settings=_PASS_THROUGH)
@click.pass_context
def compare(ctx: click.Context) -> None:
    """The recursive node's hot path, this checkout against a git revision (--against REV), side by side."""
    from benchmarks.compare import main as run

    sys.exit(run(ctx.args))


@main.command(context_settings=_PASS_THROUGH)
@click.pass_context
def tls(ctx: click.Context) -> None:
    """Hot-cache, new-connection and cold resolution over plain HTTP and over HTTPS, side by side (wrk)."""
    from benchmarks.tls import main as run

    sys.exit(run(ctx.args))


@main.command(context_settings=_PASS_THROUGH)
@click.pass_context
def scale(ctx: click.Context) -> None:
    """Millions of identifiers in one node, a million answers in the recursive node: issue 12's targets."""
    from benchmarks.scale import main as run

    sys.exit(run(ctx.args))


if __name__ == "__main__":
    main()
