"""The kernel's accounts of a process, sampled with their times (``benchmarks.schedstat``)."""

from __future__ import annotations

import os
import time

from benchmarks.schedstat import SchedSampler


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_the_accounts_around_a_moment_show_the_work_done_then() -> None:
    with SchedSampler(os.getpid(), interval=0.02) as sampler:
        time.sleep(0.2)  # idle: the main thread off the CPU
        idle = (time.monotonic() - 0.15, time.monotonic() - 0.05)
        busy_from = time.monotonic()
        _spin(0.3)  # the main thread on a CPU all along
        busy = (busy_from + 0.05, time.monotonic() - 0.05)
        time.sleep(0.05)

    around_busy = sampler.during(*busy)
    around_idle = sampler.during(*idle)
    assert around_busy["samples_ms"] >= 150, around_busy
    # Runnable all along around the spin (on a CPU, or waiting for one on a busy machine), hardly
    # at all while sleeping.
    runnable = around_busy["on_cpu_ms"] + around_busy["waited_ms"]
    assert runnable > 0.8 * around_busy["samples_ms"] and around_busy["on_cpu_ms"] > 0, around_busy
    assert around_idle["on_cpu_ms"] + around_idle["waited_ms"] < 0.3 * around_idle["samples_ms"], around_idle
    assert sampler.during(0.0, 1.0) == {}  # long before the first sample: nothing to say
    figures = sampler.figures()
    assert figures["on_cpu_s"] + figures["waited_for_cpu_s"] >= 0.2 and figures["major_faults"] >= 0, figures
