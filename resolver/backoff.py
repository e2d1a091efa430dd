"""Exponential backoff with a cap and jitter: how long to wait before the next retry."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["backoff_delay"]

# 2**64 times any useful first delay is past every cap; a bigger exponent would only overflow a float.
_MAX_DOUBLINGS = 64


def backoff_delay(
    attempt: int,
    *,
    first: float,
    cap: float,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first): ``first`` doubled for each
    retry before it, at most ``cap``, then scaled by a random factor in ``[1 - jitter, 1]``.

    Jitter keeps clients that failed together (a node restarting under load) from retrying
    together; 0.5 is the "equal jitter" of the AWS Architecture Blog's *Exponential Backoff and
    Jitter*. ``rand`` returns a number in ``[0, 1)``; tests pass a fixed one.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be in [0, 1], not {jitter}")
    delay = min(cap, first * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    return delay * (1 - jitter * rand()) if jitter else delay
