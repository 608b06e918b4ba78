"""Statistics over a hand-made month: every expected figure is worked out in the comments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from node.errors import InvalidArgument
from node.sla import SlaDue
from node.stats import (
    CauseShare,
    Ratio,
    compute_stats,
    first_resolution_at,
    is_first_contact_resolution,
    pareto_causes,
)
from node.tickets import Kind, Role, State, StateChangeView, TicketView, Tier, iso

A, C, S = Role.AGENT, Role.CUSTOMER, Role.SYSTEM
MARCH = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


def at(day: int, clock: str, month: int = 3) -> str:
    hour, minute = map(int, clock.split(":"))
    return iso(datetime(2026, month, day, hour, minute, tzinfo=UTC))


def ticket(
    code: str,
    created: str,
    state: State,
    history: list[tuple[State, str, str, Role]],
    *,
    responded: str = "",
    resolved: str = "",
    due: tuple[str, str] | None = None,
    cause: str = "",
    rating: int = 0,
    escalation: int = 1,
    region: str = "velizy",
) -> TicketView:
    states = [State.NEW] + [to for to, _, _, _ in history]
    changes = tuple(StateChangeView(states[i], to, by, role, when, region, "")
                    for i, (to, when, by, role) in enumerate(history))  # fmt: skip
    return TicketView(
        code=code, title=code, description="", kind=Kind.INCIDENT, state=state, priority=2,
        customer="acme", asset="", tier=Tier.GOLD if due else None, home_region=region,
        queue=region, assignee="", second_engineer="", escalation_level=escalation,
        version=1, created_by="x", origin_region=region, created_at=created, updated_at="",
        cause=cause, satisfaction=rating, first_response_at=responded, resolved_at=resolved,
        response_due=due[0] if due else "", resolution_due=due[1] if due else "",
        source="agent", last_change_id="", digest="", history=changes,
    )  # fmt: skip


R, IP, PC = State.RESOLVED, State.IN_PROGRESS, State.PENDING_CUSTOMER
CL, AS = State.CLOSED, State.ASSIGNED

TICKETS = [
    # 1: answered and solved on the phone by alice, closed next day. Respond 30 min,
    #    resolve 30 min, both on time. FCR, definitive. "password", rated 5.
    ticket("VEL-000001", at(2, "09:00"), CL,
           [(R, at(2, "09:30"), "alice", A), (CL, at(3, "09:00"), "auto", S)],
           responded=at(2, "09:30"), resolved=at(2, "09:30"),
           due=(at(2, "10:00"), at(2, "17:00")), cause="password", rating=5),
    # 2: a dispatcher assigns (first response, 10 min), bob works and resolves at 11:00
    #    (2 h). On time. FCR (assigning is not work), definitive. "disk", rated 4.
    ticket("VEL-000002", at(3, "09:00"), R,
           [(AS, at(3, "09:10"), "dispatch", A), (IP, at(3, "09:20"), "bob", A),
            (R, at(3, "11:00"), "bob", A)],
           responded=at(3, "09:10"), resolved=at(3, "11:00"),
           due=(at(3, "09:30"), at(3, "12:00")), cause="disk", rating=4),
    # 3: carol answers at 10:00 (1 h, late), waits on the customer, resolves the next day
    #    at 12:00 (27 h, late). Not FCR (pending), definitive. "disk", rated 2.
    ticket("VEL-000003", at(4, "09:00"), R,
           [(IP, at(4, "10:00"), "carol", A), (PC, at(4, "10:30"), "carol", A),
            (IP, at(5, "09:00"), "acme", C), (R, at(5, "12:00"), "carol", A)],
           responded=at(4, "10:00"), resolved=at(5, "12:00"),
           due=(at(4, "09:30"), at(5, "11:00")), cause="disk", rating=2),
    # 4: resolved in 1 h, reopened by the customer, resolved again by erin the next day.
    #    Respond 15 min on time; judged at the latest resolution (6th 10:00 <= 12:00): on
    #    time. Not FCR, not definitive. "firmware", rated 3.
    ticket("VEL-000004", at(5, "09:00"), R,
           [(IP, at(5, "09:15"), "dave", A), (R, at(5, "10:00"), "dave", A),
            (IP, at(6, "09:00"), "acme", C), (R, at(6, "10:00"), "erin", A)],
           responded=at(5, "09:15"), resolved=at(6, "10:00"),
           due=(at(5, "10:00"), at(6, "12:00")), cause="firmware", rating=3),
    # 5: no contract (no due): left out of SLA compliance. Respond 5 min, resolve 45 min;
    #    frank started, grace resolved: two engineers, not FCR. Definitive. "Disk ".
    ticket("VEL-000005", at(6, "09:00"), R,
           [(IP, at(6, "09:05"), "frank", A), (R, at(6, "09:45"), "grace", A)],
           responded=at(6, "09:05"), resolved=at(6, "09:45"), cause="Disk "),
    # 6: escalated to L2; respond 30 min on time, resolve 4 h (13:00 > 12:00: late).
    #    Not FCR (escalated), definitive. "network", rated 5.
    ticket("VEL-000006", at(9, "09:00"), R,
           [(IP, at(9, "09:30"), "henry", A), (R, at(9, "13:00"), "henry", A)],
           responded=at(9, "09:30"), resolved=at(9, "13:00"),
           due=(at(9, "10:00"), at(9, "12:00")), cause="network", rating=5, escalation=2),
    # 7: in progress; answered after 65 min (late). Open.
    ticket("VEL-000007", at(10, "09:00"), IP, [(IP, at(10, "10:05"), "ivan", A)],
           responded=at(10, "10:05"), due=(at(10, "09:45"), at(10, "17:00"))),
    # 8: new, nobody answered yet. Open, not judged.
    ticket("VEL-000008", at(11, "09:00"), State.NEW, [], due=(at(11, "10:00"), at(11, "17:00"))),
    # 9: resolved after 80 min, reopened, open again (resolved_at cleared). Respond 20 min
    #    on time. Resolved once (counts in "resolved"), resolution not judged while open.
    #    Not FCR, not definitive. Cause "disk" kept from the first resolution.
    ticket("VEL-000009", at(12, "09:00"), IP,
           [(IP, at(12, "09:20"), "judy", A), (R, at(12, "10:20"), "judy", A),
            (IP, at(13, "09:00"), "acme", C)],
           responded=at(12, "09:20"), due=(at(12, "10:00"), at(12, "17:00")), cause="disk"),
    # 10: information given at once by kate (5 min), closed. FCR, definitive. "password", 5.
    ticket("VEL-000010", at(13, "09:00"), CL,
           [(R, at(13, "09:05"), "kate", A), (CL, at(14, "09:00"), "acme", C)],
           responded=at(13, "09:05"), resolved=at(13, "09:05"),
           due=(at(13, "10:00"), at(13, "17:00")), cause="password", rating=5),
    # Outside the cohort: another home region; February; exactly at the period's end.
    ticket("USA-000001", at(2, "15:00"), State.NEW, [], region="us", cause="power"),
    ticket("VEL-000011", at(27, "09:00", month=2), State.NEW, [], cause="power"),
    ticket("VEL-000012", at(1, "00:00", month=4), State.NEW, [], cause="power"),
]  # fmt: skip


def test_march_in_velizy() -> None:
    stats = compute_stats(TICKETS, region="velizy", start=MARCH[0], end=MARCH[1])
    assert stats.opened == 10
    assert stats.open_now == 3  # 7, 8, 9
    assert stats.resolved == 8  # all but 7 and 8 (9 was resolved once)
    assert stats.responded == 9  # all but 8
    # 30 + 10 + 60 + 15 + 5 + 30 + 65 + 20 + 5 = 240 min over 9 tickets = 26 min 40 s.
    assert stats.mean_time_to_respond == timedelta(minutes=26, seconds=40)
    # To the first resolution: 30 + 120 + 1620 + 60 + 45 + 240 + 80 + 5 = 2200 min / 8.
    assert stats.mean_time_to_resolve == timedelta(minutes=275)
    # Response: judged 1, 2, 3, 4, 6, 7, 9, 10 (5 has no due, 8 no answer); late: 3, 7.
    assert stats.response_sla == Ratio(6, 8)
    # Resolution: judged 1, 2, 3, 4, 6, 10 (resolved or closed now, with a due); late: 3, 6.
    assert stats.resolution_sla == Ratio(4, 6)
    assert stats.first_contact_resolution == Ratio(3, 8)  # 1, 2, 10
    assert stats.definitive_resolution == Ratio(6, 8)  # all resolved but 4 and 9
    # Ratings 5, 4, 2, 3, 5, 5.
    assert (stats.satisfaction_mean, stats.satisfaction_count) == (4.0, 6)
    # Causes of 8 tickets: disk 4 (2, 3, 5, 9), password 2, firmware 1, network 1.
    assert stats.causes_total == 8
    assert stats.pareto == (
        CauseShare("disk", 4, 50.0, 50.0),
        CauseShare("password", 2, 25.0, 75.0),
        CauseShare("firmware", 1, 12.5, 87.5),  # ties go by name; stops past 80 %
    )


def test_json_form() -> None:
    document = compute_stats(TICKETS, region="VELIZY", start=MARCH[0], end=MARCH[1]).to_json()
    assert document["start"] == "2026-03-01T00:00:00.000Z"
    assert document["opened"] == 10
    assert document["mean_time_to_respond_seconds"] == 1600.0
    assert document["mean_time_to_resolve_seconds"] == 16500.0
    assert document["response_sla"] == {"count": 6, "total": 8, "rate": 0.75}
    assert document["resolution_sla"] == {"count": 4, "total": 6, "rate": 0.6667}
    assert document["first_contact_resolution"]["rate"] == 0.375
    assert document["satisfaction"] == {"mean": 4.0, "count": 6}
    assert [c["cause"] for c in document["pareto"]] == ["disk", "password", "firmware"]
    assert document["pareto"][2]["cumulative_percent"] == 87.5


def test_filters() -> None:
    assert compute_stats(TICKETS).opened == 13
    assert compute_stats(TICKETS, region="us").opened == 1
    assert compute_stats(TICKETS, start=MARCH[0]).opened == 12  # February left out
    assert compute_stats(TICKETS, end=MARCH[1]).opened == 12  # the end is exclusive
    with pytest.raises(InvalidArgument, match="needs a time zone"):
        compute_stats(TICKETS, start=datetime(2026, 3, 1))


def test_due_for_decides_the_sla_figures() -> None:
    assert compute_stats(TICKETS, due_for=lambda t: None).response_sla == Ratio(0, 0)
    generous = SlaDue(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
    stats = compute_stats(TICKETS, region="velizy", start=MARCH[0], due_for=lambda t: generous)
    assert stats.response_sla == Ratio(9, 9) and stats.resolution_sla == Ratio(7, 7)


def test_nothing_to_count() -> None:
    stats = compute_stats([])
    assert stats.opened == stats.resolved == 0
    assert stats.mean_time_to_respond is None and stats.mean_time_to_resolve is None
    assert stats.response_sla.rate is None and stats.satisfaction_mean is None
    assert stats.pareto == () and stats.to_json()["response_sla"]["rate"] is None


def test_first_resolution_and_fcr_details() -> None:
    reopened = TICKETS[3]
    assert first_resolution_at(reopened) == datetime(2026, 3, 5, 10, tzinfo=UTC)
    assert [is_first_contact_resolution(t) for t in TICKETS[:10]] == [
        True, True, False, False, False, False, False, False, False, True,
    ]  # fmt: skip


def test_pareto_cut() -> None:
    total, shares = pareto_causes(TICKETS[:10], share=0.5)
    assert total == 8 and [s.cause for s in shares] == ["disk"]  # 50 % reached at once
    _, everything = pareto_causes(TICKETS[:10], share=1.0)
    assert [s.cause for s in everything] == ["disk", "password", "firmware", "network"]
    with pytest.raises(InvalidArgument):
        pareto_causes(TICKETS, share=0)
