"""``python -m benchmarks datagen``: deterministic, valid, linked, and readable by ``idres register``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import msgpack
import pytest

from benchmarks.datagen import COLUMNS, rows, vin, write
from resolver.bulk.reader import BatchReader
from resolver.names import parse_handle

LINKS = ("BATCH", "COMPONENT")


def generated(count: int, fmt: str = "csv", seed: int = 0, prefix: str = "88.118.8") -> str:
    out = io.StringIO()
    write(out, count, prefix, fmt=fmt, seed=seed)
    return out.getvalue()


def test_same_seed_same_file_other_seed_other_file() -> None:
    assert generated(500, seed=7) == generated(500, seed=7)
    assert generated(500, seed=7) != generated(500, seed=8)
    assert generated(300, "jsonl", seed=7) == generated(300, "jsonl", seed=7)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 51, 202, 1000])
def test_exactly_count_records_with_unique_valid_handles(count: int) -> None:
    records = list(rows(count))
    assert len(records) == count
    handles = [r[0] for r in records]
    assert len(set(handles)) == count
    for handle in handles:
        assert parse_handle(handle).prefix == "88.118.8"


def test_records_hold_four_to_six_values_and_links_point_at_generated_identifiers() -> None:
    records = list(rows(2003, prefix="88.119.6"))
    handles = {r[0] for r in records}
    kinds: Counter[str] = Counter()
    for row in records:
        values = dict(zip(COLUMNS, row[1:], strict=True))
        assert 4 <= sum(1 for v in values.values() if v) <= 6, row
        kind = row[0].split("/", 1)[1].split("-", 1)[0]
        if "-SPARE-" in row[0]:
            assert not values["COMPONENT"]  # fitted to no car
            kind = "SPARE"
        kinds[kind] += 1
        if kind == "VIN":
            assert values["BATCH"] in handles and values["COMPONENT"] in handles
            assert values["COMPONENT"].startswith("88.119.6/PACK-")
        elif kind in ("PACK", "SEAT", "HARNESS"):
            assert values["COMPONENT"] in handles and values["COMPONENT"].startswith("88.119.6/VIN-")
    assert kinds["VIN"] == kinds["PACK"] == kinds["SEAT"] == kinds["HARNESS"] > 400
    assert kinds["BATCH"] == -(-kinds["VIN"] // 50)
    assert kinds["SPARE"] == 2003 - 4 * kinds["VIN"] - kinds["BATCH"] < 4
    # Each car is named by its three parts.
    fitted = Counter(r[7] for r in records if r[7] and "/VIN-" not in r[0])
    assert len(fitted) == kinds["VIN"] and set(fitted.values()) == {3}


def test_vins_are_17_characters_with_a_valid_check_digit() -> None:
    weights = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
    values = (1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 7, 9, 2, 3, 4, 5, 6, 7, 8, 9)  # ISO 3779 transliteration
    letters = dict(zip("ABCDEFGHJKLMNPRSTUVWXYZ", values, strict=True))
    for car in (0, 1, 9, 999_999, 1_000_000, 5_432_109):
        code = vin(car, "3A23C")
        assert len(code) == 17 and not set(code) & set("IOQ")
        total = sum((int(c) if c.isdigit() else letters[c]) * w for c, w in zip(code, weights, strict=True)) % 11
        assert code[8] == ("X" if total == 10 else str(total))
    assert len({vin(car, "3A23C") for car in range(0, 3_000_000, 997)}) == len(range(0, 3_000_000, 997))


def test_csv_and_jsonl_read_back_through_the_register_reader_as_the_same_operations() -> None:
    def read(fmt: str) -> list[dict[str, object]]:
        text = generated(777, fmt, seed=3).encode()
        batches = list(BatchReader(io.BytesIO(text), fmt=fmt, op="create", batch_size=100))
        assert not any(b.rejected for b in batches)
        return [op for b in batches for op in msgpack.unpackb(b.body)["operations"]]

    from_csv, from_jsonl = read("csv"), read("jsonl")
    assert len(from_csv) == len(from_jsonl) == 777

    def plain(op: dict[str, object]) -> tuple[object, ...]:
        values = op["values"]
        assert isinstance(values, list)
        data = [(v["index"], v["type"], v["data"]) for v in values]
        return op["handle"], tuple((i, t, d["value"] if isinstance(d, dict) else d) for i, t, d in data)

    assert [plain(op) for op in from_csv] == [plain(op) for op in from_jsonl]
    for line, row in zip(generated(50, "jsonl", seed=3).splitlines(), rows(50, seed=3), strict=True):
        record = json.loads(line)
        assert record["handle"] == row[0]
        assert [v["data"]["value"] for v in record["values"]] == [c for c in row[1:] if c]


def test_command_line_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "cars.jsonl"
    cmd = [sys.executable, "-m", "benchmarks", "datagen", "--count", "120", "--prefix", "88.118.8", "--seed", "5"]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == generated(120, "jsonl", seed=5)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.stdout == generated(120, "csv", seed=5)
    bad = subprocess.run([*cmd[:-4], "--prefix", "99.1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "national prefix" in bad.stderr
