"""``idres register`` run in the test process without a terminal: its options, exit status, summary and report."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from nodes.cli.register_run import run
from resolver.bulk.register import RegisterOptions
from resolver.bulk.sender import RetryPolicy
from tests.resolver.bulk.fake_node import IDENTITY, SECRET

__all__ = ["options", "report_lines", "run_quietly"]


def options(path: Path, server: str, **kw: Any) -> RegisterOptions:
    """Options for registering ``path`` at ``server`` as the fake node's operator, retrying quickly."""
    kw.setdefault("policy", RetryPolicy(retries=3, backoff=0.05, timeout=10))
    return RegisterOptions(path, server, IDENTITY, kw.pop("secret", SECRET), **kw)


def run_quietly(opts: RegisterOptions) -> tuple[int, str]:
    """(exit status, what it printed) of one run without a progress bar."""
    out = io.StringIO()
    console = Console(file=out, width=200)
    code = run(opts, console, show_progress=False, summary=console)
    return code, out.getvalue()


def report_lines(path: Path) -> list[dict[str, Any]]:
    """The rejection report's entries (none when there is no report)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
