"""Call home, pure parts: report checks, priorities, derived codes, occurrence merge,
silence, the coarse heartbeat book and the machine-first statistic."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from federation.merge import ReplicatedTicket, apply_in_place, merge_all
from federation.operations import TICKET_CREATE, TICKET_UPDATE, Operation
from node.contracts import Asset, Customer
from node.errors import InvalidArgument
from node.heartbeats import HeartbeatBook, RecordBuild
from node.stats import machine_first_share
from node.store import Change
from node.telemetry import (
    SILENT_CODE,
    Severity,
    alarm_priority,
    alarm_ticket_fields,
    back_note_fields,
    checked_alarm,
    checked_heartbeat,
    is_silent,
    occurrence_fields,
    ticket_code,
)
from node.tickets import Kind, TicketView, Tier, iso

T0 = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
ASSET = Asset("lyon-mri", "clinic-lyon", "MRI-7", "SN1", monitored=True, heartbeat_seconds=60)
CUSTOMER = Customer("clinic-lyon", "Clinic", "velizy", Tier.PLATINUM)


@pytest.mark.parametrize(
    ("code", "severity", "message", "fix"),
    [
        ("", "major", "", "alarm code is empty"),
        ("E" * 33, "major", "", "at most 32"),
        ("E 1", "major", "", "may hold only letters"),
        ("_SILENT", "major", "", "may hold only letters"),  # reserved for silence
        ("E1", "fatal", "", "use one of: critical, major, minor, warning"),
        ("E1", "major", "x" * 2001, "at most 2000"),
    ],
)
def test_malformed_alarms_name_what_to_fix(
    code: str, severity: str, message: str, fix: str
) -> None:
    with pytest.raises(InvalidArgument, match=fix):
        checked_alarm("a1", code, severity, message)


def test_alarm_codes_are_case_insensitive() -> None:
    assert checked_alarm("a1", " e-42 ", "MAJOR", "m").code == "E-42"
    assert checked_alarm("a1", "e-42", "major", "").severity is Severity.MAJOR


def test_heartbeat_diagnostics_are_bounded() -> None:
    with pytest.raises(InvalidArgument, match="at most 64"):
        checked_heartbeat("a1", {f"k{i}": "v" for i in range(65)})
    with pytest.raises(InvalidArgument, match="diagnostic temp"):
        checked_heartbeat("a1", {"temp": "x" * 201})
    assert checked_heartbeat("a1", {"temp": "41"}).diagnostics == {"temp": "41"}


def test_priority_comes_from_severity_and_tier() -> None:
    assert alarm_priority(Severity.CRITICAL, Tier.BRONZE) == 1
    assert alarm_priority(Severity.WARNING, Tier.BRONZE) == 4
    assert alarm_priority(Severity.WARNING, None) == 4
    assert alarm_priority(Severity.MINOR, Tier.GOLD) == 2
    assert alarm_priority(Severity.CRITICAL, Tier.PLATINUM) == 1


def test_codes_are_derived_uppercase_and_distinct() -> None:
    code = ticket_code("lyon-mri", "E-42", 1)
    assert code == ticket_code("lyon-mri", "E-42", 1)
    assert code.startswith("MCH-") and code == code.upper() and len(code) <= 32
    others = {
        ticket_code("lyon-mri", "E-42", 2),
        ticket_code("lyon-mri", "E-43", 1),
        ticket_code("lyon", "MRI-E-42", 1),
        ticket_code("lyon-mri", SILENT_CODE, 1),
    }
    assert code not in others and len(others) == 4


def _alarm_ops(seed: int) -> list[Operation]:
    """Two regions each create the ticket at once, then five repeats each."""
    alarm = checked_alarm(ASSET.id, "E-42", "major", "helium low")
    code = ticket_code(ASSET.id, alarm.code, 1)
    ops = []
    for i, region in enumerate(("velizy", "japan")):
        now = T0 + timedelta(milliseconds=i)
        fields = alarm_ticket_fields(alarm, ASSET, CUSTOMER, 1, True, region, now)
        ops.append(Operation(region, 1, (100 + i) << 16, code, TICKET_CREATE, fields))
        for seq in range(2, 6):
            at = now + timedelta(seconds=seq)
            ops.append(
                Operation(
                    region,
                    seq,
                    (200 + seq * 2 + i) << 16,
                    code,
                    TICKET_UPDATE,
                    occurrence_fields(alarm, region, at),
                )
            )
    random.Random(seed).shuffle(ops)
    return ops


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_creations_and_repeats_merge_into_one_ticket(seed: int) -> None:
    ops = _alarm_ops(seed)
    (ticket,) = merge_all(ops).values()
    (reference,) = merge_all(sorted(ops, key=lambda o: o.order_key)).values()
    assert ticket.digest() == reference.digest()
    again = ReplicatedTicket.from_json(ticket.to_json())
    assert not apply_in_place(again, ops[0])  # a duplicate counts once
    view = TicketView.from_replicated(ticket)
    assert len(view.occurrences) == 10
    assert view.first_seen == iso(T0) and view.last_seen > view.first_seen
    assert view.kind is Kind.INCIDENT and view.source == "machine" and view.priority == 1
    assert view.customer_notified_at  # platinum: proactive
    assert view.to_json()["occurrences"] == 10


def test_tickets_without_occurrences_keep_their_encoding() -> None:
    t = ReplicatedTicket("VEL-000001")
    assert "occurrences" not in t.to_json()


def test_silence_is_missed_intervals_of_a_monitored_asset() -> None:
    last = T0
    assert not is_silent(ASSET, last, T0 + timedelta(seconds=180), 3)
    assert is_silent(ASSET, last, T0 + timedelta(seconds=181), 3)
    slack = timedelta(seconds=60)  # a coarse last-seen may be one interval old
    assert not is_silent(ASSET, last, T0 + timedelta(seconds=240), 3, slack)
    assert is_silent(ASSET, last, T0 + timedelta(seconds=241), 3, slack)
    unmonitored = Asset("x", "c", "m", "s")
    assert not is_silent(unmonitored, last, T0 + timedelta(days=30), 3)


def test_the_back_note_is_a_visible_comment_with_the_epoch() -> None:
    fields = back_note_fields(ASSET, T0, 7, "velizy", T0 + timedelta(seconds=5))
    assert fields["heartbeat_back_at"] == iso(T0) and fields["silence_epoch"] == 7
    assert "is back" in fields["comment"]["text"] and not fields["comment"]["internal"]


class FakeRecords:
    """Records in memory; like the node's store, each commit is told to the listeners."""

    def __init__(self) -> None:
        self.records: dict[str, ReplicatedTicket] = {}
        self.writes = 0
        self.reads = 0
        self.listeners: list[Callable[[list[Change]], None]] = []

    def get_record(self, key: str) -> ReplicatedTicket | None:
        self.reads += 1
        return self.records.get(key)

    def add_listener(self, listener: Callable[[list[Change]], None]) -> None:
        self.listeners.append(listener)

    async def write_record(self, key: str, build: RecordBuild) -> ReplicatedTicket | None:
        kind, fields = build(self.records.get(key), T0)
        self.writes += 1
        rec = self.records.setdefault(key, ReplicatedTicket(key))
        op = Operation("velizy", self.writes, self.writes << 16, key, kind, fields)
        apply_in_place(rec, op)
        for listener in self.listeners:
            listener([Change(op, None, local=True)])
        return rec


def test_the_book_replicates_last_seen_coarsely_and_readers_see_it() -> None:
    store = FakeRecords()
    here = HeartbeatBook(store, "velizy", ["velizy", "japan"])
    for i in range(10):  # every 10 s for an asset that beats every 60 s
        here.record(ASSET.id, 60, T0 + timedelta(seconds=10 * i))
    assert here.pending == 1  # only the first: the rest moved less than one interval
    asyncio.run(here.flush())
    here.record(ASSET.id, 60, T0 + timedelta(seconds=120))
    asyncio.run(here.flush())
    assert store.writes == 2  # two operations for eleven heartbeats
    elsewhere = HeartbeatBook(store, "japan", ["velizy", "japan"])
    seen = elsewhere.last_seen_all(T0 + timedelta(seconds=150), timedelta(seconds=180))
    assert seen == {ASSET.id: T0 + timedelta(seconds=120)}
    assert here.last_seen_all(T0, timedelta(seconds=1))[ASSET.id] == T0 + timedelta(seconds=120)


def test_after_its_first_read_a_book_follows_commits_without_reading_records() -> None:
    store = FakeRecords()
    regions = ["velizy", "japan"]
    here, owner = HeartbeatBook(store, "velizy", regions), HeartbeatBook(store, "japan", regions)
    here.record(ASSET.id, 60, T0)
    asyncio.run(here.flush())
    later = T0 + timedelta(seconds=30)
    assert owner.last_seen_all(later, timedelta(seconds=180)) == {ASSET.id: T0}
    reads = store.reads
    here.record(ASSET.id, 60, T0 + timedelta(seconds=90))
    here.record("other", 60, T0 + timedelta(seconds=91))
    asyncio.run(here.flush())
    seen = owner.last_seen_all(T0 + timedelta(seconds=100), timedelta(seconds=180))
    assert seen == {ASSET.id: T0 + timedelta(seconds=90), "other": T0 + timedelta(seconds=91)}
    assert store.reads == reads  # heard through the commit, not by re-reading the record


def _view(code: str, source: str, asset: str, at: datetime, kind: str = "incident") -> TicketView:
    t = ReplicatedTicket(code, created=True)
    values: dict[str, Any] = {"source": source, "asset": asset, "created_at": iso(at), "kind": kind}
    t.values.update(values)
    return TicketView.from_replicated(t)


def test_machine_first_counts_incidents_machines_opened_before_the_customer_called() -> None:
    tickets = [
        _view("MCH-A-1", "machine", "a", T0),  # nobody called: first
        _view("VEL-1", "customer", "b", T0),  # the customer called about b ...
        _view("MCH-B-1", "machine", "b", T0 + timedelta(hours=1)),  # ... before the machine
        _view("MCH-B-2", "machine", "b", T0 + timedelta(days=3)),  # days later: first again
        _view("VEL-2", "agent", "", T0, kind="service_request"),  # not an incident
    ]
    share = machine_first_share(tickets)
    assert (share.count, share.total) == (2, 4)


def test_ticket_show_prints_occurrences_and_the_notification() -> None:
    from node.ticket_wire import ticket_message
    from ops.ticket_cli import _show

    ops = _alarm_ops(0)
    (ticket,) = merge_all(ops).values()
    text = _show(ticket_message(TicketView.from_replicated(ticket)))
    assert "alarm occurrences 10  first seen 2026-03-04T09:30:00.000Z" in text
    assert "customer notified" in text
