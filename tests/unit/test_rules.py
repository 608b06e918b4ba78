"""The ticket lifecycle, exhaustively: every pair of states, every role."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from federation.merge import ReplicatedTicket, apply_in_place
from federation.operations import TICKET_CREATE, TICKET_UPDATE, Operation
from node import rules
from node.errors import FailedPrecondition, InvalidArgument, PermissionDenied, StaleVersion
from node.rules import NewTicket, TicketChange
from node.tickets import Kind, Role, State, TicketView

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

# The expected lifecycle, written out independently of rules.TRANSITIONS.
ALLOWED = {
    (State.NEW, State.ASSIGNED): {Role.AGENT, Role.SYSTEM},
    (State.NEW, State.IN_PROGRESS): {Role.AGENT},
    (State.NEW, State.RESOLVED): {Role.AGENT},
    (State.ASSIGNED, State.IN_PROGRESS): {Role.AGENT},
    (State.ASSIGNED, State.RESOLVED): {Role.AGENT},
    (State.IN_PROGRESS, State.PENDING_CUSTOMER): {Role.AGENT},
    (State.IN_PROGRESS, State.RESOLVED): {Role.AGENT},
    (State.PENDING_CUSTOMER, State.IN_PROGRESS): {Role.AGENT, Role.CUSTOMER},
    (State.PENDING_CUSTOMER, State.RESOLVED): {Role.AGENT},
    (State.RESOLVED, State.CLOSED): {Role.AGENT, Role.CUSTOMER, Role.SYSTEM},
    (State.RESOLVED, State.IN_PROGRESS): {Role.AGENT, Role.CUSTOMER},
    (State.CLOSED, State.IN_PROGRESS): {Role.AGENT},
}


def ticket_in(state: State, assignee: str = "ana") -> TicketView:
    t = ReplicatedTicket(code="VEL-000001")
    fields = rules.create_fields(NewTicket(title="disk full"), "velizy", NOW)
    apply_in_place(t, Operation("velizy", 1, 1 << 16, t.code, TICKET_CREATE, fields))
    forced = {"state": state.value, "assignee": assignee}
    apply_in_place(t, Operation("velizy", 2, 2 << 16, t.code, TICKET_UPDATE, forced))
    return TicketView.from_replicated(t)


@pytest.mark.parametrize(("src", "dst", "role"), list(itertools.product(State, State, Role)))
def test_every_pair_of_states_for_every_role(src: State, dst: State, role: Role) -> None:
    ticket = ticket_in(src)
    change = TicketChange(actor="someone", role=role, state=dst, cause="disk")
    if src == dst:
        with pytest.raises(InvalidArgument, match="nothing to change"):
            rules.update_fields(ticket, change, "velizy", NOW)
        return
    roles = ALLOWED.get((src, dst))
    if roles is None:
        with pytest.raises(FailedPrecondition, match=f"cannot go from {src.value}"):
            rules.update_fields(ticket, change, "velizy", NOW)
    elif role not in roles:
        with pytest.raises(PermissionDenied, match=role.value):
            rules.update_fields(ticket, change, "velizy", NOW)
    else:
        fields = rules.update_fields(ticket, change, "velizy", NOW)
        assert fields["state"] == dst.value
        recorded = fields["transition"]
        assert (recorded["from"], recorded["to"], recorded["by"]) == (
            src.value,
            dst.value,
            "someone",
        )
        assert recorded["role"] == role.value and recorded["at"] == "2026-03-02T10:00:00.000Z"


def test_table_is_exactly_the_lifecycle() -> None:
    assert {k: set(v.roles) for k, v in rules.TRANSITIONS.items()} == ALLOWED


def test_resolve_needs_a_cause_and_records_it() -> None:
    ticket = ticket_in(State.IN_PROGRESS)
    with pytest.raises(InvalidArgument, match="cause is empty"):
        rules.update_fields(ticket, TicketChange("ana", state=State.RESOLVED), "velizy", NOW)
    fields = rules.update_fields(
        ticket, TicketChange("ana", state=State.RESOLVED, cause="firmware"), "velizy", NOW
    )
    assert fields["cause"] == "firmware" and fields["resolved_at"] == "2026-03-02T10:00:00.000Z"


def test_reopen_clears_resolution_time_and_counts() -> None:
    fields = rules.update_fields(
        ticket_in(State.RESOLVED), TicketChange("ana", state=State.IN_PROGRESS), "uk", NOW
    )
    assert fields["resolved_at"] == ""


def test_assign_needs_an_assignee() -> None:
    ticket = ticket_in(State.NEW, assignee="")
    with pytest.raises(FailedPrecondition, match="needs an assignee"):
        rules.update_fields(ticket, TicketChange("ana", state=State.ASSIGNED), "velizy", NOW)


def test_naming_an_assignee_on_a_new_ticket_assigns_it() -> None:
    fields = rules.update_fields(
        ticket_in(State.NEW, assignee=""), TicketChange("lead", assignee="bob"), "velizy", NOW
    )
    assert fields["state"] == "assigned" and fields["assignee"] == "bob"


def test_starting_work_takes_the_ticket_if_unassigned() -> None:
    fields = rules.update_fields(
        ticket_in(State.NEW, assignee=""), TicketChange("bob", state=State.IN_PROGRESS), "us", NOW
    )
    assert fields["assignee"] == "bob"
    assert fields["first_response_at"] == "2026-03-02T10:00:00.000Z"


def test_stale_version_is_refused() -> None:
    ticket = ticket_in(State.NEW)
    with pytest.raises(StaleVersion, match="version 2, not 1"):
        rules.update_fields(ticket, TicketChange("ana", expected_version=1, priority=1), "v", NOW)
    assert rules.update_fields(
        ticket, TicketChange("ana", expected_version=2, priority=1), "v", NOW
    ) == {"priority": 1}


@pytest.mark.parametrize(
    ("title", "message"),
    [("", "title is empty"), ("   ", "title is empty"), ("x" * 201, "at most 200")],
)
def test_bad_titles(title: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        rules.create_fields(NewTicket(title=title), "velizy", NOW)


@pytest.mark.parametrize("priority", [0, 5, -1])
def test_priority_range(priority: int) -> None:
    with pytest.raises(InvalidArgument, match="use 1 \\(critical\\) to 4"):
        rules.create_fields(NewTicket(title="t", priority=priority), "velizy", NOW)


def test_create_records_origin_and_defaults() -> None:
    fields = rules.create_fields(
        NewTicket(title=" printer ", kind=Kind.SERVICE_REQUEST), "japan", NOW
    )
    assert fields["origin_region"] == "japan" and fields["queue"] == "japan"
    assert fields["state"] == "new" and fields["kind"] == "service_request"
    assert fields["title"] == "printer"


def test_customer_limits() -> None:
    ticket = ticket_in(State.IN_PROGRESS)
    with pytest.raises(PermissionDenied):
        rules.update_fields(ticket, TicketChange("c", Role.CUSTOMER, priority=1), "v", NOW)
    with pytest.raises(PermissionDenied):
        rules.comment_fields(ticket, "c", "hi", Role.CUSTOMER, True, "v", NOW)


def test_rating_only_once_resolved() -> None:
    with pytest.raises(FailedPrecondition, match="once it is resolved"):
        rules.update_fields(
            ticket_in(State.IN_PROGRESS), TicketChange("c", satisfaction=4), "v", NOW
        )
    with pytest.raises(InvalidArgument, match="rate from 1 to 5"):
        rules.update_fields(ticket_in(State.RESOLVED), TicketChange("c", satisfaction=6), "v", NOW)
    assert rules.update_fields(
        ticket_in(State.CLOSED), TicketChange("c", satisfaction=5), "v", NOW
    ) == {"satisfaction": 5}


def test_first_public_agent_comment_is_the_first_response() -> None:
    ticket = ticket_in(State.NEW)
    assert "first_response_at" in rules.comment_fields(
        ticket, "ana", "on it", Role.AGENT, False, "v", NOW
    )
    assert "first_response_at" not in rules.comment_fields(
        ticket, "ana", "note", Role.AGENT, True, "v", NOW
    )
    with pytest.raises(InvalidArgument, match="comment text is empty"):
        rules.comment_fields(ticket, "ana", "  ", Role.AGENT, False, "v", NOW)
