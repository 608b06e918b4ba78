"""Tickets written as wire bytes (``node.ticket_wire``) are the messages the protobuf API
builds from the same views, byte for byte, for tickets with every field set; and no
field of ``Ticket`` is left unwritten."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from node import ticket_wire
from node.convert import KIND_TO_PB, ROLE_TO_PB, STATE_TO_PB, TIER_TO_PB
from node.sla import BreachState, SlaDue, SlaStatus
from node.tickets import (
    CommentView,
    Kind,
    OccurrenceView,
    Role,
    State,
    StateChangeView,
    TicketView,
    Tier,
    iso,
    parse_iso,
)
from ops import protowire
from sundesk.v1 import desk_pb2 as pb

_WORDS = ["", "a", "VEL-000123", "Vélizy", "日本", "x" * 200, "line\nbreak", "é" * 70]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(parse_iso(text))
    return stamp


def _set_ts(field: Timestamp, text: str) -> None:
    if text:
        field.CopyFrom(_ts(text))


def _reference(
    t: TicketView, replication: pb.ReplicationStatus, sla: SlaStatus | None
) -> pb.Ticket:
    """The reply as the protobuf API builds it, field by field (the node's way before
    ``node.ticket_wire``)."""
    msg = pb.Ticket(
        code=t.code,
        title=t.title,
        description=t.description,
        kind=KIND_TO_PB[t.kind],
        state=STATE_TO_PB[t.state],
        priority=t.priority,
        customer=t.customer,
        asset=t.asset,
        tier=TIER_TO_PB[t.tier] if t.tier else pb.CONTRACT_TIER_UNSPECIFIED,
        home_region=t.home_region,
        queue=t.queue,
        assignee=t.assignee,
        second_engineer=t.second_engineer,
        escalation_level=t.escalation_level,
        version=t.version,
        created_by=t.created_by,
        origin_region=t.origin_region,
        cause=t.cause,
        satisfaction=t.satisfaction,
        reopen_count=t.reopen_count,
        digest=t.digest,
        source=t.source,
    )
    msg.labels.update(t.labels)
    for name in (
        "created_at",
        "updated_at",
        "first_response_at",
        "resolved_at",
        "response_due",
        "resolution_due",
        "customer_notified_at",
    ):
        _set_ts(getattr(msg, name), getattr(t, name))
    if t.occurrences:
        msg.occurrences = len(t.occurrences)
        _set_ts(msg.first_seen, t.first_seen)
        _set_ts(msg.last_seen, t.last_seen)
    for c in t.comments:
        comment = msg.comments.add(
            id=c.id, author=c.author, text=c.text, region=c.region, internal=c.internal
        )
        _set_ts(comment.at, c.at)
    for h in t.history:
        change = msg.history.add(
            from_state=STATE_TO_PB[h.from_state],
            to_state=STATE_TO_PB[h.to_state],
            by=h.by,
            role=ROLE_TO_PB[h.role],
            region=h.region,
            note=h.note,
        )
        _set_ts(change.at, h.at)
    msg.replication.last_change_id = t.last_change_id
    msg.replication.MergeFrom(replication)
    if sla is not None:
        msg.sla.response = sla.response
        msg.sla.resolution = sla.resolution
        msg.sla.response_left_seconds = sla.response_left.total_seconds()
        msg.sla.resolution_left_seconds = sla.resolution_left.total_seconds()
        msg.sla.paused = t.state == State.PENDING_CUSTOMER
        msg.sla.response_recorded = t.sla_recorded.get("response", "")
        msg.sla.resolution_recorded = t.sla_recorded.get("resolution", "")
    return msg


def _time(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return ""
    # Before 1970 too (negative seconds), and whole seconds (no nanos) now and then.
    instant = _EPOCH + timedelta(seconds=rng.uniform(-2e9, 4e9))
    if rng.random() < 0.2:
        instant = instant.replace(microsecond=0)
    return iso(instant)


def _view(rng: random.Random) -> TicketView:
    def word() -> str:
        return rng.choice(_WORDS)

    def number(top: int) -> int:
        return rng.choice([0, 1, 127, 128, 300, top])

    comments = tuple(
        CommentView(word(), word(), word(), _time(rng), word(), rng.random() < 0.5)
        for _ in range(rng.randint(0, 3))
    )
    history = tuple(
        StateChangeView(
            rng.choice(list(State)),
            rng.choice(list(State)),
            word(),
            rng.choice(list(Role)),
            _time(rng),
            word(),
            word(),
        )
        for _ in range(rng.randint(0, 4))
    )
    occurrences = tuple(
        OccurrenceView(word(), _time(rng) or iso(_EPOCH), word(), word(), word())
        for _ in range(rng.randint(0, 3))
    )
    return TicketView(
        code=word(),
        title=word(),
        description=word(),
        kind=rng.choice(list(Kind)),
        state=rng.choice(list(State)),
        priority=rng.randint(1, 4),
        customer=word(),
        asset=word(),
        tier=rng.choice([None, *Tier]),
        home_region=word(),
        queue=word(),
        assignee=word(),
        second_engineer=word(),
        escalation_level=rng.randint(1, 4),
        version=number(2**40),
        created_by=word(),
        origin_region=word(),
        created_at=_time(rng),
        updated_at=_time(rng),
        cause=word(),
        satisfaction=rng.randint(0, 5),
        first_response_at=_time(rng),
        resolved_at=_time(rng),
        response_due=_time(rng),
        resolution_due=_time(rng),
        source=word(),
        last_change_id=word(),
        digest=word(),
        comments=comments,
        history=history,
        labels={word(): word() for _ in range(rng.randint(0, 3))},
        sla_recorded=rng.choice([{}, {"response": "at_risk"}, {"resolution": "breached"}]),
        occurrences=occurrences,
        customer_notified_at=_time(rng),
    )


def _sla(rng: random.Random) -> SlaStatus | None:
    if rng.random() < 0.3:
        return None
    due = SlaDue(_EPOCH, _EPOCH)
    left = [timedelta(0), timedelta(seconds=90.5), timedelta(microseconds=-1), timedelta(-3)]
    states: list[BreachState] = ["ok", "at_risk", "breached"]
    return SlaStatus(
        due, rng.choice(states), rng.choice(states), rng.choice(left), rng.choice(left)
    )


def _replication(rng: random.Random) -> pb.ReplicationStatus:
    regions = ["velizy", "germany", "uk", "us", "japan"]
    rng.shuffle(regions)
    cut = rng.randint(0, 5)
    return pb.ReplicationStatus(
        applied_in=regions[:cut],
        missing_in=regions[cut:],
        version_vector={r: rng.choice([0, 1, 2**33]) for r in regions[: rng.randint(0, 5)]},
    )


def test_ticket_bytes_are_the_message_the_protobuf_api_builds() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        view, sla, status = _view(rng), _sla(rng), _replication(rng)
        expected = _reference(view, status, sla)
        wire = ticket_wire.ticket(view, status.SerializeToString(deterministic=True), sla)
        assert pb.Ticket.FromString(wire) == expected
        if len(view.labels) <= 1:
            # Byte for byte too: the same fields, in the same order, with the same presence.
            # (Map entries are in key order here; upb's own order is its encoder's affair.)
            assert wire == expected.SerializeToString(deterministic=True)
        assert ticket_wire.ticket_message(view, status.SerializeToString(), sla) == expected


def test_every_field_of_ticket_is_written() -> None:
    rng = random.Random(9)
    seen: set[str] = set()
    for _ in range(200):
        view = _view(rng)
        sla = _sla(rng)
        message = pb.Ticket.FromString(ticket_wire.ticket(view, b"", sla))
        seen.update(field.name for field, _ in message.ListFields())
    assert seen == {field.name for field in pb.Ticket.DESCRIPTOR.fields}
    sla_fields = {field.name for field in pb.SlaClock.DESCRIPTOR.fields}
    clock = pb.SlaClock.FromString(
        ticket_wire.sla_clock(
            SlaStatus(SlaDue(_EPOCH, _EPOCH), "at_risk", "breached", timedelta(1), timedelta(-1)),
            True,
            {"response": "at_risk", "resolution": "breached"},
        )
    )
    assert {field.name for field, _ in clock.ListFields()} == sla_fields


def test_a_page_of_tickets_is_a_list_response() -> None:
    rng = random.Random(3)
    views = [_view(rng) for _ in range(5)]
    page = ticket_wire.tickets_page([ticket_wire.ticket(v) for v in views], "next", 2**35)
    expected = pb.ListTicketsResponse(
        tickets=[_reference(v, pb.ReplicationStatus(), None) for v in views],
        next_page_token="next",
        total=2**35,
    )
    assert pb.ListTicketsResponse.FromString(page) == expected
    assert ticket_wire.tickets_page([], "", 0) == b""


def test_varints_match_protobuf() -> None:
    for value in (1, 127, 128, 16383, 16384, 2**31 - 1, 2**63 - 1, -1, -(2**31), -(2**63)):
        message = pb.Ticket(version=value)
        assert protowire.key(15, protowire.VARINT) + protowire.varint(value) == (
            message.SerializeToString()
        )
    assert protowire.length_delimited(1, b"VEL-1") == pb.Ticket(code="VEL-1").SerializeToString()
