"""Handoff records: what changes hands when a queue's owner changes, and who took it.

A record is written once per owner epoch (its id is ``HO-<queue>-<epoch>``), by the node
whose transaction created that epoch: the outgoing owner after a planned handoff, the
new owner after a failover. It travels like a ticket: replicated operations of kind
``handoff.create``, ``handoff.ack`` and ``handoff.escalate`` on the key ``HO-<queue>-<epoch>``,
merged field by field, last writer wins. The fields of those operations come from the
pure functions below, so every store writes the same JSON. The outgoing engineer's note
is one more replicated register per queue (``handoff.note`` on ``NOTE-<queue>``).

``handoff_fields`` leaves the acknowledgement and escalation out on purpose: they only
ever arrive through their own operations, so a late or duplicated create can never
erase an acknowledgement.

``HandoffLog`` is what the coordinator needs from a node's store; ``MemoryHandoffLog``
is the in-process version for tests (one instance shared by several coordinators plays
a perfectly replicated store).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from node.clock import Clock
from node.errors import FailedPrecondition, InvalidArgument, NotFound
from node.tickets import TicketView, iso

HANDOFF_CREATE = "handoff.create"
HANDOFF_ACK = "handoff.ack"
HANDOFF_ESCALATE = "handoff.escalate"
HANDOFF_NOTE = "handoff.note"
HANDOFF_OP_KINDS = frozenset({HANDOFF_CREATE, HANDOFF_ACK, HANDOFF_ESCALATE, HANDOFF_NOTE})

PLANNED, FAILOVER, ON_CALL = "planned", "failover", "on-call"
HANDOFF_KINDS = frozenset({PLANNED, FAILOVER, ON_CALL})

_CREATE_KEYS = (
    "id",
    "queue",
    "from_region",
    "to_region",
    "to_engineer",
    "kind",
    "at",
    "epoch",
    "open_tickets",
    "note",
)


def record_id(queue: str, epoch: int) -> str:
    """The record's id, which is also the key of its replicated operations."""
    return f"HO-{queue}-{epoch}"


def note_key(queue: str) -> str:
    return f"NOTE-{queue}"


@dataclass(frozen=True)
class HandoffRecord:
    """One change of a queue's owner.

    ``from_region`` is "" when nobody was known to hold the queue (first start).
    ``to_region`` is the node that holds the owner key from ``epoch`` on; for an
    after-hours handoff ``to_engineer`` is the on-call primary the node hands it to.
    ``at`` is the simulated instant (``node.tickets.iso``: sortable text).
    """

    id: str
    queue: str
    from_region: str
    to_region: str
    to_engineer: str
    kind: str
    at: str
    epoch: int
    open_tickets: tuple[dict[str, Any], ...] = ()
    note: str = ""
    acked_by: str = ""
    acked_at: str = ""
    escalated_to: str = ""
    escalated_at: str = ""

    def __post_init__(self) -> None:
        if self.kind not in HANDOFF_KINDS:
            raise InvalidArgument(
                f"handoff kind {self.kind!r} is not one of {sorted(HANDOFF_KINDS)}"
            )
        if not self.queue or self.epoch <= 0:
            raise InvalidArgument(f"handoff {self.id!r} needs a queue and a positive epoch")
        if self.id != record_id(self.queue, self.epoch):
            raise InvalidArgument(
                f"handoff id {self.id!r} must be {record_id(self.queue, self.epoch)!r}"
            )

    @property
    def acked(self) -> bool:
        return bool(self.acked_by)

    @property
    def escalated(self) -> bool:
        return bool(self.escalated_to)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "from_region": self.from_region,
            "to_region": self.to_region,
            "to_engineer": self.to_engineer,
            "kind": self.kind,
            "at": self.at,
            "epoch": self.epoch,
            "open_tickets": [dict(t) for t in self.open_tickets],
            "note": self.note,
            "acked_by": self.acked_by,
            "acked_at": self.acked_at,
            "escalated_to": self.escalated_to,
            "escalated_at": self.escalated_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HandoffRecord:
        """From ``to_json`` output or from the merged fields of the record's operations
        (missing acknowledgement and escalation fields read as empty)."""
        try:
            return cls(
                id=str(data["id"]),
                queue=str(data["queue"]),
                from_region=str(data.get("from_region", "")),
                to_region=str(data["to_region"]),
                to_engineer=str(data.get("to_engineer", "")),
                kind=str(data["kind"]),
                at=str(data["at"]),
                epoch=int(data["epoch"]),
                open_tickets=tuple(dict(t) for t in data.get("open_tickets", ())),
                note=str(data.get("note", "")),
                acked_by=str(data.get("acked_by", "")),
                acked_at=str(data.get("acked_at", "")),
                escalated_to=str(data.get("escalated_to", "")),
                escalated_at=str(data.get("escalated_at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"not a handoff record: {exc!r}") from exc


# -- fields of the replicated operations ------------------------------------------------


def handoff_fields(record: HandoffRecord) -> dict[str, Any]:
    """``handoff.create``: the record without acknowledgement or escalation."""
    data = record.to_json()
    return {key: data[key] for key in _CREATE_KEYS}


def ack_fields(by: str, at: str) -> dict[str, Any]:
    """``handoff.ack``."""
    if not by.strip():
        raise InvalidArgument("an acknowledgement needs the engineer's name")
    return {"acked_by": by.strip(), "acked_at": at}


def escalate_fields(to: str, at: str, *, epoch: int | None = None) -> dict[str, Any]:
    """``handoff.escalate``; ``epoch`` is the fencing epoch of the owner that escalated
    (an owner-only action: a store may check it against its ``EpochFence``)."""
    if not to.strip():
        raise InvalidArgument("an escalation needs the secondary engineer's name")
    fields: dict[str, Any] = {"escalated_to": to.strip(), "escalated_at": at}
    if epoch is not None:
        fields["escalated_epoch"] = epoch
    return fields


def note_fields(queue: str, text: str, by: str, at: str) -> dict[str, Any]:
    """``handoff.note`` on ``NOTE-<queue>``: the outgoing engineer's note (a register)."""
    return {"queue": queue, "note": text, "note_by": by, "note_at": at}


# -- open tickets, soonest due first ---------------------------------------------------


def due_of(ticket: TicketView) -> str:
    """The next deadline of an open ticket: the response target until it is answered,
    then the resolution target; "" when it has none."""
    pending = [ticket.resolution_due]
    if not ticket.first_response_at:
        pending.append(ticket.response_due)
    dues = [d for d in pending if d]
    return min(dues) if dues else ""


def open_ticket_summary(tickets: Iterable[TicketView]) -> tuple[dict[str, Any], ...]:
    """What a handoff lists of each open ticket, soonest due first, then by priority
    (1 is the most urgent), then by code; tickets without a deadline come last."""
    rows = [
        {"code": t.code, "priority": t.priority, "state": t.state.value, "due": due_of(t)}
        for t in tickets
        if t.is_open
    ]
    rows.sort(key=lambda r: (r["due"] == "", r["due"], r["priority"], r["code"]))
    return tuple(rows)


# -- the store's role ------------------------------------------------------------------


class HandoffLog(Protocol):
    """Handoff records and notes as the node's store keeps them (replicated, LWW)."""

    async def record(self, rec: HandoffRecord) -> HandoffRecord:
        """Durably write ``handoff.create``. Idempotent on ``rec.id``: when the record
        exists already, the stored one is returned unchanged."""
        ...

    async def acknowledge(self, id: str, by: str) -> HandoffRecord:
        """``handoff.ack`` at the store clock's instant. ``NotFound`` for an unknown id,
        ``FailedPrecondition`` when already acknowledged."""
        ...

    async def escalate(self, id: str, to: str, *, epoch: int | None = None) -> HandoffRecord:
        """``handoff.escalate``. ``NotFound``; ``FailedPrecondition`` when acknowledged or
        escalated already (what makes escalation happen once per record)."""
        ...

    def list(self, queue: str | None = None) -> builtins.list[HandoffRecord]:
        """Records, oldest first (by ``at``, then epoch)."""
        ...

    def get(self, id: str) -> HandoffRecord:
        """``NotFound`` for an unknown id."""
        ...

    def open_tickets(self, queue: str) -> builtins.list[TicketView]:
        """The queue's open tickets (any order)."""
        ...

    async def set_note(self, queue: str, text: str, by: str) -> None:
        """``handoff.note`` at the store clock's instant."""
        ...

    def note(self, queue: str) -> str:
        """The note written since the queue's last handoff record; "" if none."""
        ...


@dataclass
class _Note:
    text: str
    by: str
    at: str


@dataclass
class MemoryHandoffLog:
    """``HandoffLog`` in a dict. ``tickets`` answers ``open_tickets`` (tests fill it)."""

    clock: Clock
    tickets: dict[str, builtins.list[TicketView]] = field(default_factory=dict)
    on_record: Callable[[HandoffRecord], None] | None = None
    _records: dict[str, HandoffRecord] = field(default_factory=dict)
    _notes: dict[str, _Note] = field(default_factory=dict)

    async def record(self, rec: HandoffRecord) -> HandoffRecord:
        existing = self._records.get(rec.id)
        if existing is not None:
            return existing
        stored = HandoffRecord.from_json(handoff_fields(rec))
        self._records[rec.id] = stored
        if self.on_record is not None:
            self.on_record(stored)
        return stored

    async def acknowledge(self, id: str, by: str) -> HandoffRecord:
        rec = self.get(id)
        if rec.acked:
            raise FailedPrecondition(f"handoff {id} was acknowledged by {rec.acked_by} already")
        fields = ack_fields(by, iso(self.clock.now()))
        return self._merge(rec, fields)

    async def escalate(self, id: str, to: str, *, epoch: int | None = None) -> HandoffRecord:
        rec = self.get(id)
        if rec.acked:
            raise FailedPrecondition(f"handoff {id} was acknowledged by {rec.acked_by}")
        if rec.escalated:
            raise FailedPrecondition(f"handoff {id} was escalated to {rec.escalated_to} already")
        fields = escalate_fields(to, iso(self.clock.now()), epoch=epoch)
        fields.pop("escalated_epoch", None)
        return self._merge(rec, fields)

    def list(self, queue: str | None = None) -> builtins.list[HandoffRecord]:
        found = [r for r in self._records.values() if queue is None or r.queue == queue]
        return sorted(found, key=lambda r: (r.at, r.epoch))

    def get(self, id: str) -> HandoffRecord:
        rec = self._records.get(id)
        if rec is None:
            raise NotFound(f"no handoff {id!r}")
        return rec

    def open_tickets(self, queue: str) -> builtins.list[TicketView]:
        return [t for t in self.tickets.get(queue, []) if t.is_open]

    async def set_note(self, queue: str, text: str, by: str) -> None:
        fields = note_fields(queue, text, by, iso(self.clock.now()))
        self._notes[queue] = _Note(fields["note"], fields["note_by"], fields["note_at"])

    def note(self, queue: str) -> str:
        note = self._notes.get(queue)
        if note is None:
            return ""
        last = max((r.at for r in self._records.values() if r.queue == queue), default="")
        return note.text if note.at > last else ""

    def _merge(self, rec: HandoffRecord, fields: Mapping[str, Any]) -> HandoffRecord:
        merged = replace(rec, **fields)
        self._records[rec.id] = merged
        return merged
