"""The collector's pauses as the recursive node's /metrics reports them."""

from __future__ import annotations

import gc

from nodes.shared.gc_pauses import CollectorPauses


def test_every_collection_is_counted_and_timed() -> None:
    pauses = CollectorPauses()
    was_enabled = gc.isenabled()
    gc.disable()  # only the two collections asked for below
    pauses.install()
    pauses.install()  # once per process however often asked: each collection counted once
    try:
        garbage = [[] for _ in range(10_000)]
        for item in garbage:
            item.append(item)  # cycles only the collector frees
        del garbage, item
        gc.collect()
        gc.collect()
    finally:
        gc.callbacks.remove(pauses._callback)
        if was_enabled:
            gc.enable()
    assert pauses.count == 2
    assert 0 < pauses.worst <= pauses.total
    assert not any(cb == pauses._callback for cb in gc.callbacks)
