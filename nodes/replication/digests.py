"""``GET /api/replication/digest``: the record digest and its buckets, so two nodes can find where they differ.

- ``GET /api/replication/digest`` -> ``{"responseCode": 1, "records": N, "digest": HEX, "buckets":
  [[bucket, count, hex], ...]}``: the digest of every record (``Storage.digest``) and, per non-empty
  bucket of the key space, its record count and digest (``Storage.digest_buckets``). Both are kept up
  to date by the write path, so an answer costs a few reads whatever the node holds.
- ``GET /api/replication/digest?bucket=B[&after_key=K][&limit=N]`` -> ``{"responseCode": 1, "bucket": B,
  "keys": [[key, hash], ...], "more": bool}``: the keys of bucket B after K in key order (at most
  N, 1000 by default, 10000 at most), each with its record hash (``buckets.record_hash``: SHA-256 of
  the key and packed values), so a key held by both nodes with different values shows as well as
  one held by only one. ``more``: ask again with ``after_key`` the last key.

Comparing two nodes: fetch both bucket lists, then list the keys of each bucket whose count or hex
differ on both sides. The operator only, unless the topology says ``public_digest = true``.
"""

from __future__ import annotations

from aiohttp import web

from nodes.authoritative.authority import AUTHORITY
from nodes.replication.access import may_read_digest
from nodes.shared.http_api import query_int, respond
from resolver.codec import pack_values
from resolver.errors import AuthenticationNeeded, PermissionDenied, ProtocolError
from resolver.storage.buckets import record_hash

__all__ = ["get_digest"]

DEFAULT_KEYS = 1_000
MAX_KEYS = 10_000  # keys per answer: one bounded read, about 1 MB of JSON at most


async def get_digest(request: web.Request) -> web.Response:
    authority = request.app[AUTHORITY]
    if not await may_read_digest(request):
        if not request.headers.get("Authorization"):
            raise AuthenticationNeeded(f"the digest is for the node's operator ({authority.operator})")
        raise PermissionDenied(f"the digest is for the node's operator ({authority.operator}) only")
    store = authority.store
    bucket = query_int(request, "bucket")
    if bucket is None:
        records, digest = await store.digest()
        buckets = [[b, count, hexdigest] for b, count, hexdigest in await store.digest_buckets()]
        return respond(request, 200, {"responseCode": 1, "records": records, "digest": digest, "buckets": buckets})
    limit = query_int(request, "limit")
    limit = DEFAULT_KEYS if limit is None else limit
    if bucket < 0 or limit < 1:
        raise ProtocolError("bucket must not be negative and limit must be at least 1")
    limit = min(limit, MAX_KEYS)
    keys = await store.bucket_keys(bucket, request.query.get("after_key", ""), limit + 1)
    more = len(keys) > limit
    keys = keys[:limit]
    held = await store.get_many(keys)
    # A key listed then deleted before get_many is left out: the next look at the bucket shows it gone.
    listed = [[k, f"{record_hash(k.encode(), pack_values(held[k].values)):064x}"] for k in keys if k in held]
    return respond(request, 200, {"responseCode": 1, "bucket": bucket, "keys": listed, "more": more})
