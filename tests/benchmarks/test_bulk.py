"""The bulk benchmark's baseline inserts exactly the generated rows (so its rate is a fair comparison)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from benchmarks.bulk import baseline_sqlite
from benchmarks.datagen import write


def test_baseline_inserts_every_generated_row(tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    with source.open("w", encoding="utf-8", newline="") as f:
        write(f, 500, "88.118.8", fmt="csv")
    assert baseline_sqlite(source, tmp_path / "b.sqlite3") > 0
    with sqlite3.connect(tmp_path / "b.sqlite3") as db:
        (count,) = db.execute("SELECT count(*) FROM handles").fetchone()
        (first,) = db.execute("SELECT key FROM handles ORDER BY key LIMIT 1").fetchone()
    assert count == 500 and first.startswith("88.118.8/")
