"""Where a node's log and access log go (the terminal, or files that rotate), at which level, in what format.

Without a log file (``idres serve`` at a terminal, or under a service manager that keeps the
output) the node's log goes to stderr and the access log (``nodes.shared.access_log``) to stdout,
so each can be routed on its own. With one (``--log-file``, which ``idres up`` gives each node:
``DATA/logs/NAME.log``) the log goes there and the access log beside it (``NAME.access.log``),
each rotated past ``LOG_MAX_BYTES`` with ``LOG_BACKUPS`` old files kept (``RotatingLog``). The level
applies to the node's log; the access log has its own switch (the topology's ``access_log``).

Every line of the node's log names the node (and the worker, ``recursive[1]``): the workers of a
recursive node write the same files as their supervisor.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

from nodes.shared.access_log import ACCESS_LOGGER

__all__ = [
    "DEFAULT_LEVEL",
    "LEVELS",
    "LOG_BACKUPS",
    "LOG_MAX_BYTES",
    "LogSettings",
    "RotatingLog",
    "access_log_path",
    "configure",
    "logs_to_file",
]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LEVEL = "INFO"

LOG_MAX_BYTES = 10 * 1024 * 1024
"""A log file is rotated once it passes 10 MiB. The node's own log grows by a few lines a minute;
the access log by ~250 bytes a request, so 10 MiB is ~40,000 requests: small enough to open in an
editor or grep at once, large enough that a busy node does not rotate every few seconds (the
usual logrotate size for application logs, and Python's examples, are of that order)."""
LOG_BACKUPS = 5
"""Old files kept per log (``NAME.log.1`` ... ``.5``): 60 MiB at most per log and node."""

CHECK_EVERY = 1.0
"""Seconds between looks at the file on disk: another process writing it (a worker of the same
node) may have rotated it, or an operator moved it. A look costs two stat calls; lines written
until the next look go on to the file this process has open, so none is lost."""

_FORMAT = "%(asctime)s.%(msecs)03dZ {label} %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class LogSettings:
    """How a node logs: what ``idres serve`` was given (``--log-level``, ``--log-file``...)."""

    level: str = DEFAULT_LEVEL
    file: Path | None = None  # None: stderr, and the access log on stdout
    max_bytes: int = LOG_MAX_BYTES  # 0: never rotate
    backups: int = LOG_BACKUPS
    access_log: bool | None = None  # None: as the topology's access_log says


def access_log_path(log_file: Path) -> Path:
    """Where the access log goes beside ``log_file``: ``NAME.log`` -> ``NAME.access.log``."""
    stem = log_file.name[: -len(".log")] if log_file.name.endswith(".log") else log_file.name
    return log_file.with_name(f"{stem}.access.log")


class RotatingLog(logging.handlers.RotatingFileHandler):
    """The standard library's rotating file handler, made safe for several processes appending to
    one file (a recursive node's workers) and cheap enough for one line per request.

    The standard handler decides each record by formatting it twice and calling stat twice, and each
    process rotates on its own idea of the size, so two processes rename each other's fresh files.
    Here a record is formatted once and the size is counted as it is written; the file on disk is
    looked at every ``CHECK_EVERY`` seconds and when the count says it is full. Rotating takes a lock
    on the log directory (``flock``) and looks again under it: if another process rotated meanwhile,
    this one only reopens the new file.
    """

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # At least one backup: with none the standard handler "rotates" by reopening the same full file.
        super().__init__(path, maxBytes=max_bytes, backupCount=max(1, backups), encoding="utf-8")
        self._size = 0
        self._look_at = 0.0  # look at once: the file may be full from an earlier run

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Append ``line`` as it is (the access log's, formatted by its writer): what ``emit`` does
        without a LogRecord, the handler's lock or a formatter, a third of a line's cost (issue 13)."""
        try:
            self._write(line + self.terminator)
        except Exception as exc:  # as handleError would: the node goes on without its line
            sys.stderr.write(f"--- access log: cannot write to {self.baseFilename}: {exc}\n")

    def _write(self, text: str) -> None:
        if time.monotonic() >= self._look_at or (self.maxBytes and self._size >= self.maxBytes):
            self._look()
        if self.stream is None:
            self.stream = self._open()
        self.stream.write(text)
        self.stream.flush()
        self._size += len(text)

    def _same_file(self) -> bool:
        """Whether the path still names the file this process writes; counts its size."""
        try:
            on_disk = os.stat(self.baseFilename)
        except FileNotFoundError:
            return False
        if self.stream is None:
            return False
        mine = os.fstat(self.stream.fileno())
        self._size = on_disk.st_size
        return (on_disk.st_ino, on_disk.st_dev) == (mine.st_ino, mine.st_dev)

    def _reopen(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = self._open()
        self._size = os.fstat(self.stream.fileno()).st_size

    def _look(self) -> None:
        self._look_at = time.monotonic() + CHECK_EVERY
        if not self._same_file():
            self._reopen()  # another process rotated it (or it was moved): write the new one
        if not self.maxBytes or self._size < self.maxBytes:
            return  # 0: never rotated here (logrotate, say, moves it: the look above follows)
        directory = os.open(os.path.dirname(self.baseFilename) or ".", os.O_RDONLY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            if self._same_file() and self._size >= self.maxBytes:
                self.doRollover()  # nobody rotated it while this process waited for the lock
            self._reopen()
        finally:
            os.close(directory)  # releases the lock


def _handler(file: Path | None, stream: TextIO, settings: LogSettings, fmt: logging.Formatter) -> logging.Handler:
    handler: logging.Handler = (
        logging.StreamHandler(stream) if file is None else RotatingLog(file, settings.max_bytes, settings.backups)
    )
    handler.setFormatter(fmt)
    return handler


def configure(label: str, settings: LogSettings) -> None:
    """Send this process's logging where ``settings`` say, each line naming ``label`` (the node, or
    ``NODE[K]`` for worker K); replaces whatever was configured before."""
    formatter = logging.Formatter(_FORMAT.format(label=label.replace("%", "%%")), datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime  # UTC, as the access log's times
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    for logger in (root, access):
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
    root.addHandler(_handler(settings.file, sys.stderr, settings, formatter))
    root.setLevel(settings.level)
    access_file = None if settings.file is None else access_log_path(settings.file)
    access.addHandler(_handler(access_file, sys.stdout, settings, logging.Formatter("%(message)s")))
    access.setLevel(logging.INFO)  # switched by access_log, not by the level of the node's log
    access.propagate = False
    logging.captureWarnings(True)
    # No record is formatted with them: spare each (one per request, with the access log) the lookups.
    logging.logThreads, logging.logProcesses, logging.logMultiprocessing = False, False, False
    if settings.file is not None:
        _log_uncaught()


def logs_to_file() -> bool:
    """Whether this process's log goes to a file (so what the terminal would show must be logged too)."""
    return any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers)


def _log_uncaught() -> None:
    """A crash's traceback in the node's log as well as on stderr: the log tells the whole story."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            logging.getLogger("idres").critical("stopped by an unexpected error", exc_info=(kind, value, tb))
        previous(kind, value, tb)

    sys.excepthook = hook
