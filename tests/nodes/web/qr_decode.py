"""Reading QR codes back in tests: ``zbarimg`` (Debian's zbar-tools) on a PNG, or on segno's SVG drawn
into a PBM bitmap here (zbarimg's ImageMagick reads no SVG without a renderer installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

_COMMAND = re.compile(r"([MmHh])\s*([-\d.\s]*)")


def zbarimg() -> str:
    path = shutil.which("zbarimg")
    if path is None:
        pytest.skip("zbarimg is not installed (Debian package zbar-tools)")
    return path


def decode(image: Path) -> str:
    """The text of the one QR code in ``image`` (a PNG or PBM file)."""
    done = subprocess.run([zbarimg(), "--quiet", "--raw", str(image)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def svg_to_pbm(svg: bytes, target: Path, scale: int = 4) -> Path:
    """Draw segno's QR SVG (one path of horizontal unit strokes: M, m and h commands) as a PBM."""
    root = ET.fromstring(svg)
    path = next(el for el in root.iter() if el.tag.endswith("path"))
    x = y = 0.0
    dark: set[tuple[int, int]] = set()
    for command, args in _COMMAND.findall(path.attrib["d"]):
        numbers = [float(n) for n in args.split()]
        if command == "M":
            x, y = numbers
        elif command == "m":
            x, y = x + numbers[0], y + numbers[1]
        else:  # h: a run of dark modules on row y - 0.5, from x
            for column in range(int(x), int(x + numbers[0])):
                dark.add((column, int(y)))
            x += numbers[0]
    size = max(max(c for c, _ in dark), max(r for _, r in dark)) + 5  # segno's border is 4 modules
    rows = []
    for row in range(size * scale):
        rows.append(" ".join("1" if (col // scale, row // scale) in dark else "0" for col in range(size * scale)))
    target.write_text(f"P1\n{size * scale} {size * scale}\n" + "\n".join(rows) + "\n")
    return target
