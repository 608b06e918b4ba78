"""Region calendars: DST on both continents, one holiday per country, business arithmetic."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.calendars import Always24x7Calendar, RegionCalendar
from federation.config import load_config

CONFIG = load_config()
CALENDARS = {r.name: RegionCalendar(r) for r in CONFIG.regions}
US_SECOND = timedelta(microseconds=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def custom(name: str, **hours: tuple[tuple[time, time], ...]) -> RegionCalendar:
    """A default region with some weekdays' hours replaced (keys mon..sun)."""
    keys = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    region = CONFIG.region(name)
    week = tuple(hours.get(k, region.hours[i]) for i, k in enumerate(keys))
    return RegionCalendar(dataclasses.replace(region, hours=week))


# (region, UTC instant, open?) around the four 2026 clock changes, which all fall on
# Sundays: the Friday before and the Monday after open at different UTC hours.
DST_TABLE = [
    # US spring forward, Sunday 8 March: EST (UTC-5) before, EDT (UTC-4) after.
    ("us", "2026-03-06 13:59", False),
    ("us", "2026-03-06 14:00", True),
    ("us", "2026-03-06 22:59", True),
    ("us", "2026-03-06 23:00", False),
    ("us", "2026-03-09 12:59", False),
    ("us", "2026-03-09 13:00", True),
    ("us", "2026-03-09 21:59", True),
    ("us", "2026-03-09 22:00", False),
    # EU spring forward, Sunday 29 March: CET/GMT before, CEST/BST after.
    ("velizy", "2026-03-27 08:00", True),
    ("velizy", "2026-03-27 07:59", False),
    ("velizy", "2026-03-30 07:00", True),
    ("velizy", "2026-03-30 06:59", False),
    ("velizy", "2026-03-30 16:00", False),
    ("germany", "2026-03-30 15:59", True),
    ("uk", "2026-03-27 09:00", True),
    ("uk", "2026-03-30 08:00", True),
    ("uk", "2026-03-30 17:00", False),
    # While Europe has moved and the US has not yet (or the reverse), the overlap moves.
    ("us", "2026-03-27 13:00", True),
    # EU fall back, Sunday 25 October.
    ("velizy", "2026-10-23 07:00", True),
    ("velizy", "2026-10-26 07:00", False),
    ("velizy", "2026-10-26 08:00", True),
    ("velizy", "2026-10-26 16:59", True),
    ("velizy", "2026-10-26 17:00", False),
    ("uk", "2026-10-26 09:00", True),
    ("uk", "2026-10-26 08:59", False),
    # US fall back, Sunday 1 November.
    ("us", "2026-10-30 13:00", True),
    ("us", "2026-11-02 13:00", False),
    ("us", "2026-11-02 14:00", True),
    ("us", "2026-11-02 23:00", False),
    # Japan has no DST: 09:00 JST is always 00:00 UTC.
    ("japan", "2026-03-30 00:00", True),
    ("japan", "2026-10-26 08:59", True),
    ("japan", "2026-10-26 09:00", False),
    # Weekends.
    ("velizy", "2026-03-28 10:00", False),
    ("us", "2026-03-29 15:00", False),
    ("japan", "2026-03-28 01:00", False),
]


@pytest.mark.parametrize(("region", "instant", "expected"), DST_TABLE)
def test_opening_hours_follow_local_time_through_dst(
    region: str, instant: str, expected: bool
) -> None:
    assert CALENDARS[region].is_open(utc(instant)) is expected


HOLIDAYS = [
    ("velizy", "2026-07-14", "2026-07-15"),  # Fête nationale, a Tuesday
    ("germany", "2025-10-03", "2025-10-06"),  # Tag der Deutschen Einheit, a Friday
    ("uk", "2026-12-25", "2026-12-29"),  # Christmas, then Boxing Day observed on the 28th
    ("uk", "2026-12-28", "2026-12-29"),
    ("us", "2026-07-03", "2026-07-06"),  # Independence Day falls on a Saturday: observed Fri
    ("japan", "2026-11-03", "2026-11-04"),  # Culture Day, a Tuesday
]


def local_day(region: str, day: str) -> tuple[datetime, datetime]:
    """The UTC bounds of one local date of a region."""
    zone = ZoneInfo(CONFIG.region(region).timezone)
    start = datetime.combine(date.fromisoformat(day), time(0), tzinfo=zone)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


@pytest.mark.parametrize(("region", "holiday", "working_day"), HOLIDAYS)
def test_public_holidays_close_the_whole_local_day(
    region: str, holiday: str, working_day: str
) -> None:
    calendar = CALENDARS[region]
    assert calendar.open_intervals(*local_day(region, holiday)) == []
    assert calendar.is_closed_day(date.fromisoformat(holiday))
    assert calendar.business_seconds_between(*local_day(region, working_day)) == 9 * 3600


def test_subdivision_and_extra_closed_dates() -> None:
    bavaria = RegionCalendar(dataclasses.replace(CONFIG.region("germany"), subdivision="BY"))
    epiphany = utc("2026-01-06 10:00")  # Heilige Drei Könige: Bavaria only
    assert not bavaria.is_open(epiphany)
    assert CALENDARS["germany"].is_open(epiphany)
    closed = dataclasses.replace(CONFIG.region("velizy"), extra_closed_dates=(date(2026, 12, 24),))
    assert not RegionCalendar(closed).is_open(utc("2026-12-24 10:00"))
    assert CALENDARS["velizy"].is_open(utc("2026-12-24 10:00"))


def test_local_times_that_dst_skips_or_repeats_do_not_crash() -> None:
    night = (time(1), time(4))
    paris = custom("velizy", sun=(night,))
    # Spring: 01:00 CET = 00:00 UTC, 04:00 CEST = 02:00 UTC; the day had two such hours.
    spring = paris.open_intervals(utc("2026-03-28 12:00"), utc("2026-03-30 00:00"))
    assert spring == [(utc("2026-03-29 00:00"), utc("2026-03-29 02:00"))]
    # Autumn: 01:00 CEST = 23:00 UTC the day before, 04:00 CET = 03:00 UTC: four hours.
    autumn = paris.open_intervals(utc("2026-10-24 12:00"), utc("2026-10-26 00:00"))
    assert autumn == [(utc("2026-10-24 23:00"), utc("2026-10-25 03:00"))]
    # 02:30 does not exist on 29 March; an interval inside the gap is squeezed to nothing.
    gap = custom("velizy", sun=((time(2, 30), time(3)),))
    assert gap.business_seconds_between(utc("2026-03-29 00:00"), utc("2026-03-30 00:00")) == 0
    # 02:30 exists twice on 25 October; fold=0 takes the first (CEST) one.
    twice = custom("velizy", sun=((time(2, 30), time(5)),))
    first = twice.open_intervals(utc("2026-10-25 00:00"), utc("2026-10-26 00:00"))
    assert first == [(utc("2026-10-25 00:30"), utc("2026-10-25 04:00"))]
    new_york = custom("us", sun=((time(2), time(3)), (time(3), time(4))))
    spring_us = new_york.open_intervals(utc("2026-03-08 00:00"), utc("2026-03-09 00:00"))
    assert spring_us == [(utc("2026-03-08 07:00"), utc("2026-03-08 08:00"))]


def test_open_intervals_merge_across_midnight_and_clip() -> None:
    around = custom("uk", fri=((time(20), time(0)),), sat=((time(0), time(2)),))
    intervals = around.open_intervals(utc("2026-01-09 21:00"), utc("2026-01-10 12:00"))
    assert intervals == [(utc("2026-01-09 21:00"), utc("2026-01-10 02:00"))]
    assert around.next_change(utc("2026-01-09 23:59")) == utc("2026-01-10 02:00")
    assert around.open_until(utc("2026-01-09 23:59")) == utc("2026-01-10 02:00")
    assert around.open_intervals(utc("2026-01-10"), utc("2026-01-10")) == []


def test_next_change_is_strictly_after_and_bounded() -> None:
    paris = CALENDARS["velizy"]
    assert paris.next_change(utc("2026-01-09 12:00")) == utc("2026-01-09 17:00")
    assert paris.next_change(utc("2026-01-09 17:00")) == utc("2026-01-12 08:00")
    assert paris.next_change(utc("2026-01-09 16:59")) == utc("2026-01-09 17:00")
    assert paris.next_change(utc("2026-01-12 08:00")) == utc("2026-01-12 17:00")
    never = RegionCalendar(dataclasses.replace(CONFIG.region("velizy"), hours=((),) * 7))
    assert never.next_change(utc("2026-01-09 12:00")) is None
    assert never.open_until(utc("2026-01-09 12:00")) is None
    with pytest.raises(ValueError, match="closed for 400 days"):
        never.add_business_time(utc("2026-01-09 12:00"), 1)
    full_day = ((time(0), time(0)),)
    always = RegionCalendar(
        dataclasses.replace(CONFIG.region("velizy"), hours=(full_day,) * 7, country="VA")
    )
    # Vatican City holidays still close some days, but never 400 days in a row.
    assert always.next_change(utc("2026-01-07 12:00")) is not None


def test_business_seconds_over_a_week_with_a_holiday() -> None:
    paris = CALENDARS["velizy"]
    assert paris.business_seconds_between(utc("2026-01-12"), utc("2026-01-19")) == 5 * 9 * 3600
    # Week of 14 July 2026 loses the Tuesday.
    assert paris.business_seconds_between(utc("2026-07-13"), utc("2026-07-20")) == 4 * 9 * 3600
    assert paris.business_seconds_between(utc("2026-07-20"), utc("2026-07-13")) == 0


ADD_TABLE = [
    # Friday 27 March 17:00 CET has one hour left; Monday opens 09:00 CEST = 07:00 UTC.
    ("velizy", "2026-03-27 16:00", 2 * 3600, "2026-03-30 08:00"),
    # Monday before 14 July: the holiday is skipped.
    ("velizy", "2026-07-13 15:00", 2 * 3600, "2026-07-15 08:00"),
    # Friday 3 July is the US observed holiday: Thursday evening to Monday morning.
    ("us", "2026-07-02 21:00", 2 * 3600, "2026-07-06 14:00"),
    # Exactly the time left lands on the closing instant, not the next opening.
    ("uk", "2026-01-09 17:00", 3600, "2026-01-09 18:00"),
    # Starting while closed counts from the next opening.
    ("japan", "2026-01-10 03:00", 60, "2026-01-13 00:01"),  # Monday 12 Jan is a holiday
    # Zero business time is the start itself, even at night.
    ("japan", "2026-01-10 03:00", 0, "2026-01-10 03:00"),
]


@pytest.mark.parametrize(("region", "start", "seconds", "expected"), ADD_TABLE)
def test_add_business_time(region: str, start: str, seconds: float, expected: str) -> None:
    assert CALENDARS[region].add_business_time(utc(start), seconds) == utc(expected)


def test_add_business_time_over_months_is_fast_and_exact() -> None:
    us = CALENDARS["us"]
    start = utc("2026-01-01")
    end = us.add_business_time(start, 200 * 9 * 3600)
    assert us.business_seconds_between(start, end) == 200 * 9 * 3600
    assert us.is_open(end - US_SECOND)


def test_bad_arguments_are_refused() -> None:
    paris = CALENDARS["velizy"]
    with pytest.raises(ValueError, match="timezone-aware"):
        paris.is_open(datetime(2026, 1, 5, 10))
    with pytest.raises(ValueError, match="negative"):
        paris.add_business_time(utc("2026-01-05"), -1)
    with pytest.raises(ValueError, match="negative"):
        Always24x7Calendar().add_business_time(utc("2026-01-05"), -1)


def test_always_24x7_calendar() -> None:
    always = Always24x7Calendar()
    start = utc("2026-12-25 03:00")
    assert always.is_open(start)
    assert always.open_intervals(start, start + timedelta(hours=2)) == [
        (start, start + timedelta(hours=2))
    ]
    assert always.next_change(start) is None
    assert always.open_until(start) == start + timedelta(days=400)
    assert always.business_seconds_between(start, start + timedelta(days=1)) == 86400
    assert always.business_seconds_between(start, start - timedelta(days=1)) == 0
    assert always.add_business_time(start, 90) == start + timedelta(seconds=90)


YEAR = utc("2026-01-01")
instants = st.integers(0, 366 * 86400 * 10).map(lambda tenths: YEAR + tenths * timedelta(0, 0.1))
regions = st.sampled_from(sorted(CALENDARS))


@settings(max_examples=300, deadline=None)
@given(regions, instants, st.integers(0, 60 * 86400))
def test_add_then_measure_gives_back_the_business_time(
    region: str, start: datetime, seconds: int
) -> None:
    calendar = CALENDARS[region]
    end = calendar.add_business_time(start, seconds)
    assert end >= start
    assert calendar.business_seconds_between(start, end) == pytest.approx(seconds, abs=1e-6)
    if seconds > 0:
        # Inside open hours or on a closing instant, never in the middle of the night,
        # and the earliest such instant.
        assert calendar.is_open(end) or calendar.is_open(end - US_SECOND)
        assert calendar.business_seconds_between(start, end - US_SECOND) < seconds


@settings(max_examples=300, deadline=None)
@given(regions, instants)
def test_is_open_next_change_and_open_intervals_agree(region: str, instant: datetime) -> None:
    calendar = CALENDARS[region]
    change = calendar.next_change(instant)
    assert change is not None and change > instant
    state = calendar.is_open(instant)
    assert calendar.is_open(change - US_SECOND) is state
    assert calendar.is_open(change) is not state
    intervals = calendar.open_intervals(instant, change)
    assert intervals == ([(instant, change)] if state else [])
    assert calendar.open_until(instant) == (change if state else None)
