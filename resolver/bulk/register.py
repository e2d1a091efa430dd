"""Bulk registration: send a CSV or JSON Lines file to a node's ``POST /api/batch``, resumably.

Batches come from ``resolver.bulk.reader``; up to ``concurrency`` of them are in flight on one keep-alive
session, and at most one more is being read, so memory stays bounded whatever the file's size. A batch
that fails as a whole (connection lost, timeout, HTTP 5xx) is sent again with exponential backoff.

A batch that timed out may have been committed all the same. So a ``create`` answered 101 (already
exists) in a batch that was sent more than once, or anywhere in a resumed run, is checked against the
stored record (``GET /api/handles/...``): if the record is what the file says, it is counted as
applied ("already present"), and only a different record is a rejection. Retries therefore never turn
an acknowledged create into a false error, and a resumed run lands every identifier exactly once.

The checkpoint (``FILE.idres-checkpoint``) holds the file's size and mtime and how many leading lines
are fully acknowledged. Batches finish out of order; the checkpoint only advances over a contiguous
prefix of them, after their rejections are in the report, and is replaced atomically.

A run that starts over (no ``--resume``) leaves an earlier run's checkpoint and report alone until
its own first batch is acknowledged: a mistyped command (wrong server, secret or option) that sends
nothing must not take them away (issue 13). The server's URL and reachability are checked before
anything is sent (``resolver.bulk.preflight``).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import aiohttp

from resolver.bulk.preflight import check_reachable, url_problem
from resolver.bulk.reader import MAX_OPERATIONS, Batch, BatchReader, InputError, format_for
from resolver.bulk.sender import VERIFY_CONCURRENCY, BatchSender, FatalError, Outcome, RetryPolicy
from resolver.tls import client_connector

__all__ = [
    "Checkpoint",
    "FatalError",
    "InputError",
    "RegisterOptions",
    "Totals",
    "count_lines",
    "format_for",
    "load_checkpoint",
    "register",
    "resumable",
    "save_checkpoint",
    "start_checkpoint",
]

DEFAULT_BATCH_SIZE = 5000  # big enough that HTTP and the server's commit cost little per identifier
DEFAULT_CONCURRENCY = 4  # keeps a node's writer busy while the next batches travel and are parsed
CHECKPOINT_SUFFIX = ".idres-checkpoint"
REPORT_SUFFIX = ".rejected.jsonl"
DEFAULT_POLICY = RetryPolicy()
LOOKAHEAD = 2  # times the concurrency: batches in flight past the first one not yet acknowledged
GC_THRESHOLD = 100_000  # young objects between collections while registering (default 700)


@dataclass(frozen=True, slots=True)
class RegisterOptions:
    path: Path
    server: str
    identity: str  # INDEX:HANDLE
    secret: str = field(repr=False)
    fmt: str = "csv"
    op: str = "create"
    batch_size: int = DEFAULT_BATCH_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    policy: RetryPolicy = DEFAULT_POLICY
    report: Path | None = None  # default: FILE.rejected.jsonl
    resume: bool = False
    cafile: str | None = None  # CA certificates to verify an HTTPS server against (default: the system's)

    @property
    def report_path(self) -> Path:
        return self.report or self.path.with_name(self.path.name + REPORT_SUFFIX)

    @property
    def checkpoint_path(self) -> Path:
        return self.path.with_name(self.path.name + CHECKPOINT_SUFFIX)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a file got: every record on its first ``lines`` lines is acknowledged (or reported)."""

    file: str
    size: int
    mtime_ns: int
    format: str
    op: str
    lines: int = 0
    records: int = 0
    applied: int = 0
    verified: int = 0  # "already exists" answers whose stored record is what the file says
    rejected: int = 0
    report_bytes: int = 0  # the report's length when this was written: a resume cuts it back to this
    complete: bool = False

    def describes(self, size: int, mtime_ns: int) -> bool:
        return (self.size, self.mtime_ns) == (size, mtime_ns)


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``; None if there is none or it cannot be read."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Checkpoint(**raw)
    except (OSError, ValueError, TypeError):
        return None


def resumable(options: RegisterOptions) -> Checkpoint | None:
    """The checkpoint ``--resume`` would go on from for this file, this run's or an earlier one's;
    None when there is none, it is for another version of the file, or the file is done."""
    found = load_checkpoint(options.checkpoint_path)
    try:
        stat = options.path.stat()
    except OSError:
        return None
    if found is None or found.complete or found.lines == 0 or not found.describes(stat.st_size, stat.st_mtime_ns):
        return None
    return found


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: a crash leaves the old checkpoint or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(checkpoint), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(slots=True)
class Totals:
    records: int = 0  # read in this run
    applied: int = 0
    verified: int = 0
    rejected: int = 0


def count_lines(path: Path) -> int:
    """Lines in a file, at memory speed (for the progress bar's total)."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


class _Journal:
    """Rejections to the report and progress to the checkpoint, in file order."""

    def __init__(self, options: RegisterOptions, start: Checkpoint, *, fresh: bool) -> None:
        self._options = options
        self.state = start
        self.totals = Totals()
        self.next = 0  # the first batch not yet committed
        self._done: dict[int, Outcome] = {}
        self._report = None if start.report_bytes == 0 else options.report_path.open("ab")
        self._earlier_report = fresh  # an earlier run's report, to go when this run commits its first batch

    def add(self, outcome: Outcome) -> None:
        """Take a finished batch; write what became contiguous."""
        self._done[outcome.number] = outcome
        ready = []
        while self.next in self._done:
            ready.append(self._done.pop(self.next))
            self.next += 1
        if ready:
            self._commit(ready)

    def _commit(self, outcomes: Iterable[Outcome]) -> None:
        if self._earlier_report:
            # This run has really started: what an earlier run reported would mislead from now on.
            self._options.report_path.unlink(missing_ok=True)
            self._earlier_report = False
        state, totals = self.state, self.totals
        lines = state.lines
        for o in outcomes:
            if o.rejected:
                if self._report is None:
                    self._report = self._options.report_path.open("ab")
                self._report.write(
                    b"".join(json.dumps(r.to_json(), ensure_ascii=False).encode() + b"\n" for r in o.rejected)
                )
            totals.records += o.records
            totals.applied += o.applied
            totals.verified += o.verified
            totals.rejected += len(o.rejected)
            lines = o.end_line
            state = replace(
                state,
                records=state.records + o.records,
                applied=state.applied + o.applied,
                verified=state.verified + o.verified,
                rejected=state.rejected + len(o.rejected),
            )
        if self._report is not None:
            self._report.flush()  # the report must hold what the checkpoint says it holds
        report_bytes = self._report.tell() if self._report is not None else 0
        self.state = replace(state, lines=lines, report_bytes=report_bytes)
        save_checkpoint(self._options.checkpoint_path, self.state)

    def finish(self) -> None:
        self.state = replace(self.state, complete=True)
        save_checkpoint(self._options.checkpoint_path, self.state)
        self.close()

    def close(self) -> None:
        if self._report is not None:
            self._report.close()
            self._report = None


def start_checkpoint(options: RegisterOptions, note: Callable[[str], None]) -> Checkpoint:
    """Where this run starts: the checkpoint's position with --resume, else the beginning. A resumed
    run's report is cut back to what that position covers; a run from the beginning leaves an
    earlier run's checkpoint and report to its first acknowledged batch (``_Journal``)."""
    stat = options.path.stat()
    fresh = Checkpoint(str(options.path), stat.st_size, stat.st_mtime_ns, options.fmt, options.op)
    start = fresh
    if options.resume:
        found = load_checkpoint(options.checkpoint_path)
        if found is None:
            note(f"no usable checkpoint {options.checkpoint_path}: starting from the beginning")
        elif not found.describes(stat.st_size, stat.st_mtime_ns):
            raise FatalError(
                f"{options.path} changed since {options.checkpoint_path} was written (size or modification "
                "time differ): run without --resume to start over"
            )
        elif (found.format, found.op) != (options.fmt, options.op):
            raise FatalError(
                f"{options.checkpoint_path} is for --format {found.format} --op {found.op}: use the same options"
            )
        else:
            start = found
    if start is fresh:
        return start
    report = options.report_path
    if start.report_bytes == 0:
        report.unlink(missing_ok=True)  # an earlier run's report would mislead
    elif report.exists():
        with report.open("r+b") as f:
            f.truncate(start.report_bytes)  # what batches past the checkpoint reported comes again
    else:
        note(f"{report} is gone: it will list only the rejections from here on")
    return start


async def _send_all(
    options: RegisterOptions,
    reader: Iterable[Batch],
    journal: _Journal,
    progress: Callable[[int], None],
    note: Callable[[str], None],
) -> None:
    connector = client_connector(options.cafile, limit=options.concurrency + VERIFY_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await check_reachable(session, options.server)  # a wrong address fails now, not after retries
        sender = BatchSender(
            session,
            options.server,
            options.identity,
            options.secret,
            op=options.op,
            policy=options.policy,
            verify_all=options.resume,  # rows past the checkpoint may have landed before the interruption
            note=note,
        )
        running: set[asyncio.Task[Outcome]] = set()
        failures: list[BaseException] = []
        changed = asyncio.Event()
        # Batches finish out of order, but none starts more than LOOKAHEAD batches past the first one
        # not yet committed: what a resume may find already stored (and must check) stays bounded.
        lookahead = LOOKAHEAD * options.concurrency

        def finished(task: asyncio.Task[Outcome]) -> None:
            running.discard(task)
            changed.set()
            if task.cancelled():
                return
            exc = task.exception()
            if exc is None:
                outcome = task.result()
                progress(outcome.records)
                try:
                    journal.add(outcome)
                except OSError as err:
                    exc = FatalError(f"cannot write the report or the checkpoint: {err}")
            if exc is not None:
                failures.append(exc)
                for other in running:
                    other.cancel()

        try:
            for batch in reader:
                while not failures and (
                    len(running) >= options.concurrency or batch.number - journal.next >= lookahead
                ):
                    changed.clear()
                    await changed.wait()
                if failures:
                    break
                task = asyncio.create_task(sender.send(batch))
                running.add(task)
                task.add_done_callback(finished)
                await asyncio.sleep(0)  # let it start writing before the next batch is read
        except BaseException:
            for task in running:
                task.cancel()
            raise
        finally:
            while running:
                await asyncio.wait(set(running))
        if failures:
            raise failures[0]


async def register(
    options: RegisterOptions,
    *,
    progress: Callable[[int], None] = lambda n: None,
    note: Callable[[str], None] = lambda s: None,
    on_start: Callable[[Checkpoint], None] = lambda c: None,
) -> tuple[Checkpoint, Totals]:
    """Register the file of ``options``: (where it got, counted over every run; this run's numbers).

    Raises InputError for a file that cannot be read, FatalError when registration cannot go on; the
    checkpoint then says where a ``resume`` starts.
    """
    if not 1 <= options.batch_size <= MAX_OPERATIONS:
        raise InputError(f"the batch size must be 1 to {MAX_OPERATIONS}")
    problem = url_problem(options.server)
    if problem is not None:
        raise FatalError(problem)
    with options.path.open("rb") as source:
        # Two runs on one file would both write its checkpoint and report: the second one stops.
        try:
            fcntl.flock(source.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise FatalError(f"another idres register is working on {options.path}") from exc
        start = start_checkpoint(options, note)
        on_start(start)
        if start.complete:
            note(f"{options.checkpoint_path} says the whole file was registered already")
            return start, Totals()
        reader = BatchReader(
            source, fmt=options.fmt, op=options.op, batch_size=options.batch_size, skip_lines=start.lines
        )
        journal = _Journal(options, start, fresh=start.lines == 0)
        try:
            await _send_all(options, reader, journal, progress, note)
            journal.finish()
        finally:
            journal.close()
    return journal.state, journal.totals
