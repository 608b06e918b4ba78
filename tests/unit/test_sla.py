"""SLA clocks: due times across nights, weekends, DST and holidays; pauses; time left.

Expected instants are worked out by hand from the default federation (09:00-18:00 local,
Monday to Friday, national holidays); each row's comment shows the local arithmetic.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.calendars import Always24x7Calendar, BusinessCalendar, RegionCalendar
from federation.config import load_config
from node.contracts import Coverage, Level, PriorityTerms, TierPolicy, load_contracts
from node.errors import InvalidArgument
from node.sla import (
    AT_RISK,
    BREACHED,
    OK,
    SlaDue,
    add_counted_time,
    breach_state,
    counted_time,
    due_resolver,
    paused_intervals,
    pending_intervals,
    pending_since,
    sla_due,
    ticket_sla_status,
    time_left,
)
from node.tickets import Kind, Role, State, StateChangeView, TicketView, Tier, iso

CONFIG = load_config()
CAL = {r.name: RegionCalendar(r) for r in CONFIG.regions}
ALWAYS = Always24x7Calendar()
H = timedelta(hours=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def policy(response: timedelta, resolution: timedelta, coverage: Coverage) -> TierPolicy:
    terms = (PriorityTerms(coverage, response, resolution),) * 4
    return TierPolicy(
        tier=Tier.SILVER, label="Test", description="", scope=("hardware",), terms=terms,
        engineer_level=Level.JUNIOR, named_account_engineer=False,
        proactive_monitoring=False, second_engineer=False,
    )  # fmt: skip


# Response 4 business hours, resolution 18 (two business days).
BUSINESS = policy(4 * H, 18 * H, Coverage.BUSINESS)
ROUND_THE_CLOCK = policy(8 * H, 24 * H, Coverage.ALWAYS)

DUE_TABLE = [
    # (case, region, opened (UTC), response due (UTC), resolution due (UTC))
    # Mon 09:00 CET: 13:00 the same day; 18 h = Mon and Tue in full, due at Tue's close.
    ("same day", "velizy", "2026-01-12 08:00", "2026-01-12 12:00", "2026-01-13 17:00"),
    # Tue 16:00 CET: 2 h Tue + 2 h Wed → Wed 11:00; 2 + 9 + 7 → Thu 16:00.
    ("overnight", "velizy", "2026-01-13 15:00", "2026-01-14 10:00", "2026-01-15 15:00"),
    # Fri 17:00 CET: 1 h Fri + 3 h Mon → Mon 12:00; 1 + 9 + 8 → Tue 17:00.
    ("weekend", "velizy", "2026-01-16 16:00", "2026-01-19 11:00", "2026-01-20 16:00"),
    # Sat 11:00 CET, closed: the clock starts Monday 09:00.
    ("opened closed", "velizy", "2026-01-17 10:00", "2026-01-19 12:00", "2026-01-20 17:00"),
    # Fri 16:00 CET (UTC+1), clocks go forward Sunday: Mon 11:00 CEST (UTC+2).
    ("EU spring", "velizy", "2026-03-27 15:00", "2026-03-30 09:00", "2026-03-31 14:00"),
    ("EU spring UK", "uk", "2026-03-27 16:00", "2026-03-30 10:00", "2026-03-31 15:00"),
    # Fri 16:00 CEST (UTC+2), clocks go back Sunday: Mon 11:00 CET (UTC+1).
    ("EU autumn", "velizy", "2026-10-23 14:00", "2026-10-26 10:00", "2026-10-27 15:00"),
    ("EU autumn DE", "germany", "2026-10-23 14:00", "2026-10-26 10:00", "2026-10-27 15:00"),
    # Fri 16:00 EST (UTC-5), US clocks go forward Sunday 8 March: Mon 11:00 EDT (UTC-4).
    ("US spring", "us", "2026-03-06 21:00", "2026-03-09 15:00", "2026-03-10 20:00"),
    # Fri 16:00 EDT, back on Sunday 1 November: Mon 11:00 EST.
    ("US autumn", "us", "2026-10-30 20:00", "2026-11-02 16:00", "2026-11-03 21:00"),
    # Thu 30 April 16:00 CEST; Friday 1 May (Fête du Travail) closed: Mon 4 May 11:00.
    ("FR 1 May", "velizy", "2026-04-30 14:00", "2026-05-04 09:00", "2026-05-05 14:00"),
    # Wed 13 May 16:00 CEST; Thursday 14 May (Christi Himmelfahrt) closed: Fri 11:00.
    ("DE Ascension", "germany", "2026-05-13 14:00", "2026-05-15 09:00", "2026-05-18 14:00"),
    # Fri 1 May 16:00 BST; Monday 4 May (Early May bank holiday) closed: Tue 11:00.
    ("GB May Day", "uk", "2026-05-01 15:00", "2026-05-05 10:00", "2026-05-06 15:00"),
    # Wed 25 November 16:00 EST; Thursday (Thanksgiving) closed: Fri 27 11:00.
    ("US Thanksgiving", "us", "2026-11-25 21:00", "2026-11-27 16:00", "2026-11-30 21:00"),
    # Tue 10 February 16:00 JST; Wednesday 11 (建国記念の日) closed: Thu 11:00.
    ("JP Foundation Day", "japan", "2026-02-10 07:00", "2026-02-12 02:00", "2026-02-13 07:00"),
]


@pytest.mark.parametrize(
    ("region", "opened", "response", "resolution"),
    [row[1:] for row in DUE_TABLE],
    ids=[row[0] for row in DUE_TABLE],
)
def test_business_hours_due(region: str, opened: str, response: str, resolution: str) -> None:
    due = sla_due(BUSINESS, 3, CAL[region], utc(opened))
    assert due == SlaDue(utc(response), utc(resolution))


@pytest.mark.parametrize(
    ("opened", "response", "resolution"),
    [
        # Paris midnight on the spring night: 8 elapsed hours end at 09:00 CEST, 9 wall hours.
        ("2026-03-28 23:00", "2026-03-29 07:00", "2026-03-29 23:00"),
        # New York midnight on the autumn night: 8 elapsed hours end at 07:00 EST.
        ("2026-11-01 04:00", "2026-11-01 12:00", "2026-11-02 04:00"),
        # Weekends and holidays are ordinary hours round the clock.
        ("2026-05-01 10:00", "2026-05-01 18:00", "2026-05-02 10:00"),
    ],
)
def test_round_the_clock_counts_elapsed_time(opened: str, response: str, resolution: str) -> None:
    due = sla_due(ROUND_THE_CLOCK, 1, ALWAYS, utc(opened))
    assert due == SlaDue(utc(response), utc(resolution))


def test_shipped_gold_is_round_the_clock_for_priority_1_only() -> None:
    gold = load_contracts().tier("gold")
    velizy = CONFIG.region("velizy")
    friday_evening = utc("2026-01-16 20:00")  # 21:00 CET: Vélizy is closed
    p1 = sla_due(gold, 1, gold.calendar_for(1, velizy), friday_evening)
    assert p1 == SlaDue(utc("2026-01-16 21:00"), utc("2026-01-17 04:00"))
    p2 = sla_due(gold, 2, gold.calendar_for(2, velizy), friday_evening)
    assert p2.response_due == utc("2026-01-19 10:00")  # Monday 11:00 CET


PAUSE_TABLE = [
    # (case, opened, pauses, response due); Vélizy, 4 business hours, winter (CET = UTC+1).
    ("none", "2026-01-12 08:00", [], "2026-01-12 12:00"),
    # 10:00-11:30 local is 1.5 open hours: 13:00 → 14:30 local.
    ("inside open hours", "2026-01-12 08:00", [("09:00", "10:30")], "2026-01-12 13:30"),
    # Mon 18:00 to Tue 09:00 local covers no open time: unchanged (Tue 11:00 local).
    ("over the night", "2026-01-12 15:00", [("17:00", "1 08:00")], "2026-01-13 10:00"),
    # Mon 17:00 to Tue 10:00 local covers 1 h + 1 h: Tue 11:00 → 13:00 local.
    ("across the close", "2026-01-12 15:00", [("16:00", "1 09:00")], "2026-01-13 12:00"),
    # Fri 18:00 to Mon 09:00 local: the weekend was not counted anyway.
    ("over a weekend", "2026-01-16 16:00", [("17:00", "3 08:00")], "2026-01-19 11:00"),
    # Only the part after the opening counts: 1 h of it.
    ("before the opening", "2026-01-12 08:00", [("-1 10:00", "09:00")], "2026-01-12 13:00"),
    (
        "overlapping pauses",
        "2026-01-12 08:00",
        [("09:00", "10:00"), ("09:30", "10:30")],
        "2026-01-12 13:30",
    ),
    ("after the due", "2026-01-12 08:00", [("12:00", "15:00")], "2026-01-12 12:00"),
    # Counted 09:00-12:00 (3 h), paused until 15:00, 1 more hour: 16:00 local.
    ("straddling the due", "2026-01-12 08:00", [("11:00", "14:00")], "2026-01-12 15:00"),
]


def _at(opened: datetime, spec: str) -> datetime:
    """ "HH:MM" on the opening day (UTC), or "D HH:MM" D days later."""
    days, _, clock = spec.rpartition(" ")
    hour, minute = map(int, clock.split(":"))
    day = opened.replace(hour=0, minute=0) + timedelta(days=int(days or 0))
    return day + timedelta(hours=hour, minutes=minute)


@pytest.mark.parametrize(
    ("opened", "pauses", "response"),
    [row[1:] for row in PAUSE_TABLE],
    ids=[row[0] for row in PAUSE_TABLE],
)
def test_pauses_move_the_due_by_the_counted_time_they_cover(
    opened: str, pauses: list[tuple[str, str]], response: str
) -> None:
    start = utc(opened)
    intervals = [(_at(start, a), _at(start, b)) for a, b in pauses]
    due = sla_due(BUSINESS, 2, CAL["velizy"], start, intervals)
    assert due.response_due == utc(response)


def test_a_pause_moves_the_resolution_too() -> None:
    due = sla_due(BUSINESS, 2, CAL["velizy"], utc("2026-01-12 08:00"),
                  [(utc("2026-01-12 09:00"), utc("2026-01-12 10:30"))])  # fmt: skip
    assert due.resolution_due == utc("2026-01-14 09:30")  # Tue 18:00 + 1.5 h: Wed 10:30


def test_round_the_clock_pause() -> None:
    due = sla_due(ROUND_THE_CLOCK, 1, ALWAYS, utc("2026-01-12 10:00"),
                  [(utc("2026-01-12 12:00"), utc("2026-01-12 14:00"))])  # fmt: skip
    assert due == SlaDue(utc("2026-01-12 20:00"), utc("2026-01-13 12:00"))


def test_bad_pauses_and_instants() -> None:
    start = utc("2026-01-12 08:00")
    with pytest.raises(InvalidArgument, match=r"pause 0 ends .* before it starts"):
        sla_due(BUSINESS, 1, ALWAYS, start, [(start, start - H)])
    with pytest.raises(InvalidArgument, match="needs a time zone"):
        sla_due(BUSINESS, 1, ALWAYS, datetime(2026, 1, 12, 8))
    with pytest.raises(InvalidArgument, match="negative"):
        add_counted_time(ALWAYS, start, -H)
    assert add_counted_time(CAL["velizy"], utc("2026-01-17 10:00"), timedelta()) == utc(
        "2026-01-17 10:00"
    )


# ----- time left and breach states --------------------------------------------------------

# Vélizy, opened Mon 12 January 09:00 CET, 4 h target: due 13:00 CET (12:00Z).
DUE = utc("2026-01-12 12:00")


@pytest.mark.parametrize(
    ("now", "since", "left"),
    [
        ("2026-01-12 09:00", None, 3 * H),
        ("2026-01-11 20:00", None, 4 * H),  # Sunday night: all four hours are ahead
        ("2026-01-12 12:00", None, timedelta()),
        ("2026-01-12 14:00", None, -2 * H),
        ("2026-01-12 19:00", None, -5 * H),  # overdue 5 open hours, whatever the night
        ("2026-01-13 09:00", None, -6 * H),
        ("2026-01-12 15:00", "2026-01-12 09:00", 3 * H),  # paused at 10:00 CET: frozen
        ("2026-01-12 15:00", "2026-01-12 13:00", -H),  # paused after the due: frozen late
        ("2026-01-12 09:00", "2026-01-12 10:00", 3 * H),  # a pause "in the future": ignored
    ],
)
def test_time_left(now: str, since: str | None, left: timedelta) -> None:
    paused = utc(since) if since else None
    assert time_left(DUE, utc(now), CAL["velizy"], paused) == left


@pytest.mark.parametrize(
    ("now", "done", "since", "fraction", "state"),
    [
        ("2026-01-12 11:00", None, None, 0.2, OK),  # 1 h of 4 left: 25 %
        ("2026-01-12 11:15", None, None, 0.2, AT_RISK),  # 45 min: under 20 %
        ("2026-01-12 11:00", None, None, 0.5, AT_RISK),  # the threshold is a parameter
        ("2026-01-12 12:00", None, None, 0.2, AT_RISK),  # due now, not past
        ("2026-01-12 12:01", None, None, 0.2, BREACHED),
        ("2026-01-12 20:00", None, None, 0.2, BREACHED),  # past due at night: breached
        ("2026-01-12 20:00", None, "2026-01-12 09:00", 0.2, OK),  # paused with 3 h left
        ("2026-01-12 20:00", None, "2026-01-12 11:30", 0.2, AT_RISK),
        ("2026-01-12 20:00", "2026-01-12 11:59", None, 0.2, OK),  # done in time
        ("2026-01-12 20:00", "2026-01-12 12:00", None, 0.2, OK),  # done at the due
        ("2026-01-12 11:00", "2026-01-12 12:30", None, 0.2, BREACHED),  # done late
    ],
)
def test_breach_state(
    now: str, done: str | None, since: str | None, fraction: float, state: str
) -> None:
    result = breach_state(
        DUE, 4 * H, utc(now), CAL["velizy"],
        done_at=utc(done) if done else None,
        pending_open_since=utc(since) if since else None,
        at_risk_fraction=fraction,
    )  # fmt: skip
    assert result == state


def test_breach_state_refuses_a_silly_fraction() -> None:
    with pytest.raises(InvalidArgument, match="fraction"):
        breach_state(DUE, H, DUE, ALWAYS, at_risk_fraction=1.5)


# ----- from a ticket's history ------------------------------------------------------------


def change(to: State, at: str, by: str = "bob", role: Role = Role.AGENT) -> StateChangeView:
    return StateChangeView(State.NEW, to, by, role, iso(utc(at)), "velizy", "")


HISTORY = (
    change(State.ASSIGNED, "2026-01-12 08:10"),
    change(State.IN_PROGRESS, "2026-01-12 08:20"),
    change(State.PENDING_CUSTOMER, "2026-01-12 09:00"),
    change(State.IN_PROGRESS, "2026-01-12 10:00", "acme", Role.CUSTOMER),
    change(State.PENDING_CUSTOMER, "2026-01-12 11:00"),
    change(State.RESOLVED, "2026-01-12 12:00"),
    change(State.CLOSED, "2026-01-12 13:00", "auto", Role.SYSTEM),
    change(State.IN_PROGRESS, "2026-01-12 14:00", "acme", Role.CUSTOMER),
    change(State.PENDING_CUSTOMER, "2026-01-12 15:00"),
)


def test_pending_intervals() -> None:
    assert pending_intervals(HISTORY) == [
        (utc("2026-01-12 09:00"), utc("2026-01-12 10:00")),
        (utc("2026-01-12 11:00"), utc("2026-01-12 12:00")),
    ]
    assert pending_intervals(HISTORY, until=utc("2026-01-12 16:00"))[-1] == (
        utc("2026-01-12 15:00"),
        utc("2026-01-12 16:00"),
    )
    assert pending_since(HISTORY) == utc("2026-01-12 15:00")
    assert pending_since(HISTORY[:-1]) is None
    assert pending_intervals(()) == [] and pending_since(()) is None


def test_paused_intervals_add_the_time_spent_resolved_before_a_reopen() -> None:
    assert paused_intervals(HISTORY) == [
        (utc("2026-01-12 09:00"), utc("2026-01-12 10:00")),
        (utc("2026-01-12 11:00"), utc("2026-01-12 12:00")),
        (utc("2026-01-12 12:00"), utc("2026-01-12 13:00")),  # resolved
        (utc("2026-01-12 13:00"), utc("2026-01-12 14:00")),  # closed, then reopened
    ]
    # Resolved and closed for good: that is where the clock ends, not a pause.
    final = HISTORY[:7]
    assert paused_intervals(final) == pending_intervals(final)


def ticket(
    history: tuple[StateChangeView, ...],
    state: State,
    *,
    tier: Tier | None = Tier.SILVER,
    priority: int = 2,
    responded: str = "",
    resolved: str = "",
) -> TicketView:
    return TicketView(
        code="VEL-000001", title="t", description="", kind=Kind.INCIDENT, state=state,
        priority=priority, customer="acme", asset="", tier=tier, home_region="velizy",
        queue="velizy", assignee="bob", second_engineer="", escalation_level=1, version=1,
        created_by="bob", origin_region="velizy", created_at=iso(utc("2026-01-12 08:00")),
        updated_at="", cause="", satisfaction=0,
        first_response_at=iso(utc(responded)) if responded else "",
        resolved_at=iso(utc(resolved)) if resolved else "", response_due="",
        resolution_due="", source="agent", last_change_id="", digest="", history=history,
    )  # fmt: skip


def test_ticket_status_freezes_while_pending_and_resumes_after_a_reopen() -> None:
    cal = CAL["velizy"]
    pending_now = ticket(HISTORY, State.PENDING_CUSTOMER, responded="2026-01-12 08:10")
    status = ticket_sla_status(pending_now, BUSINESS, cal, utc("2026-01-20 12:00"))
    # Counted before 15:00Z: 08:00-09:00, 10:00-11:00, 14:00-15:00 = 3 h of 18 (open
    # 08:00-17:00Z). 15 h left, frozen, even a week later.
    assert status.resolution_left == 15 * H and status.resolution == OK
    assert status.response == OK and status.response_left == 4 * H - 10 * timedelta(minutes=1)
    # Paused 4 h of open time: Tue 17:00Z + 4 h → Wed 12:00Z.
    assert status.due.resolution_due == utc("2026-01-14 12:00")


def test_ticket_status_resolved_and_breached() -> None:
    cal = CAL["velizy"]
    history = (
        change(State.IN_PROGRESS, "2026-01-12 13:00"),
        change(State.RESOLVED, "2026-01-15 09:00"),
    )
    done = ticket(
        history, State.RESOLVED, responded="2026-01-12 13:00", resolved="2026-01-15 09:00"
    )
    status = ticket_sla_status(done, BUSINESS, cal, utc("2026-02-01 00:00"))
    assert (status.response, status.resolution) == (BREACHED, BREACHED)  # due 12:00, Tue 17:00
    assert status.response_left == -H
    assert status.to_json()["response"] == BREACHED
    running = ticket(history[:1], State.IN_PROGRESS, responded="2026-01-12 13:00")
    # Due Tue 17:00Z; 20 % of 18 h is 3.6 h: 4 h left at 13:00 is fine, 3 h at 14:00 is not.
    assert ticket_sla_status(running, BUSINESS, cal, utc("2026-01-13 13:00")).resolution == OK
    assert ticket_sla_status(running, BUSINESS, cal, utc("2026-01-13 14:00")).resolution == AT_RISK


def test_due_resolver_uses_tier_priority_and_home_region() -> None:
    due_for = due_resolver(load_contracts(), CONFIG)
    assert due_for(ticket((), State.NEW, tier=None)) is None
    gold_p1 = due_for(ticket((), State.NEW, tier=Tier.GOLD, priority=1))
    assert gold_p1 == SlaDue(utc("2026-01-12 09:00"), utc("2026-01-12 16:00"))
    bronze_p1 = due_for(ticket((), State.NEW, tier=Tier.BRONZE, priority=1))
    assert bronze_p1 is not None and bronze_p1.response_due == utc("2026-01-12 12:00")


# ----- properties -------------------------------------------------------------------------

REGIONS = st.sampled_from(sorted(CAL))
OPENED = st.integers(0, 365 * 24 * 4).map(
    lambda quarter: utc("2026-01-01 00:00") + timedelta(minutes=15 * quarter)
)
TARGETS = st.integers(1, 40 * 4).map(lambda quarters: timedelta(minutes=15 * quarters))
PAUSES = st.lists(
    st.tuples(st.integers(-48 * 4, 20 * 24 * 4), st.integers(0, 3 * 24 * 4)), max_size=3
)


def _pauses(opened: datetime, specs: list[tuple[int, int]]) -> list[tuple[datetime, datetime]]:
    quarter = timedelta(minutes=15)
    return [(opened + offset * quarter, opened + (offset + n) * quarter) for offset, n in specs]


@settings(max_examples=150, deadline=None)
@given(region=REGIONS, opened=OPENED, target=TARGETS, specs=PAUSES)
def test_a_business_due_is_never_in_closed_hours(
    region: str, opened: datetime, target: timedelta, specs: list[tuple[int, int]]
) -> None:
    cal: BusinessCalendar = CAL[region]
    terms = policy(target, target * 2, Coverage.BUSINESS)
    due = sla_due(terms, 1, cal, opened, _pauses(opened, specs))
    for at in (due.response_due, due.resolution_due):
        # Open, or exactly at a closing instant: the last open microsecond is just before.
        assert cal.is_open(at) or cal.is_open(at - timedelta(microseconds=1))
    assert counted_time(cal, opened, due.response_due, _pauses(opened, specs)) == target


@settings(max_examples=150, deadline=None)
@given(
    region=st.sampled_from([*sorted(CAL), "24x7"]),
    opened=OPENED,
    target=TARGETS,
    specs=PAUSES,
    extra=st.tuples(st.integers(-48 * 4, 20 * 24 * 4), st.integers(0, 3 * 24 * 4)),
    grow=st.integers(0, 24 * 4),
)
def test_more_pause_never_gives_an_earlier_due(
    region: str,
    opened: datetime,
    target: timedelta,
    specs: list[tuple[int, int]],
    extra: tuple[int, int],
    grow: int,
) -> None:
    cal: BusinessCalendar = ALWAYS if region == "24x7" else CAL[region]
    base = add_counted_time(cal, opened, target, _pauses(opened, specs))
    added = add_counted_time(cal, opened, target, _pauses(opened, [*specs, extra]))
    longer = [(offset, n + grow) for offset, n in specs]
    grown = add_counted_time(cal, opened, target, _pauses(opened, longer))
    assert added >= base and grown >= base


@settings(max_examples=100, deadline=None)
@given(opened=OPENED, response=TARGETS, more=TARGETS)
def test_round_the_clock_is_plain_addition(
    opened: datetime, response: timedelta, more: timedelta
) -> None:
    terms = policy(response, response + more, Coverage.ALWAYS)
    assert sla_due(terms, 4, ALWAYS, opened) == SlaDue(opened + response, opened + response + more)
