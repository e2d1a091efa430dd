"""Failed-login limits (nodes.authoritative.login_limits), on a fake clock: buckets per identity and per
client, 429 with the seconds to wait, tries given back, bounded memory."""

from __future__ import annotations

import pytest

from nodes.authoritative.login_limits import LoginLimits, LoginLimitsConfig, Rate, Throttle
from resolver.errors import TooManyRequests
from tests.conftest import FakeClock

CONFIG = LoginLimitsConfig(identity=Rate(burst=3, per_second=1 / 10), client=Rate(burst=5, per_second=1), max_keys=100)


def fail(limits: LoginLimits, identity: str, client: str | None = "10.0.0.1") -> None:
    """One failed login: the try is taken and kept."""
    limits.admit(identity, f"300:{identity}", client)


def test_an_identity_gets_its_burst_then_429_with_the_seconds_to_wait() -> None:
    clock = FakeClock()
    limits = LoginLimits(CONFIG, clock)
    for _ in range(3):
        fail(limits, "88/A")
    with pytest.raises(TooManyRequests) as caught:
        fail(limits, "88/A")
    error = caught.value
    assert (error.http_status, error.response_code, error.retry_after) == (429, 3, 10)
    assert error.message == "too many failed logins for 300:88/A: try again in 10 s"
    clock.advance(9.5)
    with pytest.raises(TooManyRequests) as caught:
        fail(limits, "88/A")
    assert caught.value.retry_after == 1  # rounded up, never 0
    clock.advance(0.5)
    fail(limits, "88/A")  # one try back every 10 s


def test_other_identities_and_other_clients_are_not_affected() -> None:
    limits = LoginLimits(CONFIG, FakeClock())
    for _ in range(3):
        fail(limits, "88/A", "10.0.0.1")
    fail(limits, "88/B", "10.0.0.1")  # another identity, same client
    with pytest.raises(TooManyRequests):
        fail(limits, "88/A", "10.0.0.2")  # the identity is limited whoever asks
    fail(limits, "88/C", "10.0.0.2")


def test_a_client_spraying_identities_is_limited() -> None:
    limits = LoginLimits(CONFIG, FakeClock())
    for n in range(5):
        fail(limits, f"88/U{n}", "10.0.0.9")
    with pytest.raises(TooManyRequests) as caught:
        fail(limits, "88/U99", "10.0.0.9")
    assert caught.value.message == "too many failed logins from 10.0.0.9: try again in 1 s"
    fail(limits, "88/U99", "10.0.0.10")  # another client may still try that identity
    fail(limits, "88/U98", None)  # a client of unknown address is limited per identity only


def test_tries_given_back_after_a_success_do_not_count() -> None:
    limits = LoginLimits(CONFIG, FakeClock())
    for _ in range(10):
        limits.give_back(limits.admit("88/A", "300:88/A", "10.0.0.1"))
    assert len(limits.identities) == 0 and len(limits.clients) == 0  # full buckets are forgotten
    fail(limits, "88/A")


def test_a_success_gives_its_try_back_but_does_not_reset_the_failures() -> None:
    limits = LoginLimits(CONFIG, FakeClock())
    fail(limits, "88/A")
    fail(limits, "88/A")
    limits.give_back(limits.admit("88/A", "300:88/A", "10.0.0.1"))
    fail(limits, "88/A")
    with pytest.raises(TooManyRequests):
        fail(limits, "88/A")


def test_memory_is_bounded_and_refilled_buckets_are_dropped() -> None:
    clock = FakeClock()
    throttle = Throttle(Rate(burst=2, per_second=1), max_keys=50, clock=clock)
    for n in range(500):
        throttle.take(f"key-{n}")
    assert len(throttle) == 50
    assert throttle.wait("key-499") == 0 and throttle.wait("key-0") == 0  # the oldest forgotten
    throttle.take("key-499")
    assert throttle.wait("key-499") == pytest.approx(1.0)
    clock.advance(2)
    assert throttle.wait("key-499") == 0
    assert len(throttle) == 49  # refilled: dropped when seen
