"""Replicated operations: the unit of change that travels between regions.

An operation is identified by ``(origin, seq)``; ``seq`` is contiguous per origin, so a
version vector (highest seq applied per origin) says exactly what a node holds. Fields
are a JSON object; its canonical encoding is what is stored, hashed and signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

TICKET_CREATE = "ticket.create"
TICKET_UPDATE = "ticket.update"
TICKET_COMMENT = "ticket.comment"
TICKET_KINDS = frozenset({TICKET_CREATE, TICKET_UPDATE, TICKET_COMMENT})


def canonical_json(value: Any) -> bytes:
    """The one encoding of a JSON value: sorted keys, no spaces, UTF-8.

    orjson writes exactly what ``json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` writes for our values, about ten times faster; it is on the hot
    path of every write (the operation and the ticket are both encoded).
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Operation:
    origin: str
    seq: int
    hlc: int
    ticket: str
    kind: str
    fields: Mapping[str, Any]
    trace_context: Mapping[str, str] = field(default_factory=dict)
    signature: bytes = b""

    @property
    def op_id(self) -> str:
        return op_id(self.origin, self.seq)

    @property
    def order_key(self) -> tuple[int, str, int]:
        """Total order used by last-writer-wins: HLC first, origin breaks ties."""
        return (self.hlc, self.origin, self.seq)

    def fields_json(self) -> bytes:
        return canonical_json(dict(self.fields))

    def signed_payload(self) -> bytes:
        """What the origin signs: everything but the signature and the trace context."""
        return canonical_json(
            {
                "origin": self.origin,
                "seq": self.seq,
                "hlc": self.hlc,
                "ticket": self.ticket,
                "kind": self.kind,
                "fields": dict(self.fields),
            }
        )


def op_id(origin: str, seq: int) -> str:
    return f"{origin}:{seq}"


VersionVector = dict[str, int]


def vv_lacks(mine: Mapping[str, int], theirs: Mapping[str, int]) -> dict[str, int]:
    """Per origin, how many operations ``theirs`` has that ``mine`` lacks."""
    return {
        origin: seq - mine.get(origin, 0)
        for origin, seq in theirs.items()
        if seq > mine.get(origin, 0)
    }
