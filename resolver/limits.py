"""Size limits on what clients send; each refusal names the limit it hit."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


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
