"""Size limits on what clients send; each refusal names the limit it hit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_LIMITS", "MAX_NESTING", "Limits", "nested_deeper"]

# Containers (objects, arrays) inside one another in a request body or an upstream answer. The
# deepest legitimate body, an HS_SITE value in a PUT body (body > values > value > data > value >
# servers > server > interfaces > interface) or a JSON Web Key in a batch, is about ten levels;
# Python's own parsers and encoders fail at about 1,000 (RecursionError), so anything in between
# is refused here, with a message, before it can reach one of them.
MAX_NESTING = 32


def nested_deeper(doc: Any, limit: int = MAX_NESTING) -> bool:
    """Whether ``doc`` (decoded JSON or msgpack) holds containers more than ``limit`` levels deep.

    One level at a time, no recursion: O(containers), a few microseconds for a record."""
    level = [doc] if type(doc) is list or type(doc) is dict else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                if type(item) is list or type(item) is dict:
                    inner.append(item)
        level = inner
    return False


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits on what clients send; each refusal names the limit."""

    # 64 KiB for one value's data: large enough for a certificate chain or a JSON document, small
    # enough that a record stays far below HANDLE.NET's 256 KiB message limit with a few values.
    max_value_bytes: int = 65_536
    # HANDLE.NET's protocol caps a message at 262,144 bytes; a record must fit in one answer.
    max_record_bytes: int = 262_144
    # A Handle record is a short list of typed values; thousands means a client bug.
    max_values: int = 1_000
    # The SNMS API caps value types at 128 characters.
    max_type_length: int = 128
    # A single-record request body: the record limit plus JSON overhead.
    max_body_bytes: int = 1_048_576
    # POST /api/batch (DESIGN §4): operations per batch, and the body that carries them (10,000
    # records of a few KiB each; a client sends ~5,000 small ones, ~2 MB, at a time).
    max_batch_operations: int = 10_000
    max_batch_bytes: int = 64 * 1_048_576


DEFAULT_LIMITS = Limits()
