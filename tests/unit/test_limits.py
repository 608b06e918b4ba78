"""The per-caller write limiter, driven by a fake monotonic clock."""

from __future__ import annotations

import pytest

from node.errors import InvalidArgument, ResourceExhausted
from node.limits import RateLimited, RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refused_with_the_rate_in_the_message() -> None:
    t = FakeTime()
    limiter = RateLimiter(5, burst=3, clock_fn=t)
    for _ in range(3):
        limiter.check("agent:alice")
    with pytest.raises(
        ResourceExhausted,
        match=r"slow down: at most 5 writes per second "
        r"for agent:alice",
    ):
        limiter.check("agent:alice")


def test_refills_at_the_rate_and_never_beyond_the_burst() -> None:
    t = FakeTime()
    limiter = RateLimiter(2, burst=2, clock_fn=t)
    limiter.check("a")
    limiter.check("a")
    t.now += 0.5  # one token back
    limiter.check("a")
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.retry_after == pytest.approx(0.5)
    t.now += 3600  # a long pause still gives only a burst
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_a_refusal_spends_nothing() -> None:
    t = FakeTime()
    limiter = RateLimiter(1, burst=1, clock_fn=t)
    limiter.check("a")
    for _ in range(10):
        with pytest.raises(RateLimited):
            limiter.check("a")
    t.now += 1.0
    limiter.check("a")


def test_callers_are_independent() -> None:
    t = FakeTime()
    limiter = RateLimiter(1, burst=1, clock_fn=t)
    limiter.check("agent:alice")
    limiter.check("agent:bob")
    with pytest.raises(RateLimited, match="agent:alice"):
        limiter.check("agent:alice")


def test_memory_is_bounded_least_recent_first() -> None:
    t = FakeTime()
    limiter = RateLimiter(1, burst=1, clock_fn=t, max_callers=3)
    for name in ("a", "b", "c"):
        limiter.check(name)
    with pytest.raises(RateLimited):
        limiter.check("a")  # a is now the most recent
    limiter.check("d")  # evicts b
    assert len(limiter) == 3
    limiter.check("b")  # b came back with a full bucket (evicting c)
    with pytest.raises(RateLimited):
        limiter.check("a")  # a was kept
    for i in range(10_000):
        limiter.check(f"caller-{i}")
    assert len(limiter) == 3


def test_a_clock_stepping_back_mints_nothing() -> None:
    t = FakeTime()
    limiter = RateLimiter(1, burst=1, clock_fn=t)
    limiter.check("a")
    t.now -= 100
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_fractional_rates_read_well() -> None:
    t = FakeTime()
    limiter = RateLimiter(0.5, burst=1, clock_fn=t)
    limiter.check("m")
    with pytest.raises(RateLimited, match=r"at most 0\.5 writes per second"):
        limiter.check("m")


@pytest.mark.parametrize(("rate", "burst", "size"), [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_nonsense_settings_are_refused(rate: float, burst: int, size: int) -> None:
    with pytest.raises(InvalidArgument):
        RateLimiter(rate, burst=burst, max_callers=size)
