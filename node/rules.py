"""Ticket rules (pure): what may change, who may change it, and what each change records.

Rules take the current ``TicketView`` and a request and return the fields of the
operation to write, or raise a named error. They never read the clock: ``now`` and the
writing ``region`` are arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from federation.merge import COMMENT_KEY, CREATED_KEY, TRANSITION_KEY
from node.errors import FailedPrecondition, InvalidArgument, PermissionDenied, StaleVersion
from node.tickets import Kind, Role, State, TicketView, Tier, iso

MAX_TITLE = 200
MAX_TEXT = 64 * 1024
MAX_NAME = 100
MAX_LABELS = 32

A, C, S = Role.AGENT, Role.CUSTOMER, Role.SYSTEM


@dataclass(frozen=True)
class Transition:
    roles: frozenset[Role]
    needs_assignee: bool = False
    needs_cause: bool = False
    reopen: bool = False


def _t(*roles: Role, **kw: bool) -> Transition:
    return Transition(roles=frozenset(roles), **kw)


# The lifecycle of DESIGN.md: new → assigned → in progress → pending customer → resolved →
# closed; reopen goes back to in progress. Resolving straight from new or assigned is the
# first-contact resolution of an information request. Any pair not listed is illegal.
TRANSITIONS: Mapping[tuple[State, State], Transition] = {
    (State.NEW, State.ASSIGNED): _t(A, S, needs_assignee=True),
    (State.NEW, State.IN_PROGRESS): _t(A),
    (State.NEW, State.RESOLVED): _t(A, needs_cause=True),
    (State.ASSIGNED, State.IN_PROGRESS): _t(A),
    (State.ASSIGNED, State.RESOLVED): _t(A, needs_cause=True),
    (State.IN_PROGRESS, State.PENDING_CUSTOMER): _t(A),
    (State.IN_PROGRESS, State.RESOLVED): _t(A, needs_cause=True),
    (State.PENDING_CUSTOMER, State.IN_PROGRESS): _t(A, C),
    (State.PENDING_CUSTOMER, State.RESOLVED): _t(A, needs_cause=True),
    (State.RESOLVED, State.CLOSED): _t(A, C, S),
    (State.RESOLVED, State.IN_PROGRESS): _t(A, C, reopen=True),
    (State.CLOSED, State.IN_PROGRESS): _t(A, reopen=True),
}


def check_transition(current: State, target: State, role: Role) -> Transition:
    rule = TRANSITIONS.get((current, target))
    if rule is None:
        allowed = sorted(t.value for (f, t) in TRANSITIONS if f == current)
        hint = f"from {current.value} it can go to: {', '.join(allowed)}" if allowed else ""
        raise FailedPrecondition(
            f"a ticket cannot go from {current.value} to {target.value}; {hint}".rstrip("; ")
        )
    if role not in rule.roles:
        who = ", ".join(sorted(r.value for r in rule.roles))
        raise PermissionDenied(
            f"a {role.value} cannot move a ticket from {current.value} to {target.value}; "
            f"only: {who}"
        )
    return rule


@dataclass(frozen=True)
class NewTicket:
    title: str
    description: str = ""
    kind: Kind = Kind.INCIDENT
    priority: int = 3
    customer: str = ""
    asset: str = ""
    tier: Tier | None = None
    home_region: str = ""
    queue: str = ""
    created_by: str = ""
    role: Role = Role.AGENT
    source: str = "agent"
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TicketChange:
    actor: str
    role: Role = Role.AGENT
    expected_version: int = 0
    state: State | None = None
    priority: int | None = None
    assignee: str | None = None
    second_engineer: str | None = None
    note: str = ""
    cause: str = ""
    satisfaction: int | None = None


def _text(name: str, value: str, limit: int, *, required: bool = False) -> str:
    value = value.strip() if required else value
    if required and not value:
        raise InvalidArgument(f"{name} is empty; give a short {name}")
    if len(value) > limit:
        raise InvalidArgument(f"{name} is {len(value)} characters long; at most {limit} allowed")
    return value


def _priority(value: int) -> int:
    if not 1 <= value <= 4:
        raise InvalidArgument(f"priority {value} is out of range; use 1 (critical) to 4 (low)")
    return value


def create_fields(req: NewTicket, region: str, now: datetime) -> dict[str, Any]:
    """Fields of the operation that creates a ticket."""
    title = _text("title", req.title, MAX_TITLE, required=True)
    description = _text("description", req.description, MAX_TEXT)
    for name in ("customer", "asset", "created_by", "queue", "home_region"):
        _text(name, getattr(req, name), MAX_NAME)
    if len(req.labels) > MAX_LABELS:
        raise InvalidArgument(f"{len(req.labels)} labels given; at most {MAX_LABELS} allowed")
    for key, value in req.labels.items():
        _text("label name", key, MAX_NAME, required=True)
        _text(f"label {key}", value, MAX_NAME)
    home = req.home_region or region
    at = iso(now)
    fields: dict[str, Any] = {
        CREATED_KEY: True,
        "title": title,
        "description": description,
        "kind": req.kind.value,
        "state": State.NEW.value,
        "priority": _priority(req.priority),
        "customer": req.customer,
        "asset": req.asset,
        "tier": req.tier.value if req.tier else "",
        "home_region": home,
        "queue": req.queue or home,
        "assignee": "",
        "second_engineer": "",
        "escalation_level": 1,
        "created_by": req.created_by or "anonymous",
        "origin_region": region,
        "created_at": at,
        "source": req.source,
        "labels": dict(req.labels),
    }
    return fields


def update_fields(
    ticket: TicketView, change: TicketChange, region: str, now: datetime
) -> dict[str, Any]:
    """Fields of the operation for ``change``; raises if the change is not allowed."""
    if change.expected_version and change.expected_version != ticket.version:
        raise StaleVersion(
            f"{ticket.code} is at version {ticket.version}, not {change.expected_version}; "
            "read it again and retry"
        )
    actor = _text("actor", change.actor, MAX_NAME, required=True)
    at = iso(now)
    fields: dict[str, Any] = {}
    state = ticket.state
    assignee = ticket.assignee
    if change.assignee is not None:
        _text("assignee", change.assignee, MAX_NAME)
        if change.role == Role.CUSTOMER:
            raise PermissionDenied("a customer cannot assign tickets")
        if change.assignee != ticket.assignee:
            fields["assignee"] = assignee = change.assignee
    if change.second_engineer is not None:
        _text("second engineer", change.second_engineer, MAX_NAME)
        if change.role == Role.CUSTOMER:
            raise PermissionDenied("a customer cannot attach engineers")
        if change.second_engineer != ticket.second_engineer:
            fields["second_engineer"] = change.second_engineer
    if change.priority is not None and change.priority != ticket.priority:
        if change.role == Role.CUSTOMER:
            raise PermissionDenied("a customer cannot change the priority; ask the agent")
        fields["priority"] = _priority(change.priority)
    if change.state is not None and change.state != state:
        rule = check_transition(state, change.state, change.role)
        if rule.needs_assignee and not assignee:
            raise FailedPrecondition(f"{ticket.code} needs an assignee to be assigned")
        cause = _text("cause", change.cause, MAX_NAME, required=rule.needs_cause)
        if change.state == State.IN_PROGRESS and not assignee and change.role == Role.AGENT:
            fields["assignee"] = assignee = actor
        fields["state"] = change.state.value
        fields[TRANSITION_KEY] = {
            "from": state.value,
            "to": change.state.value,
            "by": actor,
            "role": change.role.value,
            "at": at,
            "region": region,
            "note": _text("note", change.note, MAX_TEXT),
        }
        if change.state == State.RESOLVED:
            fields["cause"] = cause
            fields["resolved_at"] = at
        if rule.reopen:
            fields["resolved_at"] = ""
        if change.role == Role.AGENT and not ticket.first_response_at:
            fields["first_response_at"] = at
    elif change.state is None and assignee and ticket.state == State.NEW and "assignee" in fields:
        # Naming an assignee on a new ticket is the assignment itself.
        check_transition(State.NEW, State.ASSIGNED, change.role)
        fields["state"] = State.ASSIGNED.value
        fields[TRANSITION_KEY] = {
            "from": State.NEW.value,
            "to": State.ASSIGNED.value,
            "by": actor,
            "role": change.role.value,
            "at": at,
            "region": region,
            "note": _text("note", change.note, MAX_TEXT),
        }
    if change.satisfaction is not None:
        if not 1 <= change.satisfaction <= 5:
            raise InvalidArgument(
                f"satisfaction {change.satisfaction} is out of range; rate from 1 to 5"
            )
        if ticket.state not in (State.RESOLVED, State.CLOSED) and fields.get("state") not in (
            State.RESOLVED.value,
            State.CLOSED.value,
        ):
            raise FailedPrecondition(f"{ticket.code} can be rated once it is resolved")
        fields["satisfaction"] = change.satisfaction
    if not fields:
        raise InvalidArgument(
            f"nothing to change on {ticket.code}: give a state, priority, assignee or rating"
        )
    return fields


def comment_fields(
    ticket: TicketView,
    author: str,
    text: str,
    role: Role,
    internal: bool,
    region: str,
    now: datetime,
) -> dict[str, Any]:
    author = _text("author", author, MAX_NAME, required=True)
    body = _text("comment text", text, MAX_TEXT, required=True)
    if internal and role == Role.CUSTOMER:
        raise PermissionDenied("a customer cannot write internal notes")
    at = iso(now)
    fields: dict[str, Any] = {
        COMMENT_KEY: {
            "author": author,
            "text": body,
            "at": at,
            "region": region,
            "internal": internal,
            "role": role.value,
        }
    }
    if role == Role.AGENT and not internal and not ticket.first_response_at:
        fields["first_response_at"] = at
    return fields
