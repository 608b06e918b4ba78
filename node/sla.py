"""SLA clocks (pure): when a case is due, how much counted time is left, is it at risk.

A target is an amount of *counted* time: time on the contract's coverage calendar
(business hours of the customer's home region, or round the clock) during which the case
was the provider's to work on. Two things stop the clock:

- the ticket waits on the customer (``pending_customer``);
- the ticket was resolved, then reopened: the time it spent resolved (or closed) is not
  held against the provider, and the clock resumes from where it stopped.

A pause only removes time that would have been counted: a pause that covers a night of
a business-hours contract changes nothing, and a pause that covers two open hours moves
the due time two open hours later. Handoffs are not an input, so ownership moving from
region to region never touches a clock.

Due times are the earliest instant at which the counted time reaches the target; on a
business calendar that is inside open hours or exactly at a closing time, never in the
middle of a night. Nothing here reads the clock: ``now`` is always an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from federation.calendars import BusinessCalendar
from federation.config import FederationConfig
from node.contracts import AT_RISK_FRACTION, Contracts, TierPolicy
from node.errors import InvalidArgument
from node.tickets import State, StateChangeView, TicketView, iso, parse_iso

__all__ = [
    "AT_RISK",
    "AT_RISK_FRACTION",
    "BREACHED",
    "OK",
    "BreachState",
    "SlaDue",
    "SlaStatus",
    "add_counted_time",
    "breach_state",
    "counted_time",
    "due_resolver",
    "paused_intervals",
    "pending_intervals",
    "pending_since",
    "sla_due",
    "ticket_due",
    "ticket_sla_status",
    "time_left",
]

BreachState = Literal["ok", "at_risk", "breached"]
OK: BreachState = "ok"
AT_RISK: BreachState = "at_risk"
BREACHED: BreachState = "breached"

Interval = tuple[datetime, datetime]
_STOPPED = frozenset({State.RESOLVED, State.CLOSED})


@dataclass(frozen=True)
class SlaDue:
    response_due: datetime
    resolution_due: datetime

    def to_json(self) -> dict[str, str]:
        return {"response_due": iso(self.response_due), "resolution_due": iso(self.resolution_due)}


def _aware(instant: datetime, what: str) -> datetime:
    if instant.tzinfo is None:
        raise InvalidArgument(f"{what} {instant.isoformat()} needs a time zone")
    return instant.astimezone(UTC)


def _merged(pauses: Iterable[Interval], after: datetime) -> list[Interval]:
    """Pauses clipped to start no earlier than ``after``, sorted, overlaps merged."""
    clipped = []
    for i, (start, end) in enumerate(pauses):
        start, end = _aware(start, f"pause {i} start"), _aware(end, f"pause {i} end")
        if end < start:
            raise InvalidArgument(f"pause {i} ends ({iso(end)}) before it starts ({iso(start)})")
        start = max(start, after)
        if end > start:
            clipped.append((start, end))
    clipped.sort()
    merged: list[Interval] = []
    for start, end in clipped:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _open_time(calendar: BusinessCalendar, start: datetime, end: datetime) -> timedelta:
    # Summing the intervals as timedeltas keeps microsecond arithmetic exact.
    return sum((e - s for s, e in calendar.open_intervals(start, end)), timedelta())


def counted_time(
    calendar: BusinessCalendar,
    start: datetime,
    end: datetime,
    pauses: Iterable[Interval] = (),
) -> timedelta:
    """Open time of ``calendar`` in [start, end) outside the pauses (0 if end <= start)."""
    start, end = _aware(start, "start"), _aware(end, "end")
    total = timedelta()
    t = start
    for pause_start, pause_end in _merged(pauses, start):
        if pause_start >= end:
            break
        total += _open_time(calendar, t, pause_start)
        t = max(t, pause_end)
    return total + _open_time(calendar, t, end) if end > t else total


def add_counted_time(
    calendar: BusinessCalendar,
    start: datetime,
    amount: timedelta,
    pauses: Iterable[Interval] = (),
) -> datetime:
    """The earliest instant with ``amount`` of counted time since ``start``."""
    start = _aware(start, "start")
    if amount < timedelta():
        raise InvalidArgument(f"a target cannot be negative, not {amount}")
    if not amount:
        return start
    remaining = amount
    t = start
    for pause_start, pause_end in _merged(pauses, start):
        if pause_start > t:
            available = _open_time(calendar, t, pause_start)
            if remaining <= available:
                return calendar.add_business_time(t, remaining.total_seconds())
            remaining -= available
        t = max(t, pause_end)
    # remaining > 0 here, so the answer is inside open hours or at a closing instant.
    return calendar.add_business_time(t, remaining.total_seconds())


def sla_due(
    policy: TierPolicy,
    priority: int,
    calendar: BusinessCalendar,
    opened_at: datetime,
    pending: Sequence[Interval] = (),
) -> SlaDue:
    """Response and resolution due times of a case opened at ``opened_at``.

    ``calendar`` is ``policy.calendar_for(priority, home_region)``; ``pending`` are the
    finished pauses (see ``paused_intervals``). An ongoing pause has no end yet, so it
    cannot move a due time: ``time_left`` freezes instead.
    """
    response, resolution = policy.targets(priority)
    return SlaDue(
        response_due=add_counted_time(calendar, opened_at, response, pending),
        resolution_due=add_counted_time(calendar, opened_at, resolution, pending),
    )


def time_left(
    due: datetime,
    now: datetime,
    calendar: BusinessCalendar,
    pending_open_since: datetime | None = None,
    *,
    pauses: Sequence[Interval] = (),
) -> timedelta:
    """Counted time between now and ``due``; negative once overdue.

    While a pause is running (``pending_open_since``), the clock stands still: the time
    left is what it was when the pause began. ``pauses`` matter only when ``now`` is in
    the past (the time left when a clock stopped): finished pauses after it are not
    counted.
    """
    due, now = _aware(due, "due"), _aware(now, "now")
    if pending_open_since is not None:
        now = min(now, _aware(pending_open_since, "pending since"))
    if now <= due:
        return counted_time(calendar, now, due, pauses)
    return -counted_time(calendar, due, now, pauses)


def breach_state(
    due: datetime,
    target: timedelta,
    now: datetime,
    calendar: BusinessCalendar,
    *,
    done_at: datetime | None = None,
    pending_open_since: datetime | None = None,
    at_risk_fraction: float = AT_RISK_FRACTION,
) -> BreachState:
    """One clock's state. Done (answered, resolved): "breached" if done after ``due``,
    else "ok". Running: "breached" once ``now`` (or the start of a running pause) is past
    ``due``; "at_risk" when less than ``at_risk_fraction`` of ``target`` is left."""
    if not 0 <= at_risk_fraction <= 1:
        raise InvalidArgument(f"at-risk fraction {at_risk_fraction} must be within 0 and 1")
    due = _aware(due, "due")
    if done_at is not None:
        return BREACHED if _aware(done_at, "done at") > due else OK
    reference = _aware(now, "now")
    if pending_open_since is not None:
        reference = min(reference, _aware(pending_open_since, "pending since"))
    if reference > due:
        return BREACHED
    left = time_left(due, reference, calendar)
    return AT_RISK if left < target * at_risk_fraction else OK


# ----- from a ticket's history ------------------------------------------------------------


def _first(change: tuple[datetime, State]) -> datetime:
    return change[0]


def _segments(history: Sequence[StateChangeView]) -> list[tuple[State, datetime, datetime | None]]:
    """(state, entered, left) for each state the ticket went through; the last is open."""
    # Stable on equal times, so same-millisecond changes keep the history's order.
    changes = sorted(((parse_iso(h.at), h.to_state) for h in history if h.at), key=_first)
    out: list[tuple[State, datetime, datetime | None]] = []
    for i, (at, state) in enumerate(changes):
        left = changes[i + 1][0] if i + 1 < len(changes) else None
        out.append((state, at, left))
    return out


def pending_intervals(
    history: Sequence[StateChangeView], until: datetime | None = None
) -> list[Interval]:
    """The stretches the ticket spent in ``pending_customer``. One still running ends at
    ``until`` when given, and is left out otherwise (see ``pending_since``)."""
    out = []
    for state, entered, left in _segments(history):
        if state != State.PENDING_CUSTOMER:
            continue
        end = left if left is not None else until
        if end is not None and end > entered:
            out.append((entered, _aware(end, "until")))
    return out


def paused_intervals(
    history: Sequence[StateChangeView], until: datetime | None = None
) -> list[Interval]:
    """Every stretch during which the SLA clocks stood still: pending the customer, and
    resolved or closed before a reopen. The final resolution is not a pause: it is where
    the resolution clock ends."""
    segments = _segments(history)
    last_active = max(
        (i for i, (state, _, _) in enumerate(segments) if state not in _STOPPED), default=-1
    )
    out = pending_intervals(history, until)
    for i, (state, entered, left) in enumerate(segments):
        if state in _STOPPED and i < last_active and left is not None and left > entered:
            out.append((entered, left))
    return sorted(out)


def pending_since(history: Sequence[StateChangeView]) -> datetime | None:
    """When the running pause began, if the ticket is pending the customer now."""
    segments = _segments(history)
    if segments and segments[-1][0] == State.PENDING_CUSTOMER:
        return segments[-1][1]
    return None


def ticket_due(ticket: TicketView, policy: TierPolicy, calendar: BusinessCalendar) -> SlaDue:
    """Due times of a ticket, moved by every finished pause in its history."""
    opened = parse_iso(ticket.created_at)
    return sla_due(policy, ticket.priority, calendar, opened, paused_intervals(ticket.history))


@dataclass(frozen=True)
class SlaStatus:
    due: SlaDue
    response: BreachState
    resolution: BreachState
    response_left: timedelta
    resolution_left: timedelta

    def to_json(self) -> dict[str, object]:
        return {
            **self.due.to_json(),
            "response": self.response,
            "resolution": self.resolution,
            "response_left_seconds": self.response_left.total_seconds(),
            "resolution_left_seconds": self.resolution_left.total_seconds(),
        }


def ticket_sla_status(
    ticket: TicketView,
    policy: TierPolicy,
    calendar: BusinessCalendar,
    now: datetime,
    at_risk_fraction: float = AT_RISK_FRACTION,
) -> SlaStatus:
    """Both clocks of a ticket at ``now``. The response clock ends at the first answer,
    the resolution clock at the current resolution (a reopen clears it and the clock
    resumes)."""
    pauses = paused_intervals(ticket.history)
    due = sla_due(policy, ticket.priority, calendar, parse_iso(ticket.created_at), pauses)
    response_target, resolution_target = policy.targets(ticket.priority)
    since = pending_since(ticket.history) if ticket.state == State.PENDING_CUSTOMER else None
    responded = parse_iso(ticket.first_response_at) if ticket.first_response_at else None
    resolved = None
    if ticket.state in _STOPPED and ticket.resolved_at:
        resolved = parse_iso(ticket.resolved_at)

    def clock(due_at: datetime, target: timedelta, done: datetime | None) -> BreachState:
        return breach_state(
            due_at,
            target,
            now,
            calendar,
            done_at=done,
            pending_open_since=since,
            at_risk_fraction=at_risk_fraction,
        )

    def left(due_at: datetime, done: datetime | None) -> timedelta:
        return time_left(due_at, done or now, calendar, since, pauses=pauses)

    return SlaStatus(
        due=due,
        response=clock(due.response_due, response_target, responded),
        resolution=clock(due.resolution_due, resolution_target, resolved),
        response_left=left(due.response_due, responded),
        resolution_left=left(due.resolution_due, resolved),
    )


def due_resolver(
    contracts: Contracts, config: FederationConfig
) -> Callable[[TicketView], SlaDue | None]:
    """``ticket -> SlaDue`` from its tier and home region (None without a tier); the
    ``due_for`` callback of ``node.stats.compute_stats``."""

    def due_for(ticket: TicketView) -> SlaDue | None:
        if ticket.tier is None or not ticket.created_at:
            return None
        policy = contracts.tier(ticket.tier)
        calendar = policy.calendar_for(ticket.priority, config.region(ticket.home_region))
        return ticket_due(ticket, policy, calendar)

    return due_for
