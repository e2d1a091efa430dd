"""``idres register`` at the terminal and in scripts: the secret, a progress bar, notes, the summary
and the exit status."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Mapping

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from nodes.shared.loop import new_event_loop
from resolver.bulk.register import (
    GC_THRESHOLD,
    Checkpoint,
    FatalError,
    InputError,
    RegisterOptions,
    count_lines,
    register,
    resumable,
)

__all__ = ["SECRET_ENV", "read_secret", "run", "show_progress_for"]

SECRET_ENV = "IDRES_SECRET"
# Exit statuses (docs/bulk-registration.md): 1 is only ever "some records were rejected".
STOPPED = 2
INTERRUPTED = 130


def read_secret(identity: str, environ: Mapping[str, str] = os.environ) -> str:
    """The secret of ``identity``: IDRES_SECRET, else asked at the terminal without echo. With no
    terminal (cron, CI, a pipe) there is no one to ask: exit 2 saying to set IDRES_SECRET, rather
    than a getpass warning and click's "Aborted!" with the status that means rejected records."""
    secret = environ.get(SECRET_ENV)
    if secret:
        return secret
    if sys.stdin is None or not sys.stdin.isatty():  # None: started with standard input closed
        click.echo(
            f"Error: no secret for {identity}: set {SECRET_ENV} (there is no terminal to ask for it on)", err=True
        )
        sys.exit(STOPPED)
    try:
        answer: str = click.prompt(f"Secret of {identity}", hide_input=True, err=True)
    except click.Abort as exc:  # Ctrl-C or end of input at the prompt
        interrupted = isinstance(exc.__context__, KeyboardInterrupt)
        click.echo(
            "interrupted: nothing was sent" if interrupted else f"Error: no secret given: set {SECRET_ENV}", err=True
        )
        sys.exit(INTERRUPTED if interrupted else STOPPED)
    return answer


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} ids/s" if speed else "- ids/s", style="progress.data.speed")


def run(options: RegisterOptions, console: Console, *, show_progress: bool, summary: Console | None = None) -> int:
    """``idres register``: a progress bar and notes on ``console`` (stderr), the summary on ``summary``
    (stdout), and the exit status: 0 when every record was registered, 1 when any was rejected (they
    are in the report), 2 when registration could not go on."""
    out = summary or Console()

    def say(where: Console, text: str, style: str | None = None) -> None:
        where.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        refresh_per_second=4,
    )
    task = bar.add_task(options.path.name, total=None)
    resumed_at = 0

    def started(checkpoint: Checkpoint) -> None:
        nonlocal resumed_at
        resumed_at = checkpoint.lines
        bar.update(task, completed=checkpoint.records)

    # A JSON Lines batch is ~75,000 young objects that live until it is answered: with the default
    # threshold the collector would run every 700 of them and cost a third of the client's CPU.
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *thresholds[1:])
    began = time.monotonic()
    try:
        if show_progress and options.path.is_file():
            # The total costs one read of the file at memory speed (~0.1 µs a row): paid only when shown.
            bar.update(task, total=count_lines(options.path) - (1 if options.fmt == "csv" else 0))
        with bar, asyncio.Runner(loop_factory=new_event_loop) as runner:
            state, totals = runner.run(
                register(
                    options,
                    progress=lambda n: bar.advance(task, n),
                    note=lambda message: say(console, message, "yellow"),
                    on_start=started,
                )
            )
    except (InputError, OSError) as exc:
        say(console, f"error: {options.path}: {exc}", "red")
        return STOPPED
    except FatalError as exc:
        say(console, f"error: {exc}", "red")
        say(console, _where_to_go_on(options))
        return STOPPED
    except KeyboardInterrupt:
        say(console, f"interrupted: {_where_to_go_on(options)}")
        return INTERRUPTED
    finally:
        gc.set_threshold(*thresholds)
    seconds = time.monotonic() - began
    rate = totals.records / seconds if seconds > 0 else 0.0
    where = f" (resumed after line {resumed_at})" if resumed_at else ""
    say(
        out,
        f"applied {state.applied:,}, rejected {state.rejected:,}, already present (verified) {state.verified:,}"
        f"{where} in {seconds:.1f} s: {rate:,.0f} identifiers/s",
    )
    if state.rejected:
        say(out, f"rejected items (line, handle, responseCode, message): {options.report_path}")
        return 1
    return 0


def _where_to_go_on(options: RegisterOptions) -> str:
    """How to go on after a stop: from the checkpoint only when there is one to go on from (this
    run's, or an earlier run's that this run left alone), never from one that was not written."""
    found = resumable(options)
    if found is None:
        return "no batch was acknowledged, so there is nothing to resume: run the same command again"
    return (
        f"lines 1 to {found.lines:,} are done ({options.checkpoint_path}): run the same command "
        "with --resume to go on from there"
    )


def show_progress_for(console: Console, quiet: bool) -> bool:
    """A progress bar only for a person watching: not with --quiet, not into a pipe or a file."""
    return not quiet and console.is_terminal
