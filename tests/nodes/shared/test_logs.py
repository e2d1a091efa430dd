"""A node's log files: rotated past their size with a bounded number kept, shared safely by several
processes (a recursive node's workers), the access log beside the log, and the level applied."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.shared import logs
from nodes.shared.access_log import ACCESS_LOGGER
from nodes.shared.logs import LogSettings, RotatingLog, access_log_path, configure, logs_to_file


def record(text: str) -> logging.LogRecord:
    return logging.LogRecord("idres", logging.INFO, __file__, 1, text, None, None)


def written(path: Path) -> list[str]:
    """Every line of the log and its rotated files, oldest first."""
    files = [*sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:])), path]
    return [line for file in files for line in file.read_text().splitlines()]


def test_a_log_rotates_past_its_size_and_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    handler = RotatingLog(path, max_bytes=1000, backups=2)
    lines = [f"line {i:04} " + "x" * 40 for i in range(100)]  # 5,000 bytes
    for line in lines:
        handler.emit(record(line))
    handler.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.log", "node.log.1", "node.log.2"]
    assert all(p.stat().st_size <= 1000 + 60 for p in tmp_path.iterdir())  # at most one line past the size
    kept = written(path)
    assert kept == lines[-len(kept) :] and len(kept) >= 30  # the newest lines, in order, none repeated


def test_two_processes_writing_one_log_rotate_it_once_and_lose_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "CHECK_EVERY", 0.0)  # each looks at the file at every line: the worst case
    path = tmp_path / "recursive.log"
    workers = [RotatingLog(path, max_bytes=2000, backups=50), RotatingLog(path, max_bytes=2000, backups=50)]
    lines = [f"worker {i % 2} line {i:04} " + "y" * 30 for i in range(300)]  # ~15,000 bytes
    for i, line in enumerate(lines):
        workers[i % 2].emit(record(line))
    for handler in workers:
        handler.close()
    assert written(path) == lines
    rotated = sorted(tmp_path.glob("recursive.log.*"))
    # Each rotation happened once: no file was renamed again by the other process while nearly empty.
    assert len(rotated) == 7 and all(p.stat().st_size >= 2000 for p in rotated)


def test_a_log_full_from_an_earlier_run_is_rotated_at_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    path.write_text("old\n" * 300)
    handler = RotatingLog(path, max_bytes=1000, backups=1)
    handler.emit(record("new"))
    handler.close()
    assert path.read_text() == "new\n" and (tmp_path / "node.log.1").read_text() == "old\n" * 300


def test_a_log_moved_away_by_logrotate_is_followed_by_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "CHECK_EVERY", 0.0)  # the next line looks at once, not within a second
    path = tmp_path / "node.log"
    handler = RotatingLog(path, max_bytes=0)  # 0: rotation is left to logrotate
    handler.emit(record("before"))
    path.rename(tmp_path / "node.log-20261206")
    handler.emit(record("after"))
    handler.close()
    assert (tmp_path / "node.log-20261206").read_text() == "before\n" and path.read_text() == "after\n"


def test_the_access_log_goes_beside_the_log() -> None:
    assert access_log_path(Path("/d/logs/automaker.log")) == Path("/d/logs/automaker.access.log")
    assert access_log_path(Path("/var/log/idres")) == Path("/var/log/idres.access.log")


@pytest.fixture
def restored() -> Iterator[None]:
    """configure() changes this process's logging: put back what pytest had."""
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    saved = (list(root.handlers), root.level, list(access.handlers), access.level, access.propagate, sys.excepthook)
    yield
    for logger in (root, access):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    root.handlers[:], root.level, access.handlers[:] = saved[0], saved[1], saved[2]
    access.level, access.propagate, sys.excepthook = saved[3], saved[4], saved[5]
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restored")
def test_configure_sends_the_log_and_the_access_log_to_their_files_at_the_level(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "automaker.log"
    configure("automaker", LogSettings(level="WARNING", file=path))
    assert logs_to_file()
    logging.getLogger("idres").info("hidden at WARNING")
    logging.getLogger("idres.replication").warning("a role change")
    logging.getLogger(ACCESS_LOGGER).info('{"path":"/healthz"}')
    for handler in logging.getLogger().handlers + logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()
    [line] = path.read_text().splitlines()
    assert line.endswith("Z automaker WARNING idres.replication: a role change"), line
    assert (tmp_path / "logs" / "automaker.access.log").read_text() == '{"path":"/healthz"}\n'


@pytest.mark.usefixtures("restored")
def test_without_a_file_the_log_goes_to_stderr_and_the_access_log_to_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("recursive[1]", LogSettings())
    assert not logs_to_file()
    logging.getLogger("idres").info("serving")
    logging.getLogger(ACCESS_LOGGER).info('{"path":"/"}')
    out, err = capsys.readouterr()
    assert out == '{"path":"/"}\n' and err.rstrip().endswith("Z recursive[1] INFO idres: serving")
