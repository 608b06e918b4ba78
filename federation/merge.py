"""Deterministic merge of replicated operations into ticket state (pure).

Any two nodes that applied the same set of operations, in any order and with any
duplicates, hold byte-identical tickets:

- scalar fields are last-writer-wins registers ordered by ``(HLC, origin, seq)``;
- ``first_response_at`` is a min-register (the first answer stays the first);
- comments, state changes and call-home occurrences (repeats of a machine's alarm) are
  grow-only sets keyed by operation id, so the same alarm received by two regions at
  once is counted twice, and an operation applied twice is counted once;
- the version is the number of distinct operations applied to the ticket.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from federation.operations import Operation, canonical_json

# Keys of an operation's fields that are not scalar registers.
COMMENT_KEY = "comment"
TRANSITION_KEY = "transition"
CREATED_KEY = "created"
OCCURRENCE_KEY = "occurrence"
MIN_FIELDS = frozenset({"first_response_at"})
_SPECIAL = frozenset({COMMENT_KEY, TRANSITION_KEY, CREATED_KEY, OCCURRENCE_KEY})


@dataclass
class ReplicatedTicket:
    code: str
    created: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    stamps: dict[str, list[Any]] = field(default_factory=dict)
    comments: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    last_change: list[Any] = field(default_factory=lambda: [0, "", 0])
    occurrences: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return len(self.applied)

    @property
    def last_change_id(self) -> str:
        _, origin, seq = self.last_change
        return f"{origin}:{seq}" if origin else ""

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def sorted_comments(self) -> list[dict[str, Any]]:
        return [self.comments[k] for k in sorted(self.comments, key=self._entry_key("comments"))]

    def sorted_history(self) -> list[dict[str, Any]]:
        return [self.history[k] for k in sorted(self.history, key=self._entry_key("history"))]

    def _entry_key(self, which: str) -> Any:
        entries = self.comments if which == "comments" else self.history

        def key(op: str) -> tuple[int, str, int]:
            origin, _, seq = op.rpartition(":")
            return (int(entries[op].get("hlc", 0)), origin, int(seq))

        return key

    def to_json(self) -> dict[str, Any]:
        data = {
            "code": self.code,
            "created": self.created,
            "values": self.values,
            "stamps": self.stamps,
            "comments": self.comments,
            "history": self.history,
            "applied": self.applied,
            "last_change": self.last_change,
        }
        # Only tickets that machines opened carry the key: every other ticket keeps the
        # encoding (and digest) it had before occurrences existed.
        if self.occurrences:
            data["occurrences"] = self.occurrences
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplicatedTicket:
        return cls(
            code=data["code"],
            created=data["created"],
            values=data["values"],
            stamps=data["stamps"],
            comments=data["comments"],
            history=data["history"],
            applied=data["applied"],
            last_change=data["last_change"],
            occurrences=data.get("occurrences") or {},
        )

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    def digest(self) -> str:
        return hashlib.sha256(self.encode()).hexdigest()


def apply_in_place(ticket: ReplicatedTicket, op: Operation) -> bool:
    """Merge ``op`` into ``ticket``; returns False if it was already applied."""
    if op.ticket != ticket.code:
        raise ValueError(f"operation {op.op_id} is for {op.ticket}, not {ticket.code}")
    oid = op.op_id
    # ``applied`` stays sorted so the encoding does not depend on arrival order.
    if not _insort_new(ticket.applied, oid):
        return False
    key = [op.hlc, op.origin, op.seq]
    order = _stamp_key(key)
    if order > _stamp_key(ticket.last_change):
        ticket.last_change = key
    fields = op.fields
    if fields.get(CREATED_KEY):
        ticket.created = True
    # Every write runs this loop over all of its fields: locals rather than attributes.
    values, stamps = ticket.values, ticket.stamps
    for name, value in fields.items():
        if name in _SPECIAL:
            continue
        if name in MIN_FIELDS:
            current = values.get(name)
            if value and (not current or value < current):
                values[name] = value
            continue
        stamp = stamps.get(name)
        if stamp is None or order > _stamp_key(stamp):
            values[name] = value
            stamps[name] = key
    if COMMENT_KEY in fields:
        ticket.comments[oid] = {**fields[COMMENT_KEY], "id": oid, "hlc": op.hlc}
    if TRANSITION_KEY in fields:
        ticket.history[oid] = {**fields[TRANSITION_KEY], "id": oid, "hlc": op.hlc}
    if OCCURRENCE_KEY in fields:
        ticket.occurrences[oid] = {**fields[OCCURRENCE_KEY], "id": oid}
    return True


def merged(ticket: ReplicatedTicket | None, op: Operation) -> ReplicatedTicket:
    """Pure form of :func:`apply_in_place`: returns a new ticket."""
    base = (
        ReplicatedTicket.from_json(_copy_json(ticket.to_json()))
        if ticket is not None
        else ReplicatedTicket(code=op.ticket)
    )
    apply_in_place(base, op)
    return base


def merge_all(ops: Iterable[Operation]) -> dict[str, ReplicatedTicket]:
    tickets: dict[str, ReplicatedTicket] = {}
    for op in ops:
        ticket = tickets.get(op.ticket)
        if ticket is None:
            ticket = tickets[op.ticket] = ReplicatedTicket(code=op.ticket)
        apply_in_place(ticket, op)
    return tickets


def node_digest(ticket_digests: Iterable[tuple[str, str]]) -> str:
    """Summary of a node: hash over ``(code, digest)`` pairs in code order."""
    h = hashlib.sha256()
    for code, digest in sorted(ticket_digests):
        h.update(code.encode())
        h.update(b"=")
        h.update(digest.encode())
        h.update(b"\n")
    return h.hexdigest()


def _stamp_key(stamp: list[Any]) -> tuple[int, str, int]:
    return (int(stamp[0]), str(stamp[1]), int(stamp[2]))


def _op_sort_key(oid: str) -> tuple[str, int]:
    origin, _, seq = oid.rpartition(":")
    return (origin, int(seq))


def _insort_new(items: list[str], oid: str) -> bool:
    """Insert ``oid`` in order unless present; True if it was inserted."""
    key = _op_sort_key(oid)
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if _op_sort_key(items[mid]) < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(items) and items[lo] == oid:
        return False
    items.insert(lo, oid)
    return True


def _copy_json(data: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(canonical_json(data))
    return copied
