"""SLA events: detected once per ticket, target and state; levels set, never added."""

from __future__ import annotations

from datetime import timedelta

import pytest

from node.breaches import AlreadyRecorded, detect, record_fields, ticket_fields
from node.errors import FailedPrecondition
from node.tickets import State, Tier
from tests.unit.test_dues import CLOCK, T0, Ticket


def events_at(t: Ticket, minutes: float) -> list[tuple[str, str]]:
    status = CLOCK.status(t.view, T0 + timedelta(minutes=minutes))
    assert status is not None
    return [(e.target, e.state) for e in detect(t.view, status)]


def record(t: Ticket, minutes: float, epoch: int = 7) -> list[int]:
    """Detect and record like the owner does; returns the levels reached."""
    at = T0 + timedelta(minutes=minutes)
    status = CLOCK.status(t.view, at)
    assert status is not None
    levels = []
    for event in detect(t.view, status):
        t._apply(ticket_fields(t.view, event, epoch, "velizy", at))
        levels.append(t.view.escalation_level)
    return levels


def test_an_unanswered_gold_p1_goes_at_risk_then_breached_then_up_to_l4() -> None:
    t = Ticket(Tier.GOLD, 1)  # 24x7: respond in 1 h, resolve in 8 h; at risk in the last 20%
    assert events_at(t, 30) == []
    assert events_at(t, 50) == [("response", "at_risk")]
    assert record(t, 50) == [1]  # a response at risk escalates nobody
    assert events_at(t, 55) == []  # recorded: not again
    assert record(t, 61) == [2]
    assert t.view.sla_recorded == {"response": "breached"}
    assert events_at(t, 62) == []
    assert record(t, 7 * 60) == [3]  # resolution at risk
    assert record(t, 8 * 60 + 1) == [4]
    assert t.view.escalation_level == 4


def test_a_breach_found_late_skips_at_risk_and_a_resolved_ticket_has_none() -> None:
    t = Ticket(Tier.PLATINUM, 2)
    assert events_at(t, 61) == [("response", "breached")]
    t.change(T0 + timedelta(minutes=62), state=State.RESOLVED, cause="disk")
    assert events_at(t, 24 * 60) == []
    assert CLOCK.status(Ticket(None, 1).view, T0) is None  # no tier, no clocks


def test_recording_twice_or_with_a_stale_epoch_is_refused() -> None:
    t = Ticket(Tier.GOLD, 1)
    at = T0 + timedelta(minutes=61)
    status = CLOCK.status(t.view, at)
    assert status is not None
    (event,) = detect(t.view, status)
    assert event.id == "BR-VEL-000001-response-breached"
    fields = ticket_fields(t.view, event, 7, "velizy", at)
    assert fields["escalation_level"] == 2 and fields["sla_epoch"] == 7
    t._apply(fields)
    with pytest.raises(AlreadyRecorded):
        ticket_fields(t.view, event, 7, "uk", at)
    later = T0 + timedelta(hours=7)
    status = CLOCK.status(t.view, later)
    assert status is not None
    (risk,) = detect(t.view, status)
    with pytest.raises(FailedPrecondition, match="epoch 6 is older than 7"):
        ticket_fields(t.view, risk, 6, "uk", later)
    rec = record_fields(event, 7, "velizy", at, 2)
    assert (rec["id"], rec["target"], rec["state"], rec["epoch"]) == (event.id, "response",
                                                                      "breached", 7)  # fmt: skip
