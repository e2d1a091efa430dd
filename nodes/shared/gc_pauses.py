"""How long the garbage collector stopped this process, timed with ``gc.callbacks``, for ``/metrics``.

The recursive node keeps a million answers out of the collector's view (``resolver.cache``,
``nodes.recursive.hotpath.freeze_startup_objects``); these figures show it stays that way in
production: a collection of the generation that holds long-lived objects taking tens of
milliseconds again would show here before clients notice. Each worker process times its own.
"""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["CollectorPauses", "collector_pauses"]


class CollectorPauses:
    """Collections seen since ``install``: how many, their seconds summed, and the longest."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.worst = 0.0
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        """Time every collection from now on (once per process however often it is called)."""
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        del info
        now = time.perf_counter()
        if phase == "start":
            self._started = now
            return
        took = now - self._started
        self.count += 1
        self.total += took
        self.worst = max(self.worst, took)


_PROCESS = CollectorPauses()


def collector_pauses() -> CollectorPauses:
    """This process's figures, timing from the first call on."""
    _PROCESS.install()
    return _PROCESS
