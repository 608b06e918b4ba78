"""Views and their conversions: the fast paths give exactly what the plain ones give."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from federation.merge import ReplicatedTicket, apply_in_place
from federation.operations import TICKET_CREATE, TICKET_UPDATE, Operation
from node import rules, ticket_wire
from node.rules import NewTicket, TicketChange
from node.tickets import State, TicketView, Tier, iso, parse_iso


def _ticket() -> ReplicatedTicket:
    now = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    t = ReplicatedTicket("VEL-000001")
    fields = rules.create_fields(
        NewTicket(title="t", tier=Tier.GOLD, labels={"site": "paris"}), "velizy", now
    )
    apply_in_place(t, Operation("velizy", 1, 1 << 40, t.code, TICKET_CREATE, fields))
    view = TicketView.from_replicated(t)
    change = rules.update_fields(
        view, TicketChange("ana", state=State.IN_PROGRESS), "velizy", now + timedelta(seconds=5)
    )
    apply_in_place(t, Operation("velizy", 2, 2 << 40, t.code, TICKET_UPDATE, change))
    return t


def test_from_replicated_sets_every_field_as_the_constructor_would() -> None:
    view = TicketView.from_replicated(_ticket())
    names = {f.name for f in dataclasses.fields(TicketView)}
    assert set(vars(view)) == names
    assert view == TicketView(**{name: getattr(view, name) for name in names})
    assert (view.state, view.tier, view.assignee, len(view.history)) == (
        State.IN_PROGRESS,
        Tier.GOLD,
        "ana",
        1,
    )


def test_iso_writes_what_strftime_writes() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        instant = datetime.fromtimestamp(rng.uniform(0, 4e9), tz=UTC).astimezone(
            timezone(timedelta(hours=rng.randint(-12, 12)))
        )
        utc = instant.astimezone(UTC)
        expected = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
        assert iso(instant) == expected


def test_timestamps_match_from_datetime() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        text = iso(datetime.fromtimestamp(rng.uniform(-1e9, 4e9), tz=UTC))
        expected = Timestamp()
        expected.FromDatetime(parse_iso(text))
        assert Timestamp.FromString(ticket_wire.timestamp(text)) == expected
    msg = ticket_wire.ticket_message(TicketView.from_replicated(_ticket()))
    assert msg.created_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 4, 5, 6, 7, 891000, UTC)
    assert dict(msg.labels) == {"site": "paris"} and len(msg.history) == 1
