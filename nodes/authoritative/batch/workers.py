"""Worker processes that prepare large ``POST /api/batch`` bodies beside the node's event loop.

Decoding, validating and packing cost the node ~8 µs of Python per identifier, all of it in one
thread. With workers, a large body goes whole to a process of its own (``batchprep.prepare_body``)
while the event loop goes on deciding and committing the batches before it: a bulk load then uses
every core, and the loop stays free for reads. The workers hold no state and touch no database;
everything that needs the records (existence, authorisation, the transaction) stays in the node.

The pool starts with the first large batch (most nodes never see one) in processes of their own
(``spawn``: nothing of the node's loop or connections is inherited), and stops with the node; a
worker that dies is replaced and its batch is prepared in the loop instead, so a broken pool costs
speed, never a request. Small bodies are prepared in the loop: sending them would cost more than
it saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from nodes.authoritative.batch.prep import Prepared, prepare_body
from resolver.limits import Limits

__all__ = ["DEFAULT_WORKERS", "MIN_WORKER_BYTES", "BatchWorkers"]

log = logging.getLogger("idres.batch")

# Two processes on this 2-core class of machine: one prepares a batch while the other's result is
# decided and committed; more than the cores only adds switching.
DEFAULT_WORKERS = min(2, os.cpu_count() or 1)
# Bodies from this size (about 1,000 identifiers of ~250 bytes) go to a worker; below it sending
# the body and the result back costs more than preparing it in the loop.
MIN_WORKER_BYTES = 256 * 1024
# Workers run at a lower CPU priority than the node (see _start_worker).
WORKER_NICENESS = 10
# How often a worker checks that the node that started it still runs.
PARENT_POLL_SECONDS = 0.5


def _start_worker(parent: int) -> None:
    """In each worker: yield the CPU to the node's own threads, and exit once the node is gone."""
    with contextlib.suppress(OSError, AttributeError):  # no os.nice on Windows
        # Commits (under the node's write lock, in its SQLite thread) and reads come first: a
        # worker preparing the next batch must not slow the one batch that holds the lock.
        os.nice(WORKER_NICENESS)
    _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """Exit once the node is gone, even killed with SIGKILL (its pool cannot say so)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-node", daemon=True).start()


class BatchWorkers:
    """A lazily started process pool: ``await prepare(body, ...)`` or None when it should not be used."""

    def __init__(self, workers: int, min_bytes: int | None = None) -> None:
        self.workers = workers
        self.min_bytes = MIN_WORKER_BYTES if min_bytes is None else min_bytes
        self._pool: ProcessPoolExecutor | None = None

    def wanted(self, body: bytes) -> bool:
        return self.workers > 0 and len(body) >= self.min_bytes

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def prepare(self, body: bytes, media: str, limits: Limits, now: int) -> Prepared | None:
        """``batchprep.prepare_body`` in a worker; None if the pool broke (prepare it in the loop).
        A body that cannot be read raises its ProtocolError here, as in the loop."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), prepare_body, body, media, limits, now)
        except BrokenProcessPool as exc:
            log.warning("a batch worker process died (%s); starting new ones", exc)
            broken, self._pool = self._pool, None
            if broken is not None:
                broken.shutdown(wait=False, cancel_futures=True)
            return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
