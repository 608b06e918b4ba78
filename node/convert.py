"""Protobuf at the edge: messages to domain objects and back (tickets go back as wire bytes,
``node.ticket_wire``), with input validation."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from node.errors import InvalidArgument
from node.rules import NewTicket, TicketChange
from node.tickets import Kind, Role, State, Tier
from sundesk.v1 import desk_pb2 as pb

KIND_TO_PB = {
    Kind.INCIDENT: pb.TICKET_KIND_INCIDENT,
    Kind.SERVICE_REQUEST: pb.TICKET_KIND_SERVICE_REQUEST,
    Kind.INFORMATION_REQUEST: pb.TICKET_KIND_INFORMATION_REQUEST,
}
STATE_TO_PB = {
    State.NEW: pb.TICKET_STATE_NEW,
    State.ASSIGNED: pb.TICKET_STATE_ASSIGNED,
    State.IN_PROGRESS: pb.TICKET_STATE_IN_PROGRESS,
    State.PENDING_CUSTOMER: pb.TICKET_STATE_PENDING_CUSTOMER,
    State.RESOLVED: pb.TICKET_STATE_RESOLVED,
    State.CLOSED: pb.TICKET_STATE_CLOSED,
}
TIER_TO_PB = {
    Tier.BRONZE: pb.CONTRACT_TIER_BRONZE,
    Tier.SILVER: pb.CONTRACT_TIER_SILVER,
    Tier.GOLD: pb.CONTRACT_TIER_GOLD,
    Tier.PLATINUM: pb.CONTRACT_TIER_PLATINUM,
}
ROLE_TO_PB = {
    Role.AGENT: pb.ACTOR_ROLE_AGENT,
    Role.CUSTOMER: pb.ACTOR_ROLE_CUSTOMER,
    Role.SYSTEM: pb.ACTOR_ROLE_SYSTEM,
}
KIND_FROM_PB: dict[int, Kind] = {int(v): k for k, v in KIND_TO_PB.items()}
STATE_FROM_PB: dict[int, State] = {int(v): k for k, v in STATE_TO_PB.items()}
TIER_FROM_PB: dict[int, Tier] = {int(v): k for k, v in TIER_TO_PB.items()}
ROLE_FROM_PB: dict[int, Role] = {int(v): k for k, v in ROLE_TO_PB.items()}


def _choices(mapping: Mapping[int, object]) -> str:
    return ", ".join(str(getattr(v, "value", v)) for v in mapping.values())


def kind_from_pb(value: int, *, default: Kind | None = Kind.INCIDENT) -> Kind | None:
    if value == pb.TICKET_KIND_UNSPECIFIED:
        return default
    try:
        return KIND_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(
            f"kind {value} is not a ticket kind; use one of: {_choices(KIND_FROM_PB)}"
        ) from None


def state_from_pb(value: int) -> State | None:
    if value == pb.TICKET_STATE_UNSPECIFIED:
        return None
    try:
        return STATE_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(
            f"state {value} is not a ticket state; use one of: {_choices(STATE_FROM_PB)}"
        ) from None


def tier_from_pb(value: int) -> Tier | None:
    if value == pb.CONTRACT_TIER_UNSPECIFIED:
        return None
    try:
        return TIER_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(
            f"tier {value} is not a contract tier; use one of: {_choices(TIER_FROM_PB)}"
        ) from None


def role_from_pb(value: int) -> Role:
    if value == pb.ACTOR_ROLE_UNSPECIFIED:
        return Role.AGENT
    try:
        return ROLE_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(
            f"role {value} is not an actor role; use one of: {_choices(ROLE_FROM_PB)}"
        ) from None


def new_ticket_from_pb(req: pb.CreateTicketRequest) -> NewTicket:
    return NewTicket(
        title=req.title,
        description=req.description,
        kind=kind_from_pb(req.kind) or Kind.INCIDENT,
        priority=req.priority or 3,
        customer=req.customer,
        asset=req.asset,
        tier=tier_from_pb(req.tier),
        home_region=req.home_region,
        queue=req.queue,
        created_by=req.created_by,
        role=role_from_pb(req.role),
        labels=dict(req.labels),
    )


def change_from_pb(req: pb.UpdateTicketRequest) -> TicketChange:
    if req.expected_version < 0:
        raise InvalidArgument(f"expected_version {req.expected_version} is negative")
    return TicketChange(
        actor=req.actor,
        role=role_from_pb(req.role),
        expected_version=req.expected_version,
        state=state_from_pb(req.state),
        priority=req.priority or None,
        assignee=req.assignee if req.HasField("assignee") else None,
        second_engineer=req.second_engineer if req.HasField("second_engineer") else None,
        note=req.note,
        cause=req.cause,
        satisfaction=req.satisfaction or None,
    )


def ts_to_iso(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    dt: datetime = ts.ToDatetime()
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
