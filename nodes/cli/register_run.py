"""``idres register`` at the terminal: a progress bar, notes, the summary and the exit status."""

from __future__ import annotations

import asyncio
import gc
import time

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
)

__all__ = ["run", "show_progress_for"]


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
    # The total costs one read of the file at memory speed (~0.1 µs a row): paid only when it is shown.
    header = 1 if options.fmt == "csv" else 0
    total = count_lines(options.path) - header if show_progress and options.path.is_file() else None
    task = bar.add_task(options.path.name, total=total)
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
        return 2
    except FatalError as exc:
        say(console, f"error: {exc}", "red")
        if options.checkpoint_path.exists():
            say(console, f"what was acknowledged is in {options.checkpoint_path}: run again with --resume")
        return 2
    except KeyboardInterrupt:
        say(console, f"interrupted: run again with --resume to go on from {options.checkpoint_path}")
        return 130
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


def show_progress_for(console: Console, quiet: bool) -> bool:
    """A progress bar only for a person watching: not with --quiet, not into a pipe or a file."""
    return not quiet and console.is_terminal
