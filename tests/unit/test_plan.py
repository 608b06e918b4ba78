"""The follow-the-sun plan: a whole year checked minute by minute, then the rules one by one.

The year check compares the plan with an oracle built without the calendars: for every
UTC hour it asks zoneinfo for the local wall-clock time and reads the weekday's hours
and the holiday list directly, minute by minute.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from federation.calendars import public_holidays
from federation.config import (
    DEFAULT_HOURS,
    FederationConfig,
    OncallRota,
    OncallWeek,
    QueueConfig,
    RegionConfig,
    load_config,
    load_config_text,
)
from federation.plan import (
    BORROWED,
    HOME,
    ON_CALL,
    ONCALL_OWNER,
    Planner,
    PlanResult,
    Segment,
    candidates_at,
    last_reset,
    next_handoff,
    owner_at,
    plan,
)
from node.errors import InvalidArgument
from ops.plan_cli import render_plan, run_plan

MINUTE = timedelta(minutes=1)
YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)
YEAR_END = datetime(2027, 1, 1, tzinfo=UTC)
DEFAULT = load_config()


def _restricted() -> FederationConfig:
    """Restrictions, a lunch break, Saturday hours, a region open around the clock six
    days a week (so borrowed stretches cross the weekly reset) and a rota with gaps."""
    regions = {r.name: r for r in DEFAULT.regions}
    lunch = ((time(9), time(12)), (time(13), time(18)))
    office = DEFAULT_HOURS[0]
    regions["velizy"] = dataclasses.replace(
        regions["velizy"],
        hours=(lunch,) * 5 + ((), ()),
        extra_closed_dates=(date(2026, 12, 24), date(2026, 12, 31)),
    )
    regions["germany"] = dataclasses.replace(
        regions["germany"], subdivision="BY", hours=(office,) * 5 + (((time(10), time(14)),), ())
    )
    short_friday = ((time(9), time(15)),)
    regions["us"] = dataclasses.replace(regions["us"], hours=(office,) * 4 + (short_friday, (), ()))
    full_day = ((time(0), time(0)),)
    regions["japan"] = dataclasses.replace(regions["japan"], hours=(full_day,) * 6 + ((),))
    config = dataclasses.replace(
        DEFAULT,
        regions=tuple(regions.values()),
        queues=(
            QueueConfig("velizy", "velizy", ("uk", "germany")),
            QueueConfig("japan", "japan", ()),
            QueueConfig("uk", "uk", ("us", "velizy")),
            QueueConfig("us", "us"),
        ),
        oncall=OncallRota(
            date(2026, 1, 5),
            (
                OncallWeek("ann", "bob", date(2026, 6, 1)),
                OncallWeek("bob", "ann", date(2026, 6, 8)),
            ),
        ),
    )
    return load_config_text(config.to_toml())  # also proves it is a valid file


RESTRICTED = _restricted()
CONFIGS = {"default": DEFAULT, "restricted": RESTRICTED}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def oracle_open_minutes(region: RegionConfig, start: datetime, minutes: int) -> bytes:
    """1 for each minute the region is open, from local wall-clock time alone."""
    zone = ZoneInfo(region.timezone)
    weekday_flags: list[bytes] = []
    for intervals in region.hours:
        flags = bytearray(1440)
        for opens, closes in intervals:
            first = opens.hour * 60 + opens.minute
            last = (closes.hour * 60 + closes.minute) or 1440
            flags[first:last] = b"\x01" * (last - first)
        weekday_flags.append(bytes(flags))
    closed_day = bytes(1440)
    closed = set(region.extra_closed_dates)
    for year in range(start.year - 1, start.year + 2):
        closed |= public_holidays(region.country, region.subdivision, year)
    out = bytearray(minutes)
    for hour in range(minutes // 60):
        local = (start + timedelta(hours=hour)).astimezone(zone)
        assert local.minute == 0, "the oracle needs whole-hour UTC offsets"
        day = local.date()
        day_flags = closed_day if day in closed else weekday_flags[day.weekday()]
        out[hour * 60 : hour * 60 + 60] = day_flags[local.hour * 60 : local.hour * 60 + 60]
    return bytes(out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_whole_year_minute_by_minute(name: str) -> None:
    config = CONFIGS[name]
    minutes = int((YEAR_END - YEAR_START) / MINUTE)
    bit = {r.name: 1 << i for i, r in enumerate(config.regions)}
    columns = [oracle_open_minutes(r, YEAR_START, minutes) for r in config.regions]
    masks = [sum(b << i for i, b in enumerate(flags)) for flags in zip(*columns, strict=True)]
    result = plan(config, YEAR_START, YEAR_END)
    planner = Planner(config)
    rng = random.Random(2026)
    for queue in config.queues:
        segments = result.for_queue(queue.name)
        # Contiguous, non-overlapping, covering the year exactly, neighbours distinct.
        assert segments[0].start == YEAR_START and segments[-1].end == YEAR_END
        for before, after in pairwise(segments):
            assert before.end == after.start
            assert (before.owner, before.primary) != (after.owner, after.primary)
        home = bit[queue.home]
        allowed = sum(bit[r] for r in config.region_names() if queue.may_borrow(r))
        for segment in segments:
            first = (segment.start - YEAR_START) // MINUTE
            last = (segment.end - YEAR_START) // MINUTE
            assert YEAR_START + first * MINUTE == segment.start  # boundaries on the minute
            assert first < last
            # Every distinct set of open regions met inside the segment, i.e. every minute.
            for mask in set(masks[first:last]):
                if segment.kind == HOME:
                    assert segment.owner == queue.home and mask & home, segment
                elif segment.kind == BORROWED:
                    assert not mask & home, segment  # the home owns whenever it is open
                    assert mask & bit[segment.owner] & allowed, segment  # borrower is open
                else:
                    assert segment.kind == ON_CALL and segment.owner == ONCALL_OWNER
                    assert not mask & (home | allowed), segment  # nobody allowed is open
                    pair = config.oncall.oncall_for(segment.start)
                    assert (segment.primary, segment.secondary) == (pair or (None, None))
        for before, after in pairwise(segments):
            if before.kind != BORROWED:
                continue
            # No needless handoff: the borrower has closed, or the home has reopened, or
            # (only around the clock) the weekly reset chose afresh.
            mask = masks[(after.start - YEAR_START) // MINUTE]
            reset = after.start == last_reset(after.start)
            assert mask & home or not mask & bit[before.owner] or reset, (before, after)
            if name == "default":
                assert not reset
        for segment in segments:
            if segment.kind == BORROWED and segment.start > YEAR_START:
                # The borrower chosen had the most time left of the allowed open regions.
                left = {
                    r: planner.calendars[r].open_until(segment.start)
                    for r in config.region_names()
                    if queue.may_borrow(r) and planner.calendars[r].is_open(segment.start)
                }
                chosen = left[segment.owner]
                assert chosen is not None
                assert all(chosen >= u for u in left.values() if u is not None), segment
        # Exactly one owner at any minute, found by bisection, agrees with the calendars.
        starts = [s.start for s in segments]
        for _ in range(300):
            instant = YEAR_START + rng.randrange(minutes) * MINUTE
            segment = segments[bisect.bisect_right(starts, instant) - 1]
            assert segment.contains(instant)
            open_now = [r for r, c in planner.calendars.items() if c.is_open(instant)]
            assert (segment.owner == queue.home) == (queue.home in open_now)
            if segment.kind == BORROWED:
                assert segment.owner in open_now
    gaps = [s for s in result.segments if s.kind == ON_CALL and s.primary is None]
    assert len(result.warnings) == len(gaps)
    assert bool(gaps) is (name == "restricted")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_owner_at_and_next_handoff_agree_with_the_plan(name: str) -> None:
    config = CONFIGS[name]
    start, end = utc("2026-03-02"), utc("2026-04-13")
    result = plan(config, start, end)
    rng = random.Random(7)
    for queue in config.queues:
        segments = result.for_queue(queue.name)
        inner = segments[1:-1]  # whole segments, not cut by the plan's window
        for segment in rng.sample(inner, min(12, len(inner))):
            instant = segment.start + (segment.end - segment.start) * rng.random()
            assert owner_at(config, queue.name, instant) == segment
            assert Planner(config).owner_at(queue.name, instant) == segment  # nothing cached
            assert owner_at(config, queue.name, segment.start) == segment
            later = [s for s in segments if s.start >= segment.end and s.owner != segment.owner]
            if later and later[0] is not segments[-1]:
                assert next_handoff(config, queue.name, instant) == later[0]


def test_a_typical_winter_day_for_the_velizy_queue() -> None:
    result = plan(DEFAULT, utc("2026-01-08 00:00"), utc("2026-01-09 00:00"))
    rows = [(s.owner, s.kind, s.start.hour, s.end.hour) for s in result.for_queue("velizy")]
    assert rows == [
        ("japan", BORROWED, 0, 8),  # Tokyo opens at 09:00 JST = 00:00 UTC
        ("velizy", HOME, 8, 17),
        ("us", BORROWED, 17, 23),  # New York has six hours left, London only one
        ("oncall", ON_CALL, 23, 0),
    ]
    last = result.for_queue("velizy")[-1]
    assert (last.primary, last.secondary) == ("camille.martin", "jonas.weber")


def test_the_borrower_keeps_the_queue_until_it_closes() -> None:
    # Japan closes at 09:00 UTC; London (open until 18:00) borrows. New York opens at
    # 14:00 with more time left, but London keeps the queue until it closes.
    owner = owner_at(DEFAULT, "japan", utc("2026-01-08 15:00"))
    assert (owner.owner, owner.kind) == ("uk", BORROWED)
    assert (owner.start, owner.end) == (utc("2026-01-08 09:00"), utc("2026-01-08 18:00"))
    after = next_handoff(DEFAULT, "japan", utc("2026-01-08 15:00"))
    assert after is not None and (after.owner, after.start) == ("us", utc("2026-01-08 18:00"))


def test_borrowers_restriction_leaves_the_queue_to_on_call() -> None:
    owner = owner_at(RESTRICTED, "velizy", utc("2026-01-08 19:00"))  # only New York is open
    assert (owner.owner, owner.kind) == (ONCALL_OWNER, ON_CALL)
    assert owner_at(DEFAULT, "velizy", utc("2026-01-08 19:00")).owner == "us"
    never_borrowed = plan(RESTRICTED, utc("2026-01-05"), utc("2026-01-12")).for_queue("japan")
    assert {s.kind for s in never_borrowed} == {HOME, ON_CALL}


def test_gaps_without_an_on_call_engineer_are_warned() -> None:
    config = dataclasses.replace(DEFAULT, oncall=OncallRota(date(2026, 1, 5)))
    result = plan(config, utc("2026-12-24 00:00"), utc("2026-12-29 00:00"))
    # Christmas Day: Tokyo works until 09:00 UTC, then nobody until Tokyo on Monday.
    assert result.warnings[1] == (
        "2026-12-25T09:00Z–2026-12-28T00:00Z: queue velizy has no open region and no on-call "
        "engineer"
    )
    for queue in config.queue_names():
        assert any(f"queue {queue} has no open region" in w for w in result.warnings)
    assert plan(DEFAULT, utc("2026-12-24"), utc("2026-12-29")).warnings == ()


def test_candidates_for_failover() -> None:
    # 15:00 UTC on a winter Thursday: Paris and Berlin until 17:00, London until 18:00,
    # New York until 23:00; Tokyo closed. London holds the Japan queue.
    assert candidates_at(DEFAULT, "japan", utc("2026-01-08 15:00")) == [
        "uk", "us", "velizy", "germany", "japan",
    ]  # fmt: skip
    assert candidates_at(DEFAULT, "velizy", utc("2026-01-08 15:00"))[0] == "velizy"
    assert candidates_at(DEFAULT, "us", utc("2026-01-10 12:00")) == ["us"]  # Saturday
    assert candidates_at(RESTRICTED, "velizy", utc("2026-01-08 19:00")) == ["velizy"]


def test_plan_window_edges_and_bad_windows() -> None:
    start = utc("2026-03-27 12:34:56")
    result = plan(DEFAULT, start, start + timedelta(hours=30))
    for queue in DEFAULT.queue_names():
        segments = result.for_queue(queue)
        assert segments[0].start == start and segments[-1].end == start + timedelta(hours=30)
    assert plan(DEFAULT, start, start).segments == ()
    with pytest.raises(ValueError, match="before its start"):
        plan(DEFAULT, start, start - MINUTE)
    with pytest.raises(ValueError, match="timezone-aware"):
        plan(DEFAULT, datetime(2026, 1, 1), datetime(2026, 1, 2))


def test_rota_changes_split_on_call_stretches() -> None:
    # Monday 12 January is a holiday in Japan, so nobody opens before Paris at 08:00 UTC.
    segments = plan(DEFAULT, utc("2026-01-10"), utc("2026-01-13")).for_queue("uk")
    on_call = [(s.start, s.end, s.primary) for s in segments if s.kind == ON_CALL]
    assert on_call == [
        (utc("2026-01-10 00:00"), utc("2026-01-12 00:00"), "camille.martin"),
        (utc("2026-01-12 00:00"), utc("2026-01-12 08:00"), "emily.clarke"),
        (utc("2026-01-12 23:00"), utc("2026-01-13 00:00"), "emily.clarke"),
    ]
    # Paris and Berlin both close at 17:00 UTC: the tie goes to the region listed first.
    assert segments[2].owner == "velizy" and segments[2].kind == BORROWED


def test_run_plan_json_and_table() -> None:
    import json

    document = json.loads(run_plan(DEFAULT, date(2026, 1, 10), 3, as_json=True))
    segments = document["segments"]
    assert document["warnings"] == []
    assert segments == sorted(segments, key=lambda s: (s["queue"], s["start"]))
    first = segments[0]
    assert first == {
        "queue": "germany",
        "owner": "oncall",
        "kind": "on-call",
        "start": "2026-01-10T00:00:00Z",
        "end": "2026-01-12T00:00:00Z",
        "primary": "camille.martin",
        "secondary": "jonas.weber",
    }
    assert {"queue", "owner", "kind", "start", "end"} == set(segments[3])
    table = run_plan(DEFAULT, date(2026, 1, 10), 3, as_json=False)
    assert table.splitlines()[0].split() == [
        "QUEUE", "OWNER", "KIND", "START", "(UTC)", "END", "(UTC)", "HOURS", "ON", "CALL",
    ]  # fmt: skip
    assert "camille.martin / jonas.weber" in table
    assert "No coverage gaps" in table
    with pytest.raises(InvalidArgument, match="at least 1"):
        run_plan(DEFAULT, date(2026, 1, 10), 0, as_json=False)
    gap = Segment("velizy", ONCALL_OWNER, ON_CALL, utc("2026-01-10"), utc("2026-01-11"))
    text = render_plan(PlanResult((gap,), ("w",)), as_json=False)
    assert "NOBODY" in text and "warning: w" in text


def test_planner_instances_are_shared_per_configuration() -> None:
    assert isinstance(DEFAULT, FederationConfig)
    first = owner_at(DEFAULT, "uk", utc("2026-01-08 10:00"))
    again = owner_at(load_config(), "uk", utc("2026-01-08 10:00"))
    assert first == again and first.kind == HOME
