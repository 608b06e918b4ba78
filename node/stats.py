"""Support-centre statistics (pure): the figures the founding documents ask for.

Every figure is over one *cohort*: the tickets created in ``[start, end)`` whose home
region is ``region`` (the customer's region, whose queue they belong to — not the
region that happened to write them). A ticket resolved after ``end`` still counts for
the period it was opened in, so a period's figures settle as its tickets close.

Durations are wall-clock time (what the customer lived through), not contract time;
SLA compliance is where the contract calendar comes in, through ``due_for``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from node.errors import InvalidArgument
from node.sla import SlaDue
from node.tickets import Kind, Role, State, TicketView, iso, parse_iso

__all__ = [
    "CauseShare",
    "DueFor",
    "Ratio",
    "Stats",
    "compute_stats",
    "first_resolution_at",
    "is_first_contact_resolution",
    "machine_first_share",
    "pareto_causes",
    "stored_due",
]

DueFor = Callable[[TicketView], SlaDue | None]
PARETO_SHARE = 0.8  # "20 % des dysfonctionnements engendrent 80 % des appels" (seeds/003)
_DONE = frozenset({State.RESOLVED, State.CLOSED})
_WORK = frozenset({State.IN_PROGRESS, State.PENDING_CUSTOMER, State.RESOLVED})


def stored_due(ticket: TicketView) -> SlaDue | None:
    """The due times written on the ticket (None when it has none, e.g. no tier)."""
    if not ticket.response_due or not ticket.resolution_due:
        return None
    return SlaDue(parse_iso(ticket.response_due), parse_iso(ticket.resolution_due))


@dataclass(frozen=True)
class Ratio:
    count: int
    total: int

    @property
    def rate(self) -> float | None:
        return self.count / self.total if self.total else None

    def to_json(self) -> dict[str, Any]:
        rate = self.rate
        return {
            "count": self.count,
            "total": self.total,
            "rate": round(rate, 4) if rate is not None else None,
        }


@dataclass(frozen=True)
class CauseShare:
    cause: str
    count: int
    percent: float
    cumulative_percent: float


@dataclass(frozen=True)
class Stats:
    region: str | None
    start: datetime | None
    end: datetime | None
    opened: int
    resolved: int
    open_now: int
    responded: int
    mean_time_to_respond: timedelta | None
    mean_time_to_resolve: timedelta | None
    response_sla: Ratio
    resolution_sla: Ratio
    first_contact_resolution: Ratio
    definitive_resolution: Ratio
    satisfaction_mean: float | None
    satisfaction_count: int
    causes_total: int
    pareto: tuple[CauseShare, ...]
    # Incidents a machine opened before any customer contact, over all incidents.
    machine_first: Ratio = Ratio(0, 0)

    def to_json(self) -> dict[str, Any]:
        def seconds(value: timedelta | None) -> float | None:
            return round(value.total_seconds(), 3) if value is not None else None

        return {
            "region": self.region,
            "start": iso(self.start) if self.start else None,
            "end": iso(self.end) if self.end else None,
            "opened": self.opened,
            "resolved": self.resolved,
            "open_now": self.open_now,
            "responded": self.responded,
            "mean_time_to_respond_seconds": seconds(self.mean_time_to_respond),
            "mean_time_to_resolve_seconds": seconds(self.mean_time_to_resolve),
            "response_sla": self.response_sla.to_json(),
            "resolution_sla": self.resolution_sla.to_json(),
            "first_contact_resolution": self.first_contact_resolution.to_json(),
            "definitive_resolution": self.definitive_resolution.to_json(),
            "satisfaction": {
                "mean": round(self.satisfaction_mean, 3)
                if self.satisfaction_mean is not None
                else None,
                "count": self.satisfaction_count,
            },
            "machine_first": self.machine_first.to_json(),
            "causes_total": self.causes_total,
            "pareto": [
                {
                    "cause": c.cause,
                    "count": c.count,
                    "percent": round(c.percent, 2),
                    "cumulative_percent": round(c.cumulative_percent, 2),
                }
                for c in self.pareto
            ],
        }


def first_resolution_at(ticket: TicketView) -> datetime | None:
    """When the ticket was first resolved: the earliest move to ``resolved`` in its
    history (``resolved_at`` holds the latest one, and a reopen clears it)."""
    times = [parse_iso(h.at) for h in ticket.history if h.to_state == State.RESOLVED and h.at]
    if times:
        return min(times)
    return parse_iso(ticket.resolved_at) if ticket.resolved_at else None


def is_first_contact_resolution(ticket: TicketView) -> bool:
    """Resolved at first contact: the customer got the answer without being called back
    and without the case changing hands. Precisely, the ticket has been resolved and

    - it never went to ``pending_customer`` (nobody had to wait for the customer);
    - it was never reopened (the first answer was the right one);
    - it was never escalated (``escalation_level`` is still 1, i.e. L1);
    - one engineer did the work: every move by an agent into ``in_progress``,
      ``pending_customer`` or ``resolved`` was made by the same person. Assigning
      (a dispatcher or the system) and closing are not work and do not count; the
      second engineer that gold and platinum attach does not count either.

    The state history is the only record of who worked on a case: a change of assignee
    with no change of state leaves no trace there, so it is not seen as a reassignment.
    """
    if first_resolution_at(ticket) is None or ticket.escalation_level > 1:
        return False
    if ticket.reopen_count:
        return False
    if any(h.to_state == State.PENDING_CUSTOMER for h in ticket.history):
        return False
    workers = {h.by for h in ticket.history if h.role == Role.AGENT and h.to_state in _WORK}
    return len(workers) <= 1


def pareto_causes(
    tickets: Iterable[TicketView], share: float = PARETO_SHARE
) -> tuple[int, tuple[CauseShare, ...]]:
    """(tickets with a cause, the fewest causes that account for ``share`` of them).

    Causes are compared trimmed and lowercased; they are sorted by count, most frequent
    first (ties by name), and the list stops at the first cause where the cumulative
    share reaches ``share``.
    """
    if not 0 < share <= 1:
        raise InvalidArgument(f"Pareto share {share} must be within 0 and 1")
    counts = Counter(t.cause.strip().lower() for t in tickets if t.cause.strip())
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    out: list[CauseShare] = []
    cumulative = 0
    for cause, count in ranked:
        cumulative += count
        out.append(CauseShare(cause, count, 100 * count / total, 100 * cumulative / total))
        if cumulative >= share * total - 1e-9:
            break
    return total, tuple(out)


def _in_cohort(
    ticket: TicketView, region: str | None, start: datetime | None, end: datetime | None
) -> bool:
    if region is not None and ticket.home_region.lower() != region.strip().lower():
        return False
    if start is None and end is None:
        return True
    if not ticket.created_at:
        return False
    created = parse_iso(ticket.created_at)
    return (start is None or created >= start) and (end is None or created < end)


def _mean(values: list[timedelta]) -> timedelta | None:
    return sum(values, timedelta()) / len(values) if values else None


CALLED_FIRST = timedelta(hours=24)


def machine_first_share(tickets: Iterable[TicketView]) -> Ratio:
    """Share of incidents that a machine opened before any customer contact.

    A machine's ticket (``source`` machine) counts unless a person had already opened an
    incident for the same asset within ``CALLED_FIRST`` before it: then the customer
    called first and the machine only confirmed it."""
    incidents = [t for t in tickets if t.kind is Kind.INCIDENT]
    by_person: dict[str, list[datetime]] = {}
    for t in incidents:
        if t.source != "machine" and t.asset and t.created_at:
            by_person.setdefault(t.asset, []).append(parse_iso(t.created_at))
    first = 0
    for t in incidents:
        if t.source != "machine" or not t.created_at:
            continue
        opened = parse_iso(t.created_at)
        called = any(opened - CALLED_FIRST <= at <= opened for at in by_person.get(t.asset, ()))
        first += not called
    return Ratio(first, len(incidents))


def compute_stats(
    tickets: Iterable[TicketView],
    *,
    region: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    due_for: DueFor = stored_due,
    pareto_share: float = PARETO_SHARE,
) -> Stats:
    """The figures of one cohort (see the module docstring).

    - ``opened``: tickets in the cohort; ``open_now``: those in an open state now.
    - ``resolved``: tickets resolved at least once (a reopened one still counts; the
      definitive rate tells them apart). Mean time to resolve runs from creation to
      the *first* resolution; mean time to respond from creation to the first answer.
    - SLA compliance (``due_for`` gives each ticket's due times, None to leave it out):
      response, among answered tickets, answered at or before the response due;
      resolution, among tickets resolved or closed now, resolved (latest resolution)
      at or before the resolution due.
    - First-contact and definitive resolution rates are over ``resolved``; definitive
      means resolved or closed now and never reopened. See
      ``is_first_contact_resolution`` for the other.
    - Satisfaction: mean of the 1–5 ratings given (0 means not rated).
    """
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise InvalidArgument(f"{name} {value.isoformat()} needs a time zone")
    cohort = [t for t in tickets if _in_cohort(t, region, start, end)]
    respond_times: list[timedelta] = []
    resolve_times: list[timedelta] = []
    response_met = response_judged = resolution_met = resolution_judged = 0
    fcr = definitive = 0
    ratings: list[int] = []
    for t in cohort:
        created = parse_iso(t.created_at) if t.created_at else None
        responded = parse_iso(t.first_response_at) if t.first_response_at else None
        first_resolved = first_resolution_at(t)
        if created is not None and responded is not None:
            respond_times.append(max(responded - created, timedelta()))
        if first_resolved is not None:
            if created is not None:
                resolve_times.append(max(first_resolved - created, timedelta()))
            fcr += is_first_contact_resolution(t)
            definitive += t.state in _DONE and t.reopen_count == 0
        due = due_for(t)
        if due is not None and responded is not None:
            response_judged += 1
            response_met += responded <= due.response_due
        if due is not None and t.state in _DONE and t.resolved_at:
            resolution_judged += 1
            resolution_met += parse_iso(t.resolved_at) <= due.resolution_due
        if 1 <= t.satisfaction <= 5:
            ratings.append(t.satisfaction)
    resolved = sum(1 for t in cohort if first_resolution_at(t) is not None)
    causes_total, pareto = pareto_causes(cohort, pareto_share)
    return Stats(
        region=region,
        start=start,
        end=end,
        opened=len(cohort),
        resolved=resolved,
        open_now=sum(1 for t in cohort if t.is_open),
        responded=len(respond_times),
        mean_time_to_respond=_mean(respond_times),
        mean_time_to_resolve=_mean(resolve_times),
        response_sla=Ratio(response_met, response_judged),
        resolution_sla=Ratio(resolution_met, resolution_judged),
        first_contact_resolution=Ratio(fcr, resolved),
        definitive_resolution=Ratio(definitive, resolved),
        satisfaction_mean=sum(ratings) / len(ratings) if ratings else None,
        satisfaction_count=len(ratings),
        causes_total=causes_total,
        pareto=pareto,
        machine_first=machine_first_share(cohort),
    )
