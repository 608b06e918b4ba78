"""Dues written on tickets: set at creation, moved by finished pauses, frozen by a
running one, untouched by changes that are not about state or priority."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from federation.config import load_config
from federation.merge import ReplicatedTicket, apply_in_place
from federation.operations import Operation
from node import rules
from node.contracts import load_contracts
from node.dues import DueClock
from node.rules import NewTicket, TicketChange
from node.tickets import State, TicketView, Tier

CONFIG = load_config(None)
CLOCK = DueClock(load_contracts(None), CONFIG.region)
# Wednesday 4 March 2026, 10:00 in Vélizy (CET): open hours.
T0 = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)


class Ticket:
    """A ticket built through the real rules and merge, one operation at a time."""

    def __init__(self, tier: Tier | None, priority: int) -> None:
        self.replicated = ReplicatedTicket("VEL-000001")
        self.seq = 0
        new = NewTicket(title="t", tier=tier, priority=priority, home_region="velizy")
        fields = rules.create_fields(new, "velizy", T0)
        fields.update(CLOCK.on_create(fields))
        self._apply(fields)

    def _apply(self, fields: dict[str, Any]) -> None:
        self.seq += 1
        op = Operation("velizy", self.seq, self.seq << 16, "VEL-000001", "ticket.x", fields)
        apply_in_place(self.replicated, op)

    @property
    def view(self) -> TicketView:
        return TicketView.from_replicated(self.replicated)

    def change(self, at: datetime, **kw: Any) -> dict[str, Any]:
        fields = rules.update_fields(self.view, TicketChange("ana", **kw), "velizy", at)
        dues = CLOCK.on_update(self.view, fields)
        self._apply({**fields, **dues})
        return dues


def test_creation_records_dues_on_the_contract_calendar() -> None:
    gold_p1 = Ticket(Tier.GOLD, 1).view  # 24x7: 1 h and 8 h of wall time
    assert (gold_p1.response_due, gold_p1.resolution_due) == (
        "2026-03-04T10:00:00.000Z",
        "2026-03-04T17:00:00.000Z",
    )
    # Gold P3 runs on Vélizy's business hours (09:00–18:00 local): 36 h of them is 4 days.
    gold_p3 = Ticket(Tier.GOLD, 3).view
    assert gold_p3.response_due == "2026-03-04T13:00:00.000Z"
    assert gold_p3.resolution_due > "2026-03-08"
    assert Ticket(None, 1).view.response_due == ""


def test_a_finished_pause_moves_the_dues_and_a_running_one_freezes_the_clock() -> None:
    t = Ticket(Tier.PLATINUM, 2)  # 24x7: 1 h to respond, 12 h to resolve
    t.change(T0 + timedelta(minutes=10), state=State.IN_PROGRESS)
    assert t.change(T0 + timedelta(minutes=20), state=State.PENDING_CUSTOMER) == {}
    frozen = CLOCK.status(t.view, T0 + timedelta(hours=5))
    assert frozen is not None
    assert frozen.resolution_left == timedelta(hours=12) - timedelta(minutes=20)
    dues = t.change(T0 + timedelta(hours=2, minutes=20), state=State.IN_PROGRESS)
    # Two hours pending: the resolution due moves two hours later.
    assert dues == {"resolution_due": "2026-03-04T23:00:00.000Z"}
    running = CLOCK.status(t.view, T0 + timedelta(hours=3))
    assert running is not None and running.resolution == "ok"
    assert running.resolution_left == timedelta(hours=11)


def test_priority_changes_recompute_and_assignments_do_not() -> None:
    t = Ticket(Tier.PLATINUM, 3)
    assert t.change(T0, assignee="bob") == {}
    dues = t.change(T0 + timedelta(minutes=5), priority=1)
    assert dues == {
        "response_due": "2026-03-04T09:15:00.000Z",
        "resolution_due": "2026-03-04T13:00:00.000Z",
    }


def test_status_reports_at_risk_and_breached() -> None:
    t = Ticket(Tier.GOLD, 1)  # 1 h to respond, at risk in its last 12 minutes
    at = CLOCK.status(t.view, T0 + timedelta(minutes=50))
    late = CLOCK.status(t.view, T0 + timedelta(minutes=61))
    assert at is not None and late is not None
    assert (at.response, late.response) == ("at_risk", "breached")
    assert late.response_left == -timedelta(minutes=1)
    assert CLOCK.status(Ticket(None, 1).view, T0) is None
