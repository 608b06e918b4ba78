"""The ticket as the domain sees it: enums and a typed, read-only view.

Replicated state lives in ``federation.merge.ReplicatedTicket`` (registers and sets);
``TicketView`` is what rules, servicers and the CLI read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from federation.merge import ReplicatedTicket


class Kind(StrEnum):
    INCIDENT = "incident"
    SERVICE_REQUEST = "service_request"
    INFORMATION_REQUEST = "information_request"


class State(StrEnum):
    NEW = "new"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    PENDING_CUSTOMER = "pending_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"


OPEN_STATES = frozenset({State.NEW, State.ASSIGNED, State.IN_PROGRESS, State.PENDING_CUSTOMER})


class Tier(StrEnum):
    BRONZE = "bronze"
    SILVER = "silver"
    GOLD = "gold"
    PLATINUM = "platinum"


class Role(StrEnum):
    AGENT = "agent"
    CUSTOMER = "customer"
    SYSTEM = "system"


# Enum members by value: a dict lookup is several times cheaper than calling the enum,
# and views are built for every ticket a node returns. Unknown values still go through
# the enum, which raises.
_KINDS: dict[str, Kind] = {k.value: k for k in Kind}
_STATES: dict[str, State] = {s.value: s for s in State}
_TIERS: dict[str, Tier] = {t.value: t for t in Tier}


def iso(instant: datetime) -> str:
    """UTC instant as ISO 8601 with milliseconds and a Z: sortable as text."""
    utc = instant if instant.tzinfo is UTC else instant.astimezone(UTC)
    if utc.year < 1000:  # strftime does not pad such years; keep its exact text
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    # The same text as strftime, written directly: it is on the path of every write.
    return (
        f"{utc.year}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


def parse_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True)
class CommentView:
    id: str
    author: str
    text: str
    at: str
    region: str
    internal: bool


@dataclass(frozen=True)
class OccurrenceView:
    """One report of a machine's alarm (call home), as the region that took it saw it."""

    id: str
    at: str
    region: str
    severity: str
    message: str


@dataclass(frozen=True)
class StateChangeView:
    from_state: State
    to_state: State
    by: str
    role: Role
    at: str
    region: str
    note: str


@dataclass(frozen=True)
class TicketView:
    code: str
    title: str
    description: str
    kind: Kind
    state: State
    priority: int
    customer: str
    asset: str
    tier: Tier | None
    home_region: str
    queue: str
    assignee: str
    second_engineer: str
    escalation_level: int
    version: int
    created_by: str
    origin_region: str
    created_at: str
    updated_at: str
    cause: str
    satisfaction: int
    first_response_at: str
    resolved_at: str
    response_due: str
    resolution_due: str
    source: str
    last_change_id: str
    digest: str
    comments: tuple[CommentView, ...] = ()
    history: tuple[StateChangeView, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    # What the queue's owner recorded per SLA target: "at_risk" or "breached".
    sla_recorded: dict[str, str] = field(default_factory=dict)
    sla_epoch: int = 0  # the owner epoch that last recorded an SLA event on it
    occurrences: tuple[OccurrenceView, ...] = ()  # call-home repeats, oldest first
    customer_notified_at: str = ""  # proactive contracts: when the customer was told
    # A "machine silent" ticket: last heartbeat before the silence, when one came back
    # ("" while still silent), and the owner epoch that last acted on it (fencing).
    silent_since: str = ""
    heartbeat_back_at: str = ""
    silence_epoch: int = 0

    @property
    def first_seen(self) -> str:
        return self.occurrences[0].at if self.occurrences else ""

    @property
    def last_seen(self) -> str:
        return self.occurrences[-1].at if self.occurrences else ""

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def reopen_count(self) -> int:
        return sum(
            1
            for h in self.history
            if h.from_state in (State.RESOLVED, State.CLOSED) and h.to_state == State.IN_PROGRESS
        )

    @classmethod
    def from_replicated(cls, t: ReplicatedTicket, digest: str = "") -> TicketView:
        v = t.values
        get = v.get
        kind = get("kind", "incident")
        state = get("state", "new")
        tier = get("tier") or ""
        updated_hlc = int(t.last_change[0])
        # Filled in directly rather than through the frozen dataclass's __init__, which
        # sets its 31 fields one ``object.__setattr__`` at a time and was most of the cost
        # of a view; a view is built for every ticket a node writes or returns.
        view = cls.__new__(cls)
        view.__dict__.update(
            code=t.code,
            title=get("title", ""),
            description=get("description", ""),
            kind=_KINDS.get(kind) or Kind(kind),
            state=_STATES.get(state) or State(state),
            priority=int(get("priority", 3)),
            customer=get("customer", ""),
            asset=get("asset", ""),
            tier=(_TIERS.get(tier) or Tier(tier)) if tier else None,
            home_region=get("home_region", ""),
            queue=get("queue", ""),
            assignee=get("assignee", ""),
            second_engineer=get("second_engineer", ""),
            escalation_level=int(get("escalation_level", 1)),
            version=t.version,
            created_by=get("created_by", ""),
            origin_region=get("origin_region", ""),
            created_at=get("created_at", ""),
            updated_at=_hlc_iso(updated_hlc) if updated_hlc else get("created_at", ""),
            cause=get("cause", ""),
            satisfaction=int(get("satisfaction", 0)),
            first_response_at=get("first_response_at", ""),
            resolved_at=get("resolved_at", ""),
            response_due=get("response_due", ""),
            resolution_due=get("resolution_due", ""),
            source=get("source", "agent"),
            last_change_id=t.last_change_id,
            digest=digest or t.digest(),
            comments=tuple(_comment(c) for c in t.sorted_comments()) if t.comments else (),
            history=tuple(_change(h) for h in t.sorted_history()) if t.history else (),
            labels=dict(get("labels") or {}),
            sla_recorded={
                target: get(f"sla_{target}")
                for target in ("response", "resolution")
                if get(f"sla_{target}")
            },
            sla_epoch=int(get("sla_epoch", 0)),
            occurrences=_occurrences(t.occurrences) if t.occurrences else (),
            customer_notified_at=get("customer_notified_at", ""),
            silent_since=get("silent_since", ""),
            heartbeat_back_at=get("heartbeat_back_at", ""),
            silence_epoch=int(get("silence_epoch", 0)),
        )
        return view

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form printed by ``sundesk ticket show --json``."""
        return {
            "code": self.code,
            "title": self.title,
            "description": self.description,
            "state": self.state.value,
            "priority": self.priority,
            "kind": self.kind.value,
            "customer": self.customer,
            "asset": self.asset,
            "tier": self.tier.value if self.tier else "",
            "home_region": self.home_region,
            "queue": self.queue,
            "assignee": self.assignee,
            "second_engineer": self.second_engineer,
            "escalation_level": self.escalation_level,
            "version": self.version,
            "created_by": self.created_by,
            "origin_region": self.origin_region,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "cause": self.cause,
            "satisfaction": self.satisfaction,
            "first_response_at": self.first_response_at,
            "resolved_at": self.resolved_at,
            "response_due": self.response_due,
            "resolution_due": self.resolution_due,
            "sla_recorded": self.sla_recorded,
            "reopen_count": self.reopen_count,
            "source": self.source,
            "occurrences": len(self.occurrences),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "customer_notified_at": self.customer_notified_at,
            "digest": self.digest,
            "labels": self.labels,
            "comments": [
                {
                    "id": c.id,
                    "author": c.author,
                    "text": c.text,
                    "at": c.at,
                    "region": c.region,
                    "internal": c.internal,
                }
                for c in self.comments
            ],
            "history": [
                {
                    "from": h.from_state.value,
                    "to": h.to_state.value,
                    "by": h.by,
                    "role": h.role.value,
                    "at": h.at,
                    "region": h.region,
                    "note": h.note,
                }
                for h in self.history
            ],
        }


def _hlc_iso(hlc: int) -> str:
    return _ms_iso(hlc >> 16)


@lru_cache(maxsize=1024)
def _ms_iso(wall_ms: int) -> str:
    # Writes that land in the same millisecond share the text: cache it.
    return iso(datetime.fromtimestamp(wall_ms / 1000, tz=UTC))


def _comment(c: dict[str, Any]) -> CommentView:
    return CommentView(
        id=c["id"],
        author=c.get("author", ""),
        text=c.get("text", ""),
        at=c.get("at", ""),
        region=c.get("region", ""),
        internal=bool(c.get("internal", False)),
    )


def _change(h: dict[str, Any]) -> StateChangeView:
    return StateChangeView(
        from_state=State(h["from"]),
        to_state=State(h["to"]),
        by=h.get("by", ""),
        role=Role(h.get("role", Role.AGENT)),
        at=h.get("at", ""),
        region=h.get("region", ""),
        note=h.get("note", ""),
    )


def _occurrences(found: dict[str, dict[str, Any]]) -> tuple[OccurrenceView, ...]:
    views = (
        OccurrenceView(
            id=o["id"],
            at=o.get("at", ""),
            region=o.get("region", ""),
            severity=o.get("severity", ""),
            message=o.get("message", ""),
        )
        for o in found.values()
    )
    return tuple(sorted(views, key=lambda o: (o.at, o.id)))
