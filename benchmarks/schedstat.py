"""Why a process was not running: the kernel's own accounts, sampled while the scale benchmark fills
the recursive node, to tell its pauses apart.

Every ``interval`` a thread reads, for the node's main thread, ``/proc/PID/task/PID/schedstat``
(nanoseconds on a CPU, nanoseconds runnable but waiting for one) and the major page faults of
``/proc/PID/stat`` (a page read back from the disk: code or a file the kernel had dropped), and
the machine's steal time from ``/proc/stat`` (the hypervisor running something else on a virtual
CPU). A pause of the node's loop is then one of: its own work (on-CPU time grew by the pause), a
wait for a CPU (the run-queue wait grew), the disk (major faults), or none of these on the node's
side (steal, or a wait the kernel does not count as either, such as a blocking system call).

Each sample is kept with its time (``time.monotonic``, the same clock in every process), so
``during(start, end)`` gives the accounts of the samples around any moment another process timed:
the scale benchmark asks it about the probe's slowest requests.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["SchedSampler"]

_TICK = os.sysconf("SC_CLK_TCK")
_ACCOUNTS = ("on_cpu_ms", "waited_ms", "major_faults", "steal_ms")  # what each sample says grew
KEPT_SAMPLES = 200_000  # 10,000 s at 50 ms, a few MB: more than any fill of the scale benchmark


def _schedstat(pid: int) -> tuple[int, int]:
    on_cpu, waited, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(on_cpu), int(waited)


def _major_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[9])  # majflt: the 12th field, the 10th after the command


def _steal() -> int:
    """Steal time of all CPUs, in clock ticks."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()
    return int(fields[8])


class SchedSampler:
    """For a ``with`` block: the largest growth of each account within one ``interval`` (of the last
    ``KEPT_SAMPLES``), and the totals; ``figures()`` after the block. Nothing is reported where
    ``/proc`` lacks the files."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._first: tuple[int, int, int, int] | None = None
        self._last: tuple[int, int, int, int] | None = None
        self._started = 0.0
        self._samples: deque[tuple[float, float, dict[str, float]]] = deque(maxlen=KEPT_SAMPLES)
        self.error: str | None = None

    def _read(self) -> tuple[int, int, int, int]:
        on_cpu, waited = _schedstat(self.pid)
        return on_cpu, waited, _major_faults(self.pid), _steal()

    def _sample(self) -> None:
        try:
            self._first = self._last = previous = self._read()
            began = time.monotonic()
            while not self._stop.wait(self.interval):
                now = self._read()
                ended = time.monotonic()
                grew = {
                    "on_cpu_ms": (now[0] - previous[0]) / 1e6,
                    "waited_ms": (now[1] - previous[1]) / 1e6,
                    "major_faults": now[2] - previous[2],
                    "steal_ms": (now[3] - previous[3]) * 1000 / _TICK,
                }
                self._samples.append((began, ended, grew))
                self._last, previous, began = now, now, ended
        except (OSError, ValueError, IndexError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def __enter__(self) -> SchedSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> dict[str, float]:
        """The accounts summed over the samples that overlap ``start``..``end`` (``time.monotonic``
        seconds), and how long those samples span: the time around a slow request, to say what
        the node and the machine were doing meanwhile. Empty when no sample covers it."""
        sums = {"samples_ms": 0.0, "on_cpu_ms": 0.0, "waited_ms": 0.0, "major_faults": 0.0, "steal_ms": 0.0}
        for began, ended, grew in list(self._samples):
            if ended < start or began > end:
                continue
            sums["samples_ms"] += (ended - began) * 1000
            for key, value in grew.items():
                sums[key] += value
        if not sums["samples_ms"]:
            return {}
        return {key: round(value, 1) for key, value in sums.items()}

    def figures(self) -> dict[str, Any]:
        if self._first is None or self._last is None:
            return {"available": False, "reason": self.error or "no sample"}
        first, last = self._first, self._last
        samples = list(self._samples)  # the worst sample of each account, from those kept
        worst = {key: max((grew[key] for _, _, grew in samples), default=0.0) for key in _ACCOUNTS}
        wait_ended = max(samples, key=lambda sample: sample[2]["waited_ms"])[1] if samples else self._started
        return {
            "interval_ms": self.interval * 1000,
            "on_cpu_s": round((last[0] - first[0]) / 1e9, 2),
            "waited_for_cpu_s": round((last[1] - first[1]) / 1e9, 2),
            "major_faults": last[2] - first[2],
            "steal_s_all_cpus": round((last[3] - first[3]) / _TICK, 2),
            "worst_interval": {key: round(value, 2) for key, value in worst.items()},
            "worst_wait_at_s": round(wait_ended - self._started, 1),
            **({"error": self.error} if self.error else {}),
        }
