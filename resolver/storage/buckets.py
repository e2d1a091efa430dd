"""The digest of a node's records, kept per bucket so a write updates it in O(1) and two nodes find where they differ.

Every record falls in one of ``BUCKETS`` buckets by the CRC-32 of its UTF-8 key. A bucket holds its
record count and the XOR of ``record_hash(key, blob)`` over its records: the SHA-256 of the key and
the packed values, each preceded by its length (4 bytes, big-endian), so no two different records
hash the same input. XOR is order-independent and its own inverse: a write replaces a record's
hash by XOR-ing out the old one and in the new one, whatever order the writes came in, so a mirror
replaying the log, a node loaded from a snapshot and a file upgraded from schema 3 all hold the same
buckets for the same records. The root is the SHA-256 over every bucket (count and hash) in order.

This detects accidental divergence between cooperating nodes (a lost write, a bad copy). It is not
a defence against an adversary: XOR of hashes is linear, and a party that chooses records could
make two different sets combine to the same bucket hash.

The hash is kept as four signed 64-bit lanes (``lanes``), so SQLite can XOR a delta into a stored
bucket within one UPSERT statement (``a XOR b`` is ``(a | b) & ~(a & b)``) without a read first.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable

__all__ = [
    "BUCKETS",
    "EMPTY",
    "Lanes",
    "bucket_of",
    "bucket_of_key",
    "digest_buckets",
    "lanes",
    "lanes_hex",
    "record_hash",
    "root",
]

# 1,024 buckets: at 10 million records ~10,000 records each, so a differing bucket narrows a
# comparison to 0.1% of the keys. Each bucket a batch touches is one row updated in its transaction:
# a bulk batch of 5,000 records touches nearly all of them, and 4,096 buckets cost ~1 µs per record
# loaded (measured, a tenth of the whole write), 1,024 a quarter of that.
BUCKETS = 1024
_MASK = BUCKETS - 1

Lanes = tuple[int, int, int, int]
EMPTY: Lanes = (0, 0, 0, 0)


def bucket_of(raw_key: bytes) -> int:
    """The bucket of a key given as UTF-8 bytes (what ``record_hash`` encodes anyway)."""
    return zlib.crc32(raw_key) & _MASK


def bucket_of_key(key: str) -> int:
    return bucket_of(key.encode("utf-8"))


def record_hash(raw_key: bytes, blob: bytes) -> int:
    """SHA-256 of the length-prefixed UTF-8 key and packed values, as a 256-bit integer."""
    framed = b"".join((len(raw_key).to_bytes(4, "big"), raw_key, len(blob).to_bytes(4, "big"), blob))
    return int.from_bytes(hashlib.sha256(framed).digest(), "big")


def lanes(value: int) -> Lanes:
    """A 256-bit hash as four signed 64-bit integers, most significant first (SQLite's INTEGER)."""
    raw = value.to_bytes(32, "big")
    return (
        int.from_bytes(raw[0:8], "big", signed=True),
        int.from_bytes(raw[8:16], "big", signed=True),
        int.from_bytes(raw[16:24], "big", signed=True),
        int.from_bytes(raw[24:32], "big", signed=True),
    )


def _lane_bytes(four: Lanes) -> bytes:
    return b"".join(lane.to_bytes(8, "big", signed=True) for lane in four)


def lanes_hex(four: Lanes) -> str:
    return _lane_bytes(four).hex()


def root(buckets: Iterable[tuple[int, int, Lanes]]) -> tuple[int, str]:
    """(record count, root hex) from ``(bucket, count, lanes)`` in bucket order; missing buckets are
    empty. The root hashes, for each of the ``BUCKETS`` buckets, its count (8 bytes) and hash."""
    digest = hashlib.sha256()
    total = 0
    expected = 0
    zero = bytes(40)
    for bucket, count, four in buckets:
        if count == 0:
            continue  # an emptied bucket reads as one never used
        digest.update(zero * (bucket - expected))
        digest.update(count.to_bytes(8, "big") + _lane_bytes(four))
        total += count
        expected = bucket + 1
    digest.update(zero * (BUCKETS - expected))
    return total, digest.hexdigest()


def digest_buckets(records: Iterable[tuple[str, bytes]]) -> dict[int, tuple[int, Lanes]]:
    """Every non-empty bucket's (count, lanes), computed from the records (the slow path that the
    stored buckets must always equal: the schema upgrade and the in-memory fake use it)."""
    counts: dict[int, int] = {}
    hashes: dict[int, int] = {}
    for key, blob in records:
        raw = key.encode("utf-8")
        bucket = bucket_of(raw)
        counts[bucket] = counts.get(bucket, 0) + 1
        hashes[bucket] = hashes.get(bucket, 0) ^ record_hash(raw, blob)
    return {bucket: (counts[bucket], lanes(hashes[bucket])) for bucket in sorted(counts)}
