"""Input files of cars for ``idres register`` (the benchmark's generated rows) and the values a row sends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.datagen import COLUMNS, rows

__all__ = ["COLUMNS", "HEADER", "bare", "sent_values", "wire", "write_csv"]

HEADER = "handle," + ",".join(COLUMNS) + "\n"


def write_csv(path: Path, count: int, *, seed: int = 0, extra: str = "") -> list[list[str]]:
    """``count`` generated cars as CSV at ``path`` (then the raw lines ``extra``); the rows written."""
    data = list(rows(count, seed=seed))
    path.write_text(HEADER + "".join(",".join(r) + "\n" for r in data) + extra)
    return data


def wire(index: int, vtype: str, value: str) -> dict[str, Any]:
    return {"index": index, "type": vtype, "data": {"format": "string", "value": value}}


def bare(index: int, vtype: str, value: str) -> dict[str, Any]:
    """A CSV cell as it is sent: HANDLE.NET's short form, string data without a format."""
    return {"index": index, "type": vtype, "data": value}


def sent_values(row: list[str], form: Callable[[int, str, str], dict[str, Any]] = bare) -> list[dict[str, Any]]:
    """The values ``idres register`` sends for a row written by ``write_csv`` (empty cells omitted)."""
    return [form(i, t, v) for i, (t, v) in enumerate(zip(COLUMNS, row[1:], strict=True), 1) if v]
