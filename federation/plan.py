"""The follow-the-sun plan: who owns each queue at each instant, and why.

Rules, in order, re-applied at every instant any calendar opens or closes:

1. ``home``: the queue's home region owns it whenever the home is open.
2. ``borrowed``: the home is closed; an open region allowed to borrow takes the queue,
   choosing the one with the most time left in its current open stretch (ties go to the
   region listed first). The borrower keeps the queue until it closes itself or the home
   reopens, even when another region would now have more time left: every handoff costs
   a note and an acknowledgement, so none is made without need.
3. ``on-call``: no allowed region is open; the on-call rota owns the queue (owner string
   ``"oncall"``, with the week's primary and secondary engineers).

Rule 2 has memory (who borrowed first), so an instant's owner depends on the past. To
keep that memory bounded and every answer a function of the instant alone, the choice
is made afresh at each reset instant, Mondays 00:00 UTC. In the default federation no
region is open then, so the reset changes nothing; only a federation where some region
is open around the clock across Monday 00:00 UTC can see a handoff there. Every function
here simulates from the last reset at or before its window, which is why ``owner_at``,
``next_handoff`` and ``plan`` always agree.

Pure: no clock, no I/O. Every node computes the same plan from the same configuration.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import pairwise

from federation.calendars import SEARCH_DAYS, RegionCalendar, utc
from federation.config import FederationConfig, QueueConfig

ONCALL_OWNER = "oncall"
HOME, BORROWED, ON_CALL = "home", "borrowed", "on-call"

RESET_EPOCH = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday
RESET_PERIOD = timedelta(days=7)
_WINDOW = timedelta(days=8)
_LIMIT = timedelta(days=SEARCH_DAYS)
_KNOWN_MAX = 20_000


@dataclass(frozen=True)
class Segment:
    queue: str
    owner: str  # a region name, or "oncall"
    kind: str  # "home" | "borrowed" | "on-call"
    start: datetime
    end: datetime
    primary: str | None = None
    secondary: str | None = None

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


@dataclass(frozen=True)
class PlanResult:
    segments: tuple[Segment, ...]
    warnings: tuple[str, ...]

    def for_queue(self, queue: str) -> list[Segment]:
        return [s for s in self.segments if s.queue == queue]


def last_reset(instant: datetime) -> datetime:
    periods = (instant - RESET_EPOCH) // RESET_PERIOD
    return RESET_EPOCH + periods * RESET_PERIOD


def format_instant(instant: datetime) -> str:
    """ISO 8601 UTC with a Z, to the minute when that loses nothing."""
    instant = utc(instant)
    if instant.second or instant.microsecond:
        return instant.isoformat().replace("+00:00", "Z")
    return instant.strftime("%Y-%m-%dT%H:%MZ")


class Planner:
    """The plan of one configuration; holds the region calendars and their caches."""

    def __init__(self, config: FederationConfig) -> None:
        self.config = config
        self.calendars = {r.name: RegionCalendar(r) for r in config.regions}
        # Whole segments already computed, per queue, sorted by start. Nodes ask
        # owner_at() for every queue on every tick; one walk answers days of ticks.
        self._known: dict[str, list[Segment]] = {q.name: [] for q in config.queues}
        self._lock = threading.Lock()

    def plan(self, start: datetime, end: datetime) -> PlanResult:
        start, end = utc(start), utc(end)
        if end < start:
            raise ValueError(f"plan end {end.isoformat()} is before its start")
        walked = self._walk(list(self.config.queues), start, end)
        segments = tuple(s for q in self.config.queues for s in walked[q.name])
        warnings = tuple(
            f"{format_instant(s.start)}–{format_instant(s.end)}: queue {s.queue} has no "
            "open region and no on-call engineer"
            for s in segments
            if s.kind == ON_CALL and s.primary is None
        )
        return PlanResult(segments=segments, warnings=warnings)

    def owner_at(self, queue: str, instant: datetime) -> Segment:
        """The whole plan segment containing ``instant`` (searched up to SEARCH_DAYS
        either way; a longer segment is reported cut at that bound)."""
        q = self.config.queue(queue)
        instant = utc(instant)
        known = self._lookup(q.name, instant)
        if known is not None:
            return known
        low, high = instant - _WINDOW, instant + _WINDOW
        while True:
            segments = self._walk([q], low, high)[q.name]
            index = bisect.bisect_right([s.start for s in segments], instant) - 1
            segment = segments[index]
            if segment.start == low and instant - low < _LIMIT:
                low = max(low - 2 * (instant - low), instant - _LIMIT)
            elif segment.end == high and high - instant < _LIMIT:
                high = min(high + 2 * (high - instant), instant + _LIMIT)
            else:
                # Only segments not cut by the window are known to be whole.
                self._remember(q.name, [s for s in segments if low < s.start and s.end < high])
                return segment

    def _lookup(self, queue: str, instant: datetime) -> Segment | None:
        with self._lock:
            known = self._known[queue]
            index = bisect.bisect_right(known, instant, key=lambda s: s.start) - 1
            if index >= 0 and known[index].contains(instant):
                return known[index]
        return None

    def _remember(self, queue: str, segments: list[Segment]) -> None:
        with self._lock:
            by_start = {s.start: s for s in self._known[queue]}
            if len(by_start) > _KNOWN_MAX:
                by_start.clear()  # a crude bound; a year is about a thousand segments
            by_start.update((s.start, s) for s in segments)
            self._known[queue] = sorted(by_start.values(), key=lambda s: s.start)

    def next_handoff(self, queue: str, instant: datetime) -> Segment | None:
        """The next segment whose owner differs from the current one's, or None within
        SEARCH_DAYS. A rota change inside an on-call stretch is not a handoff between
        owners; ``oncall_for`` tells who is on call."""
        current = self.owner_at(queue, instant)
        segment = current
        while segment.end - current.end < _LIMIT:
            segment = self.owner_at(queue, segment.end)
            if segment.owner != current.owner:
                return segment
        return None

    def candidates_at(self, queue: str, instant: datetime) -> list[str]:
        """Regions in failover order: the planned owner, then the other open regions
        allowed to borrow by time left, then the home (which holds the queue's key for
        the on-call engineer when no region is open)."""
        q = self.config.queue(queue)
        instant = utc(instant)
        owner = self.owner_at(queue, instant).owner
        order = [owner] if owner != ONCALL_OWNER else []
        left: list[tuple[datetime, str]] = []
        for region in self.config.regions:
            until = self.calendars[region.name].open_until(instant)
            if until is not None and region.name not in order and q.may_borrow(region.name):
                left.append((until, region.name))
        # sorted() is stable: equal time left keeps configuration order.
        order += [name for _, name in sorted(left, key=lambda item: item[0], reverse=True)]
        if q.home not in order:
            order.append(q.home)
        return order

    def _walk(
        self, queues: list[QueueConfig], start: datetime, end: datetime
    ) -> dict[str, list[Segment]]:
        """Simulate the rules from the last reset before ``start``; segments cover
        [start, end) exactly, with equal neighbours merged."""
        origin = last_reset(start)
        points = {origin, start, end}
        spans = {n: c.open_intervals(origin, end) for n, c in self.calendars.items()}
        for intervals in spans.values():
            for opens, closes in intervals:
                points.update((opens, closes))
        points.update(self.config.oncall.changes_between(origin, end))
        reset = origin + RESET_PERIOD
        while reset < end:
            points.add(reset)
            reset += RESET_PERIOD
        ordered = sorted(p for p in points if origin <= p <= end)
        state: dict[str, tuple[str, str]] = {}
        out: dict[str, list[Segment]] = {q.name: [] for q in queues}
        cursor = dict.fromkeys(spans, 0)
        for low, high in pairwise(ordered):
            # Sweep each region's intervals alongside the periods instead of asking
            # is_open() at every boundary.
            open_now = []
            for name, intervals in spans.items():
                i = cursor[name]
                while i < len(intervals) and intervals[i][1] <= low:
                    i += 1
                cursor[name] = i
                if i < len(intervals) and intervals[i][0] <= low:
                    open_now.append(name)
            is_reset = low == last_reset(low)
            for q in queues:
                owner, kind = self._decide(q, low, open_now, state.get(q.name), is_reset)
                state[q.name] = (owner, kind)
                if high > start:
                    _append(out[q.name], self._segment(q, owner, kind, max(low, start), high))
        return out

    def _decide(
        self,
        q: QueueConfig,
        instant: datetime,
        open_now: list[str],
        previous: tuple[str, str] | None,
        is_reset: bool,
    ) -> tuple[str, str]:
        if q.home in open_now:
            return q.home, HOME
        if previous is not None and not is_reset:
            owner, kind = previous
            if kind == BORROWED and owner in open_now:
                return previous
        allowed = [name for name in open_now if q.may_borrow(name)]
        if not allowed:
            return ONCALL_OWNER, ON_CALL
        # max() keeps the first of equals, i.e. configuration order breaks ties.
        best = max(allowed, key=lambda name: self._open_until(name, instant))
        return best, BORROWED

    def _open_until(self, region: str, instant: datetime) -> datetime:
        until = self.calendars[region].open_until(instant)
        return until if until is not None else instant

    def _segment(
        self, q: QueueConfig, owner: str, kind: str, start: datetime, end: datetime
    ) -> Segment:
        if kind != ON_CALL:
            return Segment(q.name, owner, kind, start, end)
        pair = self.config.oncall.oncall_for(start)
        primary, secondary = pair if pair is not None else (None, None)
        return Segment(q.name, owner, kind, start, end, primary, secondary)


def _append(segments: list[Segment], segment: Segment) -> None:
    if segments:
        last = segments[-1]
        key = (last.owner, last.kind, last.primary, last.secondary)
        if key == (segment.owner, segment.kind, segment.primary, segment.secondary):
            segments[-1] = dataclasses.replace(last, end=segment.end)
            return
    segments.append(segment)


@lru_cache(maxsize=16)
def planner_for(config: FederationConfig) -> Planner:
    """One planner per configuration, so repeated queries reuse the calendar caches."""
    return Planner(config)


def plan(config: FederationConfig, start: datetime, end: datetime) -> PlanResult:
    return planner_for(config).plan(start, end)


def owner_at(config: FederationConfig, queue: str, instant: datetime) -> Segment:
    return planner_for(config).owner_at(queue, instant)


def next_handoff(config: FederationConfig, queue: str, instant: datetime) -> Segment | None:
    return planner_for(config).next_handoff(queue, instant)


def candidates_at(config: FederationConfig, queue: str, instant: datetime) -> list[str]:
    return planner_for(config).candidates_at(queue, instant)
