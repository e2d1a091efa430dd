"""What one write batch changes (resolver.storage.write_batch.plan), with no database: which writes are left
out, the change rows, and the count, bucket and rank deltas, which must equal a recount from scratch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.storage.buckets import digest_buckets, lanes
from resolver.storage.write_batch import _plan_any, _plan_creates, plan

KEYS = st.sampled_from([f"88.{p}/{n}" for p in (1, 2) for n in range(6)] + ["0.NA/88.1", "88.1/é"])
BLOBS = st.sampled_from([b"\x90", b"\x91\x01", b"\x91\x02", b"\x92\x01\x02"])
WRITES = st.lists(st.tuples(KEYS, st.none() | BLOBS), max_size=25)
STORED = st.dictionaries(KEYS, BLOBS, max_size=14)


def _recount(records: dict[str, bytes]) -> tuple[dict[str, int], dict[int, tuple[int, int]]]:
    counts: dict[str, int] = {}
    for key in records:
        counts[key.partition("/")[0]] = counts.get(key.partition("/")[0], 0) + 1
    buckets = {
        b: (n, int.from_bytes(b"".join(x.to_bytes(8, "big", signed=True) for x in four), "big"))
        for b, (n, four) in digest_buckets(records.items()).items()
    }
    return counts, buckets


@settings(max_examples=300, deadline=None)
@given(WRITES, STORED)
def test_deltas_take_the_stored_state_to_the_state_after_the_batch(
    writes: list[tuple[str, bytes | None]], stored: dict[str, bytes]
) -> None:
    keys, blobs = [k for k, _ in writes], [b for _, b in writes]
    decided = plan(keys, blobs, stored, ts=1)
    after = dict(stored)
    for key, blob in writes:
        if blob is None:
            after.pop(key, None)
        else:
            after[key] = blob
    # Every logged write changes its key's state at that point; every left-out one is a repeated put.
    state = dict(stored)
    logged = []
    for key, blob in writes:
        if blob is not None and state.get(key) == blob:
            continue
        logged.append((key, "delete" if blob is None else "put"))
        if blob is None:
            state.pop(key, None)
        else:
            state[key] = blob
    assert [(k, op) for k, op, _, _ in decided.log] == logged
    # The records table ends as the batch says, and the counts and buckets move exactly as a recount.
    written = {k: b for k, b, _ in decided.puts} | {k: None for (k,) in decided.deletes}
    assert {k: v for k, v in ({**stored, **written}).items() if v is not None} == after
    before_counts, before_buckets = _recount(stored)
    after_counts, after_buckets = _recount(after)
    for prefix in before_counts.keys() | after_counts.keys():
        delta = dict(decided.counts).get(prefix, 0)
        assert before_counts.get(prefix, 0) + delta == after_counts.get(prefix, 0)
    moved = {b: (n, four) for b, n, *four in decided.buckets}
    for bucket in before_buckets.keys() | after_buckets.keys() | moved.keys():
        n0, h0 = before_buckets.get(bucket, (0, 0))
        n1, h1 = after_buckets.get(bucket, (0, 0))
        dn, dh = moved.get(bucket, (0, [0, 0, 0, 0]))
        assert n0 + dn == n1
        assert list(lanes(h0 ^ h1)) == list(dh)
    # The listing ranks move by the keys that became records and the records deleted, each once.
    assert sorted(decided.added) == sorted(after.keys() - stored.keys())
    assert sorted(decided.removed) == sorted(stored.keys() - after.keys())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(KEYS, BLOBS), max_size=14, unique_by=lambda w: w[0]))
def test_the_bulk_path_plans_exactly_what_the_general_path_plans(writes: list[tuple[str, bytes]]) -> None:
    keys, blobs = [k for k, _ in writes], [b for _, b in writes]
    assert _plan_creates(keys, blobs, ts=7) == _plan_any(keys, list(blobs), None, ts=7)
