"""Exponential backoff with a cap and jitter (resolver.backoff), with a fixed random source."""

from __future__ import annotations

import pytest

from resolver.backoff import backoff_delay
from resolver.bulk.sender import RetryPolicy


def test_doubles_per_retry_up_to_the_cap() -> None:
    delays = [backoff_delay(n, first=0.2, cap=5.0) for n in range(1, 9)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_jitter_scales_the_delay_down_by_at_most_its_fraction() -> None:
    assert backoff_delay(3, first=1.0, cap=30.0, jitter=0.5, rand=lambda: 0.0) == 4.0
    assert backoff_delay(3, first=1.0, cap=30.0, jitter=0.5, rand=lambda: 0.999) == pytest.approx(2.002)
    assert backoff_delay(10, first=1.0, cap=30.0, jitter=0.5, rand=lambda: 0.5) == 22.5  # capped first


def test_a_very_late_retry_does_not_overflow() -> None:
    assert backoff_delay(5000, first=1.0, cap=30.0) == 30.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="attempt counts from 1"):
        backoff_delay(0, first=1.0, cap=2.0)
    with pytest.raises(ValueError, match="jitter must be in"):
        backoff_delay(1, first=1.0, cap=2.0, jitter=1.5)


def test_bulk_retries_wait_with_equal_jitter() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=30.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (5, 16.0), (7, 30.0)]:
        delay = policy.delay(attempt)
        assert full / 2 <= delay <= full
