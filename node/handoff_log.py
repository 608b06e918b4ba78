"""The ``HandoffLog`` over the node's store: handoff records and notes are replicated
operations like ticket changes, so every region holds every handoff."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from federation.handoffs import (
    HANDOFF_ACK,
    HANDOFF_CREATE,
    HANDOFF_ESCALATE,
    HANDOFF_NOTE,
    HandoffRecord,
    ack_fields,
    escalate_fields,
    handoff_fields,
    note_fields,
    note_key,
)
from federation.merge import ReplicatedTicket
from node.errors import FailedPrecondition, NotFound
from node.sqlite_store import SqliteTicketStore
from node.store import TicketFilter
from node.tickets import OPEN_STATES, TicketView, iso

RECORD_PREFIX = "HO-"


def _record(r: ReplicatedTicket | None) -> HandoffRecord | None:
    return HandoffRecord.from_json(r.values) if r is not None and "id" in r.values else None


class SqliteHandoffLog:
    def __init__(self, store: SqliteTicketStore) -> None:
        self._store = store

    async def record(self, rec: HandoffRecord) -> HandoffRecord:
        def build(current: ReplicatedTicket | None, now: datetime) -> Any:
            if _record(current) is not None:
                return None  # idempotent: the first write of a record wins
            return HANDOFF_CREATE, handoff_fields(rec)

        stored = _record(await self._store.write_record(rec.id, build))
        assert stored is not None
        return stored

    async def acknowledge(self, id: str, by: str) -> HandoffRecord:
        def build(current: ReplicatedTicket | None, now: datetime) -> Any:
            rec = _record(current)
            if rec is None:
                raise NotFound(f"no handoff {id}; list them with `sundesk sun handoffs`")
            if rec.acked:
                raise FailedPrecondition(f"handoff {id} was acknowledged by {rec.acked_by}")
            return HANDOFF_ACK, ack_fields(by, iso(now))

        return self._must(await self._store.write_record(id, build))

    async def escalate(self, id: str, to: str, *, epoch: int | None = None) -> HandoffRecord:
        def build(current: ReplicatedTicket | None, now: datetime) -> Any:
            rec = _record(current)
            if rec is None:
                raise NotFound(f"no handoff {id}")
            if rec.acked:
                raise FailedPrecondition(f"handoff {id} was acknowledged by {rec.acked_by}")
            if rec.escalated:
                raise FailedPrecondition(f"handoff {id} was escalated to {rec.escalated_to}")
            return HANDOFF_ESCALATE, escalate_fields(to, iso(now), epoch=epoch)

        return self._must(await self._store.write_record(id, build))

    def list(self, queue: str | None = None) -> builtins.list[HandoffRecord]:
        found = [
            rec
            for rec in map(_record, self._store.records(RECORD_PREFIX, queue or ""))
            if rec is not None
        ]
        return sorted(found, key=lambda r: (r.at, r.epoch))

    def get(self, id: str) -> HandoffRecord:
        return self._must(self._store.get_record(id))

    def open_tickets(self, queue: str) -> builtins.list[TicketView]:
        flt = TicketFilter(states=tuple(OPEN_STATES), queue=queue)
        return list(self._store.list_tickets(flt, 500, "").tickets)

    async def set_note(self, queue: str, text: str, by: str) -> None:
        def build(current: ReplicatedTicket | None, now: datetime) -> Any:
            return HANDOFF_NOTE, note_fields(queue, text, by, iso(now))

        await self._store.write_record(note_key(queue), build)

    def note(self, queue: str) -> str:
        note = self._store.get_record(note_key(queue))
        if note is None:
            return ""
        last = max((r.at for r in self.list(queue)), default="")
        text: str = note.values.get("note", "")
        return text if note.values.get("note_at", "") > last else ""

    @staticmethod
    def _must(r: ReplicatedTicket | None) -> HandoffRecord:
        rec = _record(r)
        if rec is None:
            raise NotFound("no such handoff")
        return rec
