"""Realistic bulk-registration data for a carmaker: production batches, cars, and the parts fitted to them.

Records come in file order:

- a production batch (``BATCH-20260105-C-000000``): URL, MODEL, MANUFACTURER, PRODUCTION_DATE;
- then for each of its cars (at most CARS_PER_BATCH) four records:
  the car (``VIN-LS53A23C4TC000000``, a 17-character VIN with a valid ISO 3779 check digit): URL, MODEL,
  MANUFACTURER, BATCH (the batch's identifier), PRODUCTION_DATE, COMPONENT (its battery pack);
  and its battery pack, seat and wiring harness: URL, MODEL, SUPPLIER, BATCH (the supplier's lot), and
  COMPONENT naming the car they are a component of.

When fewer than four records are left, the file ends with spare parts, which are fitted to no car (no
COMPONENT), so every link names an identifier of the same file. The same seed gives the same file.
The CSV has one column per value type; a record leaves the columns it does not use empty.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Iterator
from typing import IO

from resolver.names import parse_prefix

__all__ = ["CARS_PER_BATCH", "COLUMNS", "rows", "write"]

COLUMNS = ("URL", "MODEL", "MANUFACTURER", "SUPPLIER", "BATCH", "PRODUCTION_DATE", "COMPONENT")
CARS_PER_BATCH = 50
_SERIALS = 1_000_000  # a VIN's serial is six digits; plant and model year make the rest unique
_PLANTS = "CLJY"  # Chongqing plants: Chang'an, Liangjiang, Jiangbei, Yubei
_YEARS = "TVWXY123456789"  # VIN model-year codes from 2026 (I, O, Q, U, Z are never used)
_MAKER = "Chongqing automaker (demo)"
_SITE = "https://automaker.example.cn"
# (model name, the VIN's vehicle descriptor section for it)
_MODELS = (
    ("CQ-EV7 electric SUV", "3A23C"),
    ("CQ-S5 sedan", "5B41D"),
    ("CQ-M9 MPV", "7C62E"),
    ("CQ-T3 pickup", "2D15F"),
)
# (kind, suffix code, models, supplier, supplier lot code)
_PARTS = (
    ("PACK", "YB", ("LFP traction pack 78 kWh", "NMC traction pack 92 kWh"), "Yibin battery maker (demo)", "YB"),
    ("SEAT", "SH", ("Driver seat heated", "Passenger seat heated"), "Seat and harness supplier (demo)", "SH"),
    ("HARNESS", "SH", ("Main wiring harness", "High-voltage harness"), "Seat and harness supplier (demo)", "SH"),
)
_START = datetime.date(2026, 1, 5).toordinal()

# ISO 3779 check digit: letters transliterate to digits, positions are weighted, the sum is taken mod 11.
_TRANSLIT = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMNPR", (1, 2, 3, 4, 5, 7, 9), strict=True)),
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


# The serial's share of the check sum, by thousands: the VIN of every car costs two lookups, not 17.
_SERIAL_HIGH = [sum(int(c) * w for c, w in zip(f"{n:03d}", _WEIGHTS[11:14], strict=True)) for n in range(1000)]
_SERIAL_LOW = [sum(int(c) * w for c, w in zip(f"{n:03d}", _WEIGHTS[14:], strict=True)) for n in range(1000)]


def vin(car: int, vds: str) -> str:
    """The VIN of car number ``car``: unique for each number below the capacity of plants and years."""
    serial, rest = car % _SERIALS, car // _SERIALS
    plant, year = _PLANTS[rest % len(_PLANTS)], _YEARS[rest // len(_PLANTS)]
    head = f"LS5{vds}"
    total = sum(_TRANSLIT[c] * w for c, w in zip(f"{head}0{year}{plant}", _WEIGHTS, strict=False))
    check = (total + _SERIAL_HIGH[serial // 1000] + _SERIAL_LOW[serial % 1000]) % 11
    return f"{head}{'X' if check == 10 else check}{year}{plant}{serial:06d}"


def rows(count: int, prefix: str = "88.118.8", seed: int = 0) -> Iterator[list[str]]:
    """``count`` records as ``[handle, *COLUMNS]`` cells, "" where a record has no such value."""
    capacity = _SERIALS * len(_PLANTS) * len(_YEARS) * 4
    if count > capacity:
        raise ValueError(f"at most {capacity:,} records (the VIN serials run out)")
    prefix = parse_prefix(prefix)
    draw = random.Random(seed).random

    def pick(n: int) -> int:
        return int(draw() * n)

    left, car, number = count, 0, 0
    while left > 0:
        day = datetime.date.fromordinal(_START + number % 730)
        date = day.isoformat()
        plant = _PLANTS[number % len(_PLANTS)]
        model, vds = _MODELS[pick(len(_MODELS))]
        week = f"{day.isocalendar()[0]}-W{day.isocalendar()[1]:02d}"
        batch = f"{prefix}/BATCH-{day:%Y%m%d}-{plant}-{number:06d}"
        yield [batch, f"{_SITE}/batches/{number:06d}", model, _MAKER, "", "", date, ""]
        left -= 1
        number += 1
        for _ in range(CARS_PER_BATCH):
            if left < 4:
                break
            code = vin(car, vds)
            handle = f"{prefix}/VIN-{code}"
            parts = [f"{prefix}/{kind}-{sfx}-{car:09d}" for kind, sfx, *_ in _PARTS]
            yield [handle, f"{_SITE}/vehicles/{code}", model, _MAKER, "", batch, date, parts[0]]
            for part, (_, _, models, supplier, lot) in zip(parts, _PARTS, strict=True):
                url = f"{_SITE}/parts/{part.partition('/')[2]}"
                yield [part, url, models[pick(len(models))], "", supplier, f"{lot}-{week}", "", handle]
            left -= 4
            car += 1
        while 0 < left < 4:  # too few for a car and its parts: spare parts, fitted to nothing
            kind, sfx, models, supplier, lot = _PARTS[left % len(_PARTS)]
            part = f"{prefix}/{kind}-{sfx}-SPARE-{car:09d}-{left}"
            yield [part, f"{_SITE}/parts/{part.partition('/')[2]}", models[0], "", supplier, f"{lot}-{week}", "", ""]
            left -= 1


def write(out: IO[str], count: int, prefix: str = "88.118.8", *, fmt: str = "csv", seed: int = 0) -> None:
    """Write ``count`` records as CSV (a header, then one row a record) or JSON Lines (the REST shape)."""
    if fmt == "csv":
        # No generated string holds a comma, quote or newline (the prefix is validated), so a row is
        # its cells joined by commas: several times faster than csv.writer, and the same bytes.
        out.write(",".join(["handle", *COLUMNS]) + "\n")
        lines: list[str] = []
        for row in rows(count, prefix, seed):
            lines.append(",".join(row))
            if len(lines) >= 10_000:
                out.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            out.write("\n".join(lines) + "\n")
        return
    if fmt != "jsonl":
        raise ValueError(f"unknown format {fmt!r}")
    # Every generated string is plain ASCII without quotes or backslashes (the prefix is validated),
    # so a template per pattern of empty cells writes valid JSON, several times faster than json.dumps.
    templates: dict[tuple[bool, ...], str] = {}
    chunk: list[str] = []
    for row in rows(count, prefix, seed):
        present = tuple(map(bool, row))
        template = templates.get(present)
        if template is None:
            values = ",".join(
                f'{{{{"index":{i},"type":"{t}","data":{{{{"format":"string","value":"{{{i}}}"}}}}}}}}'
                for i, t in enumerate(COLUMNS, 1)
                if present[i]
            )
            templates[present] = template = f'{{{{"handle":"{{0}}","values":[{values}]}}}}'
        chunk.append(template.format(*row))
        if len(chunk) >= 10_000:
            out.write("\n".join(chunk) + "\n")
            chunk.clear()
    if chunk:
        out.write("\n".join(chunk) + "\n")
