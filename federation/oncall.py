"""The after-hours on-call rota: who takes the handoff when no region is open.

Rota weeks run Monday 00:00 to Monday 00:00 in the rota's time zone (UTC unless set), the
way duty rosters are drawn up. Undated weeks form a cycle that repeats from ``anchor``;
a dated week (``start``, a Monday) overrides the cycle for that one week, which is how a
swap or a holiday cover is written down without rewriting the cycle. With no cycle, weeks
not overridden have nobody on call, and the plan warns about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

WEEK = timedelta(days=7)


@dataclass(frozen=True)
class OncallWeek:
    primary: str
    secondary: str
    start: date | None = None


@dataclass(frozen=True)
class OncallRota:
    anchor: date
    weeks: tuple[OncallWeek, ...] = ()
    timezone: str = "UTC"

    @cached_property
    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def _cycle(self) -> tuple[OncallWeek, ...]:
        return tuple(w for w in self.weeks if w.start is None)

    @cached_property
    def _overrides(self) -> dict[date, OncallWeek]:
        return {w.start: w for w in self.weeks if w.start is not None}

    def week_monday(self, instant: datetime) -> date:
        """The local Monday that starts the rota week containing ``instant``."""
        utc = _utc(instant)
        local = utc.astimezone(self._zone)
        monday = local.date() - timedelta(days=local.weekday())
        # Right after a DST jump at midnight the local Monday 00:00 can map past the
        # instant; the instant then still belongs to the previous week.
        if self.week_start(monday) > utc:
            monday -= WEEK
        return monday

    def week_start(self, monday: date) -> datetime:
        """The UTC instant a rota week begins (fold=0 for a nonexistent midnight)."""
        return datetime.combine(monday, time(0), tzinfo=self._zone).astimezone(UTC)

    def oncall_for(self, instant: datetime) -> tuple[str, str] | None:
        """(primary, secondary) on call at ``instant``, or None when nobody is."""
        monday = self.week_monday(instant)
        week = self._overrides.get(monday)
        if week is None and self._cycle:
            index = ((monday - self.anchor).days // 7) % len(self._cycle)
            week = self._cycle[index]
        return None if week is None else (week.primary, week.secondary)

    def changes_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Week boundaries strictly inside (start, end): the only instants the pair can
        change at."""
        monday = self.week_monday(start) + WEEK
        changes = []
        while (instant := self.week_start(monday)) < end:
            if instant > start:
                changes.append(instant)
            monday += WEEK
        return changes


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError(f"instant {instant.isoformat()} must be timezone-aware")
    return instant.astimezone(UTC)
