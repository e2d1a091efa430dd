"""The supervisor of a recursive node's worker processes (nodes.running.workers), with stand-in workers."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import pytest

from nodes.running.workers import MAX_RESTARTS, RESTART_WINDOW, RestartBudget, check_port_free, run_workers
from resolver.config import NodeSpec
from resolver.errors import ConfigError
from tests.conftest import free_port


def test_restarts_are_allowed_up_to_the_limit_within_the_window() -> None:
    budget = RestartBudget(limit=3, window=60.0)
    assert [budget.allow(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert not budget.allow(59.9), "the first restart still counts"
    assert budget.allow(60.0), "it has left the window"
    assert not budget.allow(60.5)


def test_a_port_something_listens_on_is_refused_with_its_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again


def test_a_worker_that_keeps_dying_stops_the_node_with_status_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = NodeSpec("recursive", "recursive", "127.0.0.1", free_port(), workers=2)
    starts = tmp_path / "starts"

    def command(index: int, directory: Path) -> list[str]:
        assert directory.is_dir() and oct(directory.stat().st_mode & 0o777) == "0o700"
        # Worker 0 exits at once every time; worker 1 runs until it is stopped.
        code = f"open({str(starts)!r}, 'a').write('{index}\\n')" + (
            "" if index == 0 else "; import time; time.sleep(60)"
        )
        return [sys.executable, "-c", code]

    with caplog.at_level(logging.INFO, logger="idres"):
        status = run_workers(spec, 2, command, dict(os.environ))
    assert status == 1
    started = starts.read_text().split()
    assert started.count("0") == MAX_RESTARTS + 1
    assert started.count("1") <= 1, "the worker that kept running was not started again"
    assert f"restart(s) within {RESTART_WINDOW:g} s are used up; stopping the node" in caplog.text
    assert "worker 0 (pid" in caplog.text and "starting it again" in caplog.text
