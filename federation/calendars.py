"""Business-hours calendars: when a region is open, as UTC instants.

Opening hours are local wall-clock times, so the intervals of each local date are built
from the region's weekday hours and converted with zoneinfo. A local time that does not
exist or exists twice (02:30 on a DST night) takes fold=0, and an interval that the
clock change squeezes to nothing is dropped, so no local configuration can crash the
conversion. Public holidays (the ``holidays`` package, national unless a subdivision is
set) and extra closed dates close the whole local date.

Everything above that works on UTC intervals, stepping interval by interval, so SLA
arithmetic over months costs a few hundred steps rather than one per minute. Searches
are bounded: a region closed for ``SEARCH_DAYS`` consecutive days is treated as never
opening again, and an open stretch longer than that is reported as ending at the bound.

The calendars are pure: they read no clock; the instant is always an argument.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

import holidays

from federation.config import RegionConfig

SEARCH_DAYS = 400
_HORIZON = timedelta(days=SEARCH_DAYS)
_DAY = timedelta(days=1)

Interval = tuple[datetime, datetime]


class BusinessCalendar(Protocol):
    """What SLA clocks and the plan need from a coverage calendar."""

    def is_open(self, instant: datetime) -> bool: ...

    def open_intervals(self, start: datetime, end: datetime) -> list[Interval]: ...

    def next_change(self, instant: datetime) -> datetime | None: ...

    def open_until(self, instant: datetime) -> datetime | None: ...

    def business_seconds_between(self, start: datetime, end: datetime) -> float: ...

    def add_business_time(self, start: datetime, seconds: float) -> datetime: ...


def utc(instant: datetime) -> datetime:
    """The instant in UTC; naive datetimes are refused since their zone is a guess."""
    if instant.tzinfo is None:
        raise ValueError(f"instant {instant.isoformat()} must be timezone-aware")
    return instant.astimezone(UTC)


@lru_cache(maxsize=256)
def public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    """One year's public holidays; building them costs milliseconds, so keep them."""
    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=year))


class RegionCalendar:
    """The opening hours of one region, with DST, public holidays and closures."""

    def __init__(self, region: RegionConfig) -> None:
        self.region = region
        self._zone = ZoneInfo(region.timezone)
        self._extra_closed = frozenset(region.extra_closed_dates)
        self._days: dict[date, tuple[Interval, ...]] = {}

    def is_closed_day(self, day: date) -> bool:
        """A public holiday or an extra closed date, whatever the weekday hours say."""
        if day in self._extra_closed:
            return True
        return day in public_holidays(self.region.country, self.region.subdivision, day.year)

    def day_intervals(self, day: date) -> tuple[Interval, ...]:
        """Open intervals of one local date, in UTC, in order."""
        cached = self._days.get(day)
        if cached is not None:
            return cached
        spans: list[Interval] = []
        if not self.is_closed_day(day):
            for start, end in self.region.hours[day.weekday()]:
                end_day = day + _DAY if end == time(0) else day
                utc_start = datetime.combine(day, start, tzinfo=self._zone).astimezone(UTC)
                utc_end = datetime.combine(end_day, end, tzinfo=self._zone).astimezone(UTC)
                if utc_end > utc_start:
                    spans.append((utc_start, utc_end))
        result = tuple(spans)
        self._days[day] = result
        return result

    def _spans_from(self, instant: datetime) -> Iterator[Interval]:
        """Per-day intervals ending after ``instant``, in order (touching ones unmerged);
        stops after SEARCH_DAYS consecutive closed days."""
        day = instant.astimezone(self._zone).date() - _DAY
        idle = 0
        while idle <= SEARCH_DAYS:
            spans = self.day_intervals(day)
            idle = 0 if spans else idle + 1
            for span in spans:
                if span[1] > instant:
                    yield span
            day += _DAY

    def _merged_from(self, instant: datetime) -> Iterator[Interval]:
        """Merged intervals ending after ``instant``; a stretch still open at
        ``instant + SEARCH_DAYS`` is cut there, so a 24x7 region cannot loop forever."""
        bound = instant + _HORIZON
        pending: Interval | None = None
        for start, end in self._spans_from(instant):
            if pending is not None and start > pending[1]:
                yield pending
                pending = None
            if pending is None:
                pending = (start, end)
            else:
                pending = (pending[0], max(pending[1], end))
            if pending[1] >= bound:
                yield (pending[0], bound)
                return
        if pending is not None:
            yield pending

    def is_open(self, instant: datetime) -> bool:
        instant = utc(instant)
        local_day = instant.astimezone(self._zone).date()
        for day in (local_day - _DAY, local_day, local_day + _DAY):
            for start, end in self.day_intervals(day):
                if start <= instant < end:
                    return True
        return False

    def open_intervals(self, start: datetime, end: datetime) -> list[Interval]:
        """Merged open intervals clipped to [start, end)."""
        start, end = utc(start), utc(end)
        result: list[Interval] = []
        if end <= start:
            return result
        for span_start, span_end in self._spans_from(start):
            if span_start >= end:
                break
            clipped = (max(span_start, start), min(span_end, end))
            if result and clipped[0] <= result[-1][1]:
                result[-1] = (result[-1][0], max(result[-1][1], clipped[1]))
            else:
                result.append(clipped)
        return result

    def next_change(self, instant: datetime) -> datetime | None:
        """The next opening or closing strictly after ``instant``; None past the bound."""
        instant = utc(instant)
        for start, end in self._merged_from(instant):
            if start > instant:
                return start
            return None if end >= instant + _HORIZON else end
        return None

    def open_until(self, instant: datetime) -> datetime | None:
        """When the open stretch containing ``instant`` closes (at most SEARCH_DAYS
        ahead); None if the region is closed at ``instant``."""
        instant = utc(instant)
        for start, end in self._merged_from(instant):
            return end if start <= instant else None
        return None

    def business_seconds_between(self, start: datetime, end: datetime) -> float:
        return sum((e - s).total_seconds() for s, e in self.open_intervals(start, end))

    def add_business_time(self, start: datetime, seconds: float) -> datetime:
        """The earliest t >= start with exactly ``seconds`` of open time in [start, t].

        For seconds > 0 the answer lies inside open hours or on a closing instant, never
        in the middle of a night; for 0 it is ``start`` itself.
        """
        start = utc(start)
        if seconds < 0:
            raise ValueError(f"business time to add must not be negative, not {seconds}")
        remaining = timedelta(seconds=seconds)
        if not remaining:
            return start
        for span_start, span_end in self._spans_from(start):
            begin = max(span_start, start)
            available = span_end - begin
            if remaining <= available:
                return begin + remaining
            remaining -= available
        raise ValueError(
            f"region {self.region.name} is closed for {SEARCH_DAYS} days in a row after "
            f"{start.isoformat()}; cannot add {seconds} s of business time"
        )


class Always24x7Calendar:
    """Round-the-clock coverage (24x7 contracts): open at every instant."""

    def is_open(self, instant: datetime) -> bool:
        utc(instant)
        return True

    def open_intervals(self, start: datetime, end: datetime) -> list[Interval]:
        start, end = utc(start), utc(end)
        return [(start, end)] if end > start else []

    def next_change(self, instant: datetime) -> datetime | None:
        utc(instant)
        return None

    def open_until(self, instant: datetime) -> datetime | None:
        return utc(instant) + _HORIZON

    def business_seconds_between(self, start: datetime, end: datetime) -> float:
        return max(0.0, (utc(end) - utc(start)).total_seconds())

    def add_business_time(self, start: datetime, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError(f"business time to add must not be negative, not {seconds}")
        return utc(start) + timedelta(seconds=seconds)
