"""CPU affinity for the scale benchmark's recursive phase: the node measured on a CPU of its own.

On a 2-CPU machine the recursive node, the enterprise node it asks, the fill and the probes share
both CPUs, and the node then waits for a CPU behind the others: its event loop ran late by up to
54 ms in a run whose longest collection took 10.6 ms (docs/benchmarks.md#scale). A recursive node
in service has its machine; here it gets CPU 0, and everything else of the benchmark (the other
nodes, their worker processes, this process and the probes it starts) the other CPUs. What the probe
then sees is the node's own pauses: collections, long turns of its loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from benchmarks.bulk import _children

__all__ = ["node_on_its_own_cpu"]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    return [pid, *(p for child in _children(pid) for p in _tree(child))]


def _pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Every thread of each process in ``pids`` to ``cpus`` (threads started later inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def node_on_its_own_cpu(node: int, others: Iterable[int]) -> Iterator[str]:
    """Within the block, process ``node`` (and its children) on CPU 0 and ``others`` (and theirs,
    and this process) on the rest; yields what was done, in words. Nothing is pinned on a machine
    with one CPU or when affinity cannot be set; the words say so."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield "not pinned (one CPU)"
        return
    mine, rest = {cpus[0]}, set(cpus[1:])
    node_tree = _tree(node)
    other_trees = [p for pid in others for p in _tree(pid)] + [os.getpid()]
    try:
        _pin(node_tree, mine)
        _pin(other_trees, rest)
    except OSError as exc:
        _pin([*node_tree, *other_trees], set(cpus))
        yield f"not pinned ({exc})"
        return
    try:
        yield f"the node on CPU {cpus[0]}, everything else on CPU {', '.join(map(str, sorted(rest)))}"
    finally:
        _pin([p for p in [*node_tree, *other_trees] if Path(f"/proc/{p}").exists()], set(cpus))
