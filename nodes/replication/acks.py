"""What a primary knows of its mirrors' progress: the feed that wakes long-polls, the seqs they applied.

A write that commits wakes every long-poll waiting on ``GET /api/replication/changes`` (``ChangeFeed``).
A mirror's long-poll carries ``after``, exactly the seq it has applied; ``AckTracker`` keeps the
highest one per mirror, and a ``sync_mirrors`` write waits on it (``nodes.replication.roles``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

__all__ = ["AckTracker", "ChangeFeed"]


class ChangeFeed:
    """Wakes long-polls when a write commits: each write sets the current event and starts a new one."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.closing = False

    def notify(self) -> None:
        self.event.set()
        self.event = asyncio.Event()

    def close(self) -> None:
        """The node is shutting down: answer every long-poll now rather than hold up the shutdown."""
        self.closing = True
        self.notify()


class AckTracker:
    """The highest seq each mirror has reported applied (its long-poll's ``after``), and who waits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.applied: dict[str, tuple[int, float]] = {}  # mirror name -> (seq, clock() when reported)
        self._clock = clock
        self._event = asyncio.Event()

    def report(self, node: str, seq: int) -> None:
        previous = self.applied.get(node)
        self.applied[node] = (max(seq, previous[0] if previous else 0), self._clock())
        self._event.set()
        self._event = asyncio.Event()

    def best(self) -> int:
        """The highest seq any mirror has applied (0 before any reported)."""
        return max((seq for seq, _ in self.applied.values()), default=0)

    async def wait(self, seq: int, timeout: float) -> bool:
        """Whether some mirror reports ``seq`` applied within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.best() < seq:
            woken, remaining = self._event, deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), remaining)
        return True
