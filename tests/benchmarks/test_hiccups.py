"""The hiccup meter: when the machine itself stood still (``benchmarks.hiccups``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.hiccups import stood_still


@pytest.mark.parametrize(
    ("start", "end", "seconds"),
    [
        (10.0, 11.0, 0.0),  # nothing overlaps
        (0.0, 10.0, 0.3),  # two apart, both whole: 0.1 + 0.2
        (1.05, 10.0, 0.25),  # the first clipped at the start
        (0.0, 5.1, 0.2),  # the second clipped at the end
        (0.0, 20.0, 0.3 + 0.5),  # overlapping ones counted once: 12.0-12.5 is covered by both
    ],
)
def test_the_machine_stood_still_for_the_union_of_its_hiccups_in_a_span(
    start: float, end: float, seconds: float
) -> None:
    hiccups = [(1.0, 0.1), (5.0, 0.2), (12.0, 0.4), (12.1, 0.4)]
    assert stood_still(hiccups, start, end) == pytest.approx(seconds)


def test_a_meter_runs_until_told_to_stop_and_says_what_it_saw() -> None:
    cpu = min(os.sched_getaffinity(0))
    command = [sys.executable, "-m", "benchmarks.hiccups", str(cpu)]
    meter = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert meter.stdout is not None
    assert meter.stdout.readline().strip() == "READY"
    time.sleep(0.5)
    meter.send_signal(signal.SIGTERM)
    out, err = meter.communicate(timeout=10)
    assert meter.returncode == 0, err
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["cpu"] == cpu and figures["seconds"] >= 0.4, figures
    assert figures["priority"].startswith(("SCHED_FIFO 20", "normal (real-time not permitted")), figures
    assert figures["count"] == len(figures["hiccups"]) and figures["max_ms"] >= 0, figures
    assert all(late_ms > figures["threshold_ms"] for _, late_ms in figures["hiccups"]), figures
