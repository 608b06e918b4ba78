from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.hlc import LOGICAL_MAX, HybridClock, pack, to_datetime, unpack
from node.clock import FakeClock

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
START_MS = int(START.timestamp()) * 1000


def make(max_skew: float = 60.0) -> tuple[FakeClock, HybridClock, list[tuple[int, int]]]:
    clock = FakeClock(START)
    skews: list[tuple[int, int]] = []
    hlc = HybridClock(clock, max_skew, on_skew=lambda r, p: skews.append((r, p)))
    return clock, hlc, skews


def test_pack_round_trips_and_orders_like_the_pair() -> None:
    assert unpack(pack(START_MS, 7)) == (START_MS, 7)
    assert pack(5, LOGICAL_MAX) < pack(6, 0)
    assert to_datetime(pack(START_MS, 123)) == START


@pytest.mark.parametrize(("wall", "logical"), [(-1, 0), (0, -1), (0, LOGICAL_MAX + 1)])
def test_pack_rejects_out_of_range(wall: int, logical: int) -> None:
    with pytest.raises(ValueError):
        pack(wall, logical)


def test_unpack_rejects_negative() -> None:
    with pytest.raises(ValueError):
        unpack(-1)


def test_now_follows_physical_time() -> None:
    clock, hlc, _ = make()
    assert hlc.now() == pack(START_MS, 0)
    assert hlc.now() == pack(START_MS, 1)
    clock.advance(0.005)
    assert hlc.now() == pack(START_MS + 5, 0)
    assert hlc.last == pack(START_MS + 5, 0)


def test_now_stays_monotonic_when_the_clock_goes_backwards() -> None:
    clock, hlc, _ = make()
    first = hlc.now()
    clock.advance(-30)
    second = hlc.now()
    assert second == pack(START_MS, 1)
    assert second > first


def test_observe_of_a_past_remote_only_bumps_the_counter() -> None:
    _, hlc, _ = make()
    local = hlc.now()
    assert hlc.observe(pack(START_MS - 10_000, 99)) == local + 1


def test_observe_same_millisecond_takes_the_larger_counter() -> None:
    _, hlc, _ = make()
    hlc.now()
    assert hlc.observe(pack(START_MS, 40)) == pack(START_MS, 41)


def test_observe_of_a_future_remote_within_skew_moves_the_clock() -> None:
    clock, hlc, skews = make()
    remote = pack(START_MS + 2_000, 3)
    assert hlc.observe(remote) == remote + 1
    assert hlc.now() == remote + 2
    clock.advance(3)
    assert hlc.now() == pack(START_MS + 3_000, 0)
    assert skews == [] and hlc.skew_rejections == 0


def test_remote_beyond_max_skew_is_reported_and_not_followed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, hlc, skews = make(max_skew=60)
    local = hlc.now()
    remote = pack(START_MS + 61_000, 0)
    with caplog.at_level(logging.WARNING, logger="sundesk.hlc"):
        assert hlc.observe(remote) == local
    assert hlc.last == local
    assert skews == [(remote, START_MS)]
    assert hlc.skew_rejections == 1
    assert any(r.name == "sundesk.hlc" and r.levelno == logging.WARNING for r in caplog.records)
    assert hlc.now() == local + 1


def test_remote_exactly_at_max_skew_is_followed() -> None:
    _, hlc, skews = make(max_skew=60)
    remote = pack(START_MS + 60_000, 0)
    assert hlc.observe(remote) == remote + 1
    assert skews == []


def test_logical_overflow_borrows_the_next_millisecond() -> None:
    _, hlc, _ = make()
    hlc.now()
    assert hlc.observe(pack(START_MS, LOGICAL_MAX)) == pack(START_MS + 1, 0)
    assert hlc.now() == pack(START_MS + 1, 1)


def test_many_events_in_one_millisecond_overflow_into_the_next() -> None:
    _, hlc, _ = make()
    stamps = [hlc.now() for _ in range(LOGICAL_MAX + 2)]
    assert stamps[-1] == pack(START_MS + 1, 0)
    assert stamps == sorted(set(stamps))


def test_start_resumes_after_a_restart_with_an_earlier_clock() -> None:
    issued_before = pack(START_MS + 120_000, 5)
    hlc = HybridClock(FakeClock(START), start=issued_before)
    assert hlc.now() == issued_before + 1


def test_negative_skew_is_refused() -> None:
    with pytest.raises(ValueError):
        HybridClock(FakeClock(START), max_skew_seconds=-1)


events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(-5_000, 5_000)),
        st.tuples(st.just("now"), st.just(0)),
        st.tuples(st.just("observe"), st.integers(-120_000, 120_000)),
        st.tuples(st.just("observe_max_logical"), st.integers(-3, 3)),
    ),
    max_size=200,
)


@given(events)
def test_returned_and_observed_stamps_strictly_increase(steps: list[tuple[str, int]]) -> None:
    clock, hlc, _ = make(max_skew=60)
    seen = hlc.last
    for kind, arg in steps:
        physical = START_MS + (clock.now() - START) // timedelta(milliseconds=1)
        if kind == "tick":
            clock.advance(arg / 1000)
            continue
        if kind == "now":
            ts = hlc.now()
            assert ts > seen
            # The paper's invariant: the wall part never falls behind physical time.
            assert unpack(ts)[0] >= physical
            seen = ts
            continue
        logical = 17 if kind == "observe" else LOGICAL_MAX
        remote = pack(physical + arg, logical)
        before = hlc.skew_rejections
        ts = hlc.observe(remote)
        if hlc.skew_rejections > before:
            assert ts == seen
            continue
        assert ts > seen and ts > remote
        # Packed, the merge is one max: next after local, next after remote, or physical.
        assert ts == max(seen + 1, remote + 1, pack(physical, 0))
        seen = ts


def test_observe_many_follows_the_highest_accepted_and_reports_each_too_far_ahead() -> None:
    _, hlc, skews = make(max_skew=1.0)
    near = pack(START_MS + 500, 3)
    far = [pack(START_MS + 5_000, 0), pack(START_MS + 9_000, 1)]
    stamp = hlc.observe_many([pack(START_MS - 10, 0), far[0], near, far[1], pack(START_MS, 9)])
    assert stamp == hlc.last == pack(START_MS + 500, 4)  # above every accepted stamp
    assert [r for r, _ in skews] == far and hlc.skew_rejections == 2
    assert hlc.now() > near


def test_observe_many_of_nothing_accepted_leaves_the_clock() -> None:
    _, hlc, skews = make(max_skew=1.0)
    before = hlc.now()
    assert hlc.observe_many([pack(START_MS + 5_000, 0)]) == before == hlc.last
    assert len(skews) == 1
    with pytest.raises(ValueError):
        hlc.observe_many([-1])
